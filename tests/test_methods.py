"""Method registry, selection invariants and the InfoKV fusion."""

from __future__ import annotations

import pytest
import torch
from reference import Reference

from infokv import compress, methods
from infokv.engine.sweep import left_pad
from infokv.methods.budget import Budget, layer_schedule
from infokv.methods.infokv import combine

ALL = [
    "full",
    "streamingllm",
    "h2o",
    "snapkv",
    "pyramidkv",
    "expected_attention",
    "infokv",
    "knorm",
    "tova",
    "adakv",
]
PREFILL_ONLY = ("pyramidkv", "knorm", "tova", "adakv")
UNIFORM = [name for name in ALL[1:] if name != "adakv"]  # every KV head keeps as many (adakv: test_adakv.py)


def random_prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 80, (1, length), generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_method():
    assert methods.available("prefill") == ALL
    assert methods.available("decode") == [n for n in ALL if n not in PREFILL_ONLY] + ["rpc", "rkv"]
    assert set(methods.available()) == set(ALL) | {"rpc", "rkv"}
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


EXACT = [(name, {}) for name in UNIFORM] + [
    ("pyramidkv", {"window": 4}),
    ("pyramidkv", {"window": 4, "layer_budget": "pyramid_original"}),
]


@pytest.mark.parametrize("name, params", EXACT)
def test_exact_budget_per_head_with_sink_and_window_kept(model, name, params):
    prompt = random_prompt(120)
    method = methods.get(name, **params)
    budget = 80 if method.layer_budget != "pyramid_original" else 40
    _, kept = compress(model, prompt, method, budget)
    lengths = [layer_kept.shape[-1] for layer_kept in kept]
    for layer_kept in kept:
        assert (layer_kept >= 0).all()
        for head in layer_kept[0]:
            assert head.unique().numel() == head.numel()
            assert set(range(method.sink)) <= set(head.tolist())
            assert set(range(120 - method.window, 120)) <= set(head.tolist())
    if method.window >= 64 or method.layer_budget == "uniform":
        # kvpress's pyramid falls back to uniform budgets below beta * window = 1280 kept tokens
        assert lengths == [budget] * len(kept)
    else:
        assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    if method.layer_budget == "pyramid":
        assert sum(lengths) == pytest.approx(budget * len(kept), abs=len(kept))


def test_kept_count_is_kvpress_floor_of_one_minus_compression_ratio():
    """kvpress keeps int(T * (1 - r)) with r = 1 - b: 1 - 0.8 is just below 0.2 in floating point, so a
    1000-token prompt at 20% keeps 199 tokens, not 200; at 40% (1 - 0.6 just above 0.4) it keeps 400."""
    lengths = torch.tensor([1000, 1001, 999])
    assert Budget.parse(0.2).per_row(lengths, 0).tolist() == [199, 200, 199]
    assert Budget.parse(0.4).per_row(lengths, 0).tolist() == [400, 400, 399]
    assert Budget.parse(40).per_row(lengths, 64).tolist() == [64, 64, 64]


def kvpress_pyramid(length: int, ratio: float, window: int, layers: int, beta: float = 20.0) -> list[int]:
    """PyramidKVPress.get_layer_budget's arithmetic in Python floats, the oracle for the tensor version."""
    share = length * (1 - (1 - ratio))
    low = share / beta
    high = share * 2 - low
    if high >= length - window:
        high = length - window
        low = share * 2 - high
    if not length >= high >= low >= window:
        return [max(1, round(share))] * layers
    return [round(high - layer * (high - low) / (layers - 1)) for layer in range(layers)]


@pytest.mark.parametrize(
    "length, ratio, window",
    [
        (1195, 0.4, 16),
        (1898, 0.2, 16),
        (1500, 0.2, 16),
        (1500, 0.4, 64),
        (7000, 0.4, 64),
        (333, 0.9, 8),
        (229, 0.5, 64),
    ],
)
def test_pyramid_schedule_is_kvpress_with_its_fallback(length, ratio, window):
    budget = Budget.parse(ratio)
    lengths = torch.tensor([length])
    counts = layer_schedule("pyramid", budget.share(lengths), lengths, 30, window)
    assert [int(count) for count in counts] == kvpress_pyramid(length, ratio, window, 30)


def test_pyramid_original_adds_the_window_on_top():
    lengths = torch.tensor([2000])
    keep = Budget.parse(0.2).per_row(lengths, 0)
    counts = [int(c) for c in layer_schedule("pyramid_original", keep.double(), lengths, 5, 32)]
    above = int(keep) - 32
    low, high = above // 20, 2 * above - above // 20
    assert counts == [32 + high - layer * ((high - low) // 4) for layer in range(5)]


@pytest.mark.parametrize("name", ALL)
def test_budget_at_or_above_length_keeps_everything(llama, name):
    prompt = random_prompt(90)
    for budget in (90, 500, 1.0):
        _, kept = compress(llama, prompt, name, budget)
        for layer_kept in kept:
            assert layer_kept.shape[-1] == 90
            assert (layer_kept[0] == torch.arange(90)).all()


@pytest.mark.parametrize("name", UNIFORM)
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
    for budget in (90, 0.6):
        _, snap = compress(model, prompt, "snapkv", budget)
        _, info = compress(model, prompt, methods.get("infokv", alpha=1.0), budget)
        for a, b in zip(snap, info, strict=True):
            assert torch.equal(a, b)
        _, default = compress(model, prompt, "infokv", budget)
        assert any(not torch.equal(a, b) for a, b in zip(snap, default, strict=True))


@pytest.mark.parametrize("tau", [0.0, 1.0, 3.0])
def test_infokv_alpha_zero_keeps_top_information_tokens(llama, tau):
    prompt = random_prompt(140, seed=4)
    method = methods.get("infokv", alpha=0.0, tau=tau, entropy_topk=8, window=16)
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
