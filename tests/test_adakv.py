"""AdaKV: the head-wise budget rule, its kept sets, per-head masks in attention, and sweeps through it."""

from __future__ import annotations

import pytest
import torch

from infokv import compress, generate, generate_sweep, methods
from infokv.engine import decoding
from infokv.engine.sweep import left_pad
from infokv.hf.hooks import _masked_attention, _single_query_attention, attention_mask_for
from infokv.methods.adakv import head_budgets

INF = float("inf")


def ordered(*heads: list[float]) -> torch.Tensor:
    return torch.tensor([heads])


def test_a_layer_budget_goes_to_the_heads_with_the_highest_scores_above_each_heads_floor():
    high = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    low = [0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01]
    middle = [5.5, 4.5, 1.5, 1.2, 0.01, 0.009, 0.008, 0.007]
    scores = ordered(high, low, middle)
    keep = torch.tensor([4])  # uniform share: 4 per head, 12 in the layer
    # floor ⌊0.5 · 4⌋ = 2 per head; the other 6 go to the best scores left, all in the first head
    assert head_budgets(scores, keep, 0.5).tolist() == [[8, 2, 2]]
    # without a floor the low head keeps nothing and the middle one four
    assert head_budgets(scores, keep, 0.0).tolist() == [[8, 0, 4]]
    # a floor of the whole share is the uniform budget
    assert head_budgets(scores, keep, 1.0).tolist() == [[4, 4, 4]]
    # kvpress keeps at least one per head when alpha > 0: ⌊0.2 · 3⌋ = 0 becomes 1; then 8, 7, 6, 5, 4.5, 4
    assert head_budgets(scores, torch.tensor([3]), 0.2).tolist() == [[6, 1, 2]]
    # forced entries (+inf) are kept whatever the floor; a budget of the whole length keeps everything
    forced = ordered(high, [INF, INF, INF, *low[3:]], middle)
    assert head_budgets(forced, keep, 0.5).tolist() == [[7, 3, 2]]
    assert head_budgets(scores, torch.tensor([8]), 0.2).tolist() == [[8, 8, 8]]


def test_padding_is_never_chosen_and_rows_have_their_own_budgets():
    # row 0: two tokens and two padding slots (last in every head's order); row 1: four tokens
    padded = torch.tensor(
        [[[3.0, 2.0, -INF, -INF], [9.0, 8.0, -INF, -INF]], [[1.0, 0.5, 0.2, 0.1], [4, 3, 2, 1.5]]]
    )
    assert head_budgets(padded, torch.tensor([2, 3]), 0.0).tolist() == [[2, 2], [2, 4]]


def random_prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 80, (1, length), generator=torch.Generator().manual_seed(seed))


def test_heads_share_the_layer_budget_and_keep_their_window(model):
    prompt = random_prompt(120)
    adakv = methods.get("adakv", window=8)
    state, kept = compress(model, prompt, adakv, 0.5)
    heads = kept[0].shape[1]
    uneven = False
    for layer, layer_kept in enumerate(kept):
        counts = (layer_kept[0] >= 0).sum(-1)
        assert int(counts.sum()) == heads * 60
        assert (counts >= 12).all()  # ⌊0.2 · 60⌋
        uneven |= bool((counts != 60).any())
        assert layer_kept.shape[-1] == int(counts.max())  # the cache is as wide as its widest head
        for head, count in zip(layer_kept[0], counts.tolist(), strict=True):
            real = head[head >= 0]
            assert real.numel() == count and real.unique().numel() == count
            assert set(range(112, 120)) <= set(real.tolist())
        valid = state.valid[layer]
        assert valid is None or torch.equal(valid[0].sum(-1), counts)
    assert uneven, "every head kept its uniform share"


def test_a_floor_of_the_whole_share_keeps_exactly_snapkv(model):
    prompt = random_prompt(160, seed=3)
    for budget in (90, 0.6):
        _, snap = compress(model, prompt, methods.get("snapkv", window=8), budget)
        _, ada = compress(model, prompt, methods.get("adakv", window=8, alpha_safeguard=1.0), budget)
        for a, b in zip(snap, ada, strict=True):
            assert torch.equal(a, b)


def test_padding_is_evicted_first_and_rows_match_one_by_one(model):
    prompts = [random_prompt(100, seed=1)[0].tolist(), random_prompt(60, seed=2)[0].tolist()]
    input_ids, valid = left_pad(prompts, 0, torch.device("cpu"))
    adakv = methods.get("adakv", window=8)
    _, batched = compress(model, input_ids, adakv, 0.5, attention_mask=valid)
    for row, prompt in enumerate(prompts):
        offset = input_ids.shape[1] - len(prompt)
        _, alone = compress(model, torch.tensor([prompt]), adakv, 0.5)
        for layer_batched, layer_alone in zip(batched, alone, strict=True):
            for head_batched, head_alone in zip(layer_batched[row], layer_alone[0], strict=True):
                assert torch.equal(head_batched[head_batched >= 0] - offset, head_alone[head_alone >= 0])


def test_attention_under_per_head_masks_equals_each_heads_own_softmax():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 3, 8, generator=generator)  # 2 query heads per KV head
    key, value = torch.randn(2, 2, 10, 8, generator=generator), torch.randn(2, 2, 10, 8, generator=generator)
    valid = torch.rand(2, 2, 10, generator=generator) > 0.4
    valid[..., -3:] = True  # the queries' own entries
    output = _masked_attention(query, key, value, attention_mask_for(valid, 3, 10, valid.device), 0.5)
    single = _single_query_attention(query[:, :, -1:], key, value, valid, 0.5)
    for row in range(2):
        for head in range(4):
            kv = head // 2
            for q in range(3):
                seen = valid[row, kv].clone()
                seen[8 + q :] = False  # causal: query q sits at entry 7 + q
                weights = (query[row, head, q] @ key[row, kv].T * 0.5).masked_fill(~seen, -INF).softmax(-1)
                assert torch.allclose(output[row, head, q], weights @ value[row, kv], atol=1e-6)
            assert torch.allclose(single[row, head, 0], output[row, head, 2], atol=1e-6)


PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs. " * 2,
]


def test_sweep_full_budget_is_the_full_cache_and_masks_over_one_cache_decode_as_gathered_copies(
    llama, tokenizer
):
    adakv = methods.get("adakv", window=8)
    settings = [("full", 1.0), (adakv, 1.0), (adakv, 0.5)]
    sweep = generate_sweep(llama, tokenizer, PROMPTS, settings, max_new_tokens=8, stop_at_eos=False)
    full, whole, half = sweep
    assert [c.token_ids for c in whole] == [c.token_ids for c in full]
    assert all(c.fidelity["kl_max"] == 0.0 for c in whole)
    assert all(c.fidelity["reference_tokens"] == 8 and c.fidelity["kl_mean"] > 0 for c in half)
    lengths = [c.stats["context_tokens"] for c in half]
    assert [c.stats["kept_tokens"] for c in half] == [[n // 2] * 3 for n in lengths]
    # the sweep keeps more than the full cache in all, so its rows attend masks over it; alone, one setting
    # decodes from a gathered copy with per-head filler
    alone = generate(
        llama, tokenizer, PROMPTS, adakv, 0.5, max_new_tokens=8, stop_at_eos=False, fidelity=False
    )
    assert [c.token_ids for c in alone] == [c.token_ids for c in half]


def test_per_head_masks_of_equal_heads_decode_as_snapkv_with_padding_and_questions(llama, tokenizer):
    prompts = [(context, "Who?") for context in PROMPTS]
    snap = methods.get("snapkv", window=8)
    ada = methods.get("adakv", window=8, alpha_safeguard=1.0)
    options = {"max_new_tokens": 6, "stop_at_eos": False, "compress": "context_only"}
    a, b = generate_sweep(llama, tokenizer, prompts, [(snap, 0.5), (ada, 0.5)], **options)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b, strict=True):
        assert x.fidelity["kl_mean"] == pytest.approx(y.fidelity["kl_mean"], abs=1e-6)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"alpha_safeguard": 1.5}, "alpha_safeguard=1.5"),
        ({"press": "full"}, "press 'full'"),
        ({"press": "rpc"}, "press 'rpc'"),
        ({"press": "adakv"}, "press 'adakv'"),
    ],
)
def test_bad_parameters_fail_with_one_line(params, message):
    with pytest.raises(ValueError, match=message) as error:
        methods.get("adakv", **params)
    assert "\n" not in str(error.value)


def test_head_wise_budgets_are_not_mixed_with_compression_while_decoding(llama, tokenizer):
    settings = [("adakv", 0.5), ("snapkv", 0.5, "rpc", 0.25)]
    with pytest.raises(ValueError, match="keep different entries per KV head") as error:
        generate_sweep(llama, tokenizer, PROMPTS, settings, max_new_tokens=2)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("press, window", [("knorm", 0), ("tova", 1), ("expected_attention", 0)])
def test_another_press_scores_the_heads(model, press, window):
    prompt = random_prompt(120)
    _, kept = compress(model, prompt, methods.get("adakv", press=press, window=window), 0.5)
    for layer_kept in kept:
        assert int((layer_kept[0] >= 0).sum()) == 60 * layer_kept.shape[1]


def test_fixed_shape_steps_attend_per_head_masks_as_growing_steps(llama, tokenizer, monkeypatch):
    """The CUDA-graph path (fixed-shape appends), run eagerly: per-head masks grow by one slot per step."""
    adakv = methods.get("adakv", window=8)
    options = {"max_new_tokens": 20, "stop_at_eos": False, "fidelity": False}
    expected = generate(llama, tokenizer, PROMPTS, adakv, 0.5, **options)
    monkeypatch.setattr(decoding, "replayable", lambda *args: True)
    monkeypatch.setattr(decoding, "GRAPH_STEPS", 8)  # several fixed-shape spans per generation
    got = generate(llama, tokenizer, PROMPTS, adakv, 0.5, **options)
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    for key in ("peak_cache_entries", "final_cache_entries", "kept_tokens"):
        assert [c.stats[key] for c in got] == [c.stats[key] for c in expected], key


def test_a_pyramid_of_layer_budgets_is_shared_out_within_each_layer(llama):
    prompt = random_prompt(400)
    _, pyramid = compress(llama, prompt, methods.get("pyramidkv", window=4), 0.3)
    _, ada = compress(llama, prompt, methods.get("adakv", window=4, layer_budget="pyramid"), 0.3)
    per_layer = [layer_kept.shape[-1] for layer_kept in pyramid]
    assert per_layer[0] > per_layer[-1]
    for count, layer_kept in zip(per_layer, ada, strict=True):
        assert int((layer_kept[0] >= 0).sum()) == count * layer_kept.shape[1]
