"""Method registry, selection invariants and the InfoKV fusion."""

from __future__ import annotations

import pytest
import torch
from reference import Reference

from infokv import compress, methods
from infokv.engine import left_pad
from infokv.methods.infokv import combine

ALL = ["full", "streamingllm", "h2o", "snapkv", "pyramidkv", "expected_attention", "infokv"]


def random_prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 80, (1, length), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_method():
    assert methods.available("prefill") == ALL
    assert methods.available("decode") == [n for n in ALL if n != "pyramidkv"] + ["rpc"]
    assert set(methods.available()) == set(ALL) | {"rpc"}
    assert methods.get("infokv", alpha=0.5).alpha == 0.5


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("nope", {}, "unknown method 'nope'"),
        ("snapkv", {"alpha": 0.5}, "has no parameter alpha"),
        ("infokv", {"alpha": 1.5}, "alpha=1.5"),
        ("snapkv", {"pooling": "median"}, "pooling 'median'"),
        ("snapkv", {"kernel": 4}, "kernel=4"),
        ("infokv", {"entropy_position": "later"}, "entropy_position 'later'"),
    ],
)
def test_bad_method_parameters_fail_with_one_line(name, params, message):
    with pytest.raises(ValueError, match=message) as error:
        methods.get(name, **params)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ALL[1:])
def test_exact_budget_per_head_with_sink_and_window_kept(model, name):
    prompt = random_prompt(120)
    method = methods.get(name)
    _, kept = compress(model, prompt, method, 50)
    uniform = method.layer_budget == "uniform"
    for layer_kept in kept:
        if uniform:
            assert layer_kept.shape[-1] == 50
        assert (layer_kept >= 0).all()
        for head in layer_kept[0]:
            assert head.unique().numel() == head.numel()
            assert set(range(method.sink)) <= set(head.tolist())
            assert set(range(120 - method.window, 120)) <= set(head.tolist())
    if not uniform:
        lengths = [layer_kept.shape[-1] for layer_kept in kept]
        assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
        assert sum(lengths) == pytest.approx(50 * len(kept), abs=len(kept))


@pytest.mark.parametrize("name", ALL)
def test_budget_at_or_above_length_keeps_everything(llama, name):
    prompt = random_prompt(90)
    for budget in (90, 500, 1.0):
        _, kept = compress(llama, prompt, name, budget)
        for layer_kept in kept:
            assert layer_kept.shape[-1] == 90
            assert (layer_kept[0] == torch.arange(90)).all()


@pytest.mark.parametrize("name", ALL[1:])
def test_padding_is_evicted_first_and_rows_match_one_by_one(model, name):
    prompts = [random_prompt(100, seed=1)[0].tolist(), random_prompt(60, seed=2)[0].tolist()]
    input_ids, valid = left_pad(prompts, 0, torch.device("cpu"))
    _, batched = compress(model, input_ids, name, 0.5, attention_mask=valid)
    for row, prompt in enumerate(prompts):
        offset = input_ids.shape[1] - len(prompt)
        _, alone = compress(model, torch.tensor([prompt]), name, 0.5)
        for layer_batched, layer_alone in zip(batched, alone, strict=True):
            entries = layer_batched[row]
            real = entries[entries >= 0].reshape(entries.shape[0], -1)
            assert (real >= offset).all(), "a padding position was kept"
            assert torch.equal(real - offset, layer_alone[0])


def test_infokv_alpha_one_keeps_exactly_snapkv(model):
    prompt = random_prompt(160, seed=3)
    for budget in (40, 0.3):
        _, snap = compress(model, prompt, "snapkv", budget)
        _, info = compress(model, prompt, methods.get("infokv", alpha=1.0), budget)
        for a, b in zip(snap, info, strict=True):
            assert torch.equal(a, b)
        _, default = compress(model, prompt, "infokv", budget)
        assert any(not torch.equal(a, b) for a, b in zip(snap, default, strict=True))


@pytest.mark.parametrize("tau", [0.0, 1.0, 3.0])
def test_infokv_alpha_zero_keeps_top_information_tokens(llama, tau):
    prompt = random_prompt(140, seed=4)
    method = methods.get("infokv", alpha=0.0, tau=tau, entropy_topk=8)
    budget = 60
    _, kept = compress(llama, prompt, method, budget)
    reference = Reference(llama, prompt)
    entropy = reference.entropy(8)
    forced = set(range(method.sink)) | set(range(140 - method.window, 140))
    for layer, layer_kept in enumerate(kept):
        information = (reference.evolution(layer) + tau) * entropy
        if tau == 0 and layer == len(kept) - 1:
            continue  # D = 0 at the last layer: every score ties at 0
        order = [i for i in information.argsort(descending=True, stable=True).tolist() if i not in forced]
        expected = sorted(forced | set(order[: budget - len(forced)]))
        for head in layer_kept[0]:
            assert head.tolist() == expected


def test_combine_matches_formula():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 3, 10, generator=generator, dtype=torch.float64)
    attention = attention / attention.sum(-1, keepdim=True)
    entropy = torch.rand(2, 10, generator=generator, dtype=torch.float64) * 5
    evolution = torch.rand(2, 10, generator=generator, dtype=torch.float64)
    for alpha, tau in [(0.9, 1.0), (0.5, 0.0), (0.0, 2.0), (1.0, 1.0)]:
        scores = combine(attention, entropy, evolution, alpha, tau)
        information = torch.exp((evolution + tau) * entropy)
        information = information / information.sum(-1, keepdim=True)
        expected = alpha * attention + (1 - alpha) * information[:, None, :]
        torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :3] = False
    masked = combine(attention, entropy, evolution, 0.0, 1.0, valid)
    assert (masked[0, :, :3] == 0).all()
    torch.testing.assert_close(masked.sum(-1), torch.ones(2, 3), rtol=1e-5, atol=1e-6)
