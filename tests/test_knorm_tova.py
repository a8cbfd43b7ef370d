"""KNorm and TOVA: their score equations, their kept sets against independent oracles, and a sweep."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from infokv import compress, generate_sweep, methods
from infokv.signals.attention import window_attention


class HandView:
    """A layer view over hand-made keys and last-token queries (B, H_q, 1, d), no padding."""

    def __init__(self, keys: torch.Tensor, queries: torch.Tensor, scaling: float) -> None:
        self.keys, self.values = keys, torch.zeros_like(keys)
        self.valid = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool)
        self.queries, self.scaling = queries, scaling

    def window_attention(self, window: int, pooling: str, kernel: int, reduction: str) -> torch.Tensor:
        return window_attention(
            self.queries, self.keys, None, self.scaling, window, pooling, kernel, reduction
        )


def test_knorm_scores_minus_the_key_norm_per_kv_head():
    keys = torch.tensor([[[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], [[0.0, 0.5], [6.0, 8.0], [1.0, 1.0]]]])
    scores = methods.get("knorm").score(HandView(keys, keys[:, :, -1:], 1.0))
    assert torch.allclose(scores, torch.tensor([[[-5.0, -1.0, -2.0], [-0.5, -10.0, -(2**0.5)]]]))


def test_tova_scores_the_last_query_averaged_over_every_query_head():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 6, 4, generator=generator)
    queries = torch.randn(1, 4, 1, 4, generator=generator)  # 4 query heads, 2 per KV head
    scaling = 0.5
    # softmax over all six keys (the last query sees itself), per query head h, whose KV head is h // 2
    attention = torch.stack([(queries[0, h, 0] @ keys[0, h // 2].T * scaling).softmax(-1) for h in range(4)])
    view = HandView(keys, queries, scaling)

    scores = methods.get("tova").score(view)
    layer = attention.mean(0)[:5]
    for head in range(2):
        assert torch.allclose(scores[0, head, :5], layer / layer.sum())
    assert scores[0, :, 5].eq(0).all()  # the last token is forced by selection, not scored

    grouped = methods.get("tova", reduction="mean").score(view)
    for head in range(2):
        own = attention[2 * head : 2 * head + 2].mean(0)[:5]
        assert torch.allclose(grouped[0, head, :5], own / own.sum())
    assert not torch.allclose(grouped, scores)


def prompt_ids(length: int) -> torch.Tensor:
    """Distinct token ids: a repeated token has the same key norm in the first layer, a tie either side
    may break its own way."""
    return (torch.randperm(76, generator=torch.Generator().manual_seed(5))[:length] + 4)[None]


def test_knorm_keeps_the_smallest_cached_key_norms(model):
    ids = prompt_ids(70)
    _, kept = compress(model, ids, "knorm", 0.5)
    with torch.no_grad():
        cache = model(ids, cache=DynamicCache()).past_key_values
    for layer, layer_kept in enumerate(kept):
        norms = cache.layers[layer].keys[0].norm(dim=-1)
        expected = norms.topk(35, dim=-1, largest=False).indices.sort(-1).values
        assert torch.equal(layer_kept[0], expected)


def test_tova_keeps_what_eager_attention_of_the_last_token_ranks_first(model):
    ids = prompt_ids(70)
    _, kept = compress(model, ids, "tova", 0.5)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(ids, output_attentions=True).attentions
    for layer_kept, weights in zip(kept, attentions, strict=True):
        last = weights[0, :, -1, :-1].mean(0)  # every query head of the layer
        expected = torch.cat([last.topk(34).indices, torch.tensor([69])]).sort().values
        for head in layer_kept[0]:
            assert torch.equal(head, expected)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("tova", {"window": 4}, "window=4"),
        ("tova", {"reduction": "median"}, "reduction 'median'"),
    ],
)
def test_bad_parameters_fail_with_one_line(name, params, message):
    with pytest.raises(ValueError, match=message) as error:
        methods.get(name, **params)
    assert "\n" not in str(error.value)


def test_sweep_runs_both_and_a_whole_budget_decodes_as_the_full_cache(llama, tokenizer):
    prompts = ["The quick brown fox jumps over the lazy dog. ", "Pack my box with five dozen liquor jugs."]
    settings = [("full", 1.0), ("knorm", 1.0), ("tova", 1.0), ("knorm", 0.5), ("tova", 0.5)]
    sweep = generate_sweep(llama, tokenizer, prompts, settings, max_new_tokens=6, stop_at_eos=False)
    full = [completion.token_ids for completion in sweep[0]]
    assert [c.token_ids for c in sweep[1]] == full and [c.token_ids for c in sweep[2]] == full
    for completions in sweep[3:]:
        assert [len(completion.token_ids) for completion in completions] == [6, 6]
