"""R-KV: its score on hand-made keys, its redundancy signal, the authors' definition on the embedded model.

The decoding scenario (target kept, batched = one by one, ratio 1 = uncompressed) runs R-KV through the
tests of ``test_decoding.py``, which cover every decoding method.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import rkv_scores, rotated_queries_and_keys

from infokv import generate, load_model, methods, signals
from infokv.engine import decoding, sweep
from infokv.engine.capture import prefill
from infokv.engine.views import PrefillView
from infokv.methods.rkv import RKV
from infokv.signals import redundancy
from infokv.signals.redundancy import key_redundancy


class HandView:
    """A decoding view over hand-made keys (B, H_kv, T, d) and window queries (B, H_q, w, d)."""

    def __init__(self, keys: torch.Tensor, queries: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        self.keys, self.values = keys, torch.zeros_like(keys)
        self.valid = torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool) if valid is None else valid
        self.queries, self.scaling = queries, 1.0

    def window_queries(self, window: int) -> torch.Tensor:
        return self.queries[:, :, -window:]


def duplicates_case() -> HandView:
    """Eight keys, the last two the window: three copies of e0, then e1, e2, e3 (unique), then e4, e5.
    Both window queries are 3·e0 + 3.5·e1: e1 draws the most attention, each copy of e0 the next most."""
    basis = torch.eye(6)
    keys = torch.stack([basis[0], basis[0], basis[0], basis[1], basis[2], basis[3], basis[4], basis[5]])
    query = 3.0 * basis[0] + 3.5 * basis[1]
    return HandView(keys[None, None], query.expand(1, 1, 2, 6).clone())


def test_the_score_on_duplicated_keys_is_the_equation_worked_by_hand():
    method = RKV(window=2, kernel=1)
    scores = method.score(duplicates_case())[0, 0, :6]
    # Rows 0 and 1 spare their last copy (2), row 2 spares 1; every other row has no near-duplicate and
    # spares entry 0, whose similarity to it is 0 anyway. Column means over the 8 rows: 2/8, 1/8, then 0.
    redundancy = torch.tensor([2 / 8, 1 / 8, 0, 0, 0, 0, 0, 0]).softmax(-1)[:6]
    importance = torch.tensor([3.0, 3.0, 3.0, 3.5, 0.0, 0.0]).softmax(-1)
    assert torch.allclose(scores, 0.07 * importance - 0.93 * redundancy)


def test_redundancy_keeps_the_newest_copy_and_the_unique_attended_key():
    view = duplicates_case()
    redundancy = key_redundancy(view.keys, view.valid, 0.5)[0, 0]
    assert redundancy[0] > redundancy[1] > redundancy[2]
    assert torch.allclose(redundancy[2:], redundancy[2].expand(6))
    scores = RKV(window=2, kernel=1).score(view)[0, 0, :6]
    assert scores.topk(2).indices.sort().values.tolist() == [2, 3]  # e1 and the newest copy of e0
    # The older copies fall even below the unique keys that draw almost no attention.
    assert scores.topk(4).indices.sort().values.tolist() == [2, 3, 4, 5]
    attention_only = RKV(window=2, kernel=1, mix=1.0).score(view)[0, 0, :6]
    assert attention_only.topk(4).indices.sort().values.tolist() == [0, 1, 2, 3]


def test_max_pooling_spreads_importance_over_the_keys_before_the_window_only():
    view = duplicates_case()
    pooled = RKV(window=2, kernel=3).importance(view)[0, 0]
    unpooled = RKV(window=2, kernel=1).importance(view)[0, 0]
    neighbours = [unpooled[max(0, i - 1) : i + 2].max() for i in range(6)]
    assert torch.allclose(pooled[:6], torch.stack(neighbours))
    assert pooled[6:].eq(0).all()


def test_grouped_query_heads_reduce_their_logits_before_the_softmax():
    generator = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 2, 10, 4, generator=generator)
    queries = torch.randn(1, 4, 3, 4, generator=generator)  # 2 query heads per KV head
    for reduction in ("max", "mean"):
        importance = RKV(window=3, kernel=1, reduction=reduction).importance(HandView(keys, queries))
        for head in range(2):
            logits = torch.stack([queries[0, 2 * head + g] @ keys[0, head, :7].T for g in range(2)])
            reduced = logits.amax(0) if reduction == "max" else logits.mean(0)
            assert torch.allclose(importance[0, head, :7], reduced.softmax(-1).mean(0), atol=1e-6)


def test_padding_and_row_blocks_leave_the_redundancy_unchanged(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(1, 2, 9, 5, generator=generator)
    keys[:, :, 6] = 2.0 * keys[:, :, 2]  # a near-duplicate in each head, so some row spares a later entry
    alone = key_redundancy(keys, None, 0.5)
    padded = torch.cat([torch.randn(1, 2, 3, 5, generator=generator), keys], dim=2)
    valid = torch.arange(12)[None] >= 3
    assert torch.allclose(key_redundancy(padded, valid, 0.5)[..., 3:], alone, atol=1e-7)
    assert key_redundancy(padded, valid, 0.5)[..., :3].eq(0).all()
    monkeypatch.setattr(redundancy, "queries_per_block", lambda *args: 2)
    assert torch.allclose(key_redundancy(keys, None, 0.5), alone, atol=1e-7)


def test_prefill_view_window_queries_and_scores_match_the_reference(model):
    """The captured window queries (in chunks) are the rotated queries; R-KV's score over a prefilled prompt
    equals the reference (tiny models of two architectures, GQA)."""
    prompt = torch.randint(4, 80, (1, 90), generator=torch.Generator().manual_seed(2))
    valid = torch.ones_like(prompt, dtype=torch.bool)
    state, captured, _ = prefill(model, prompt, valid, {(signals.WINDOW_QUERIES, 8)}, chunk=37)
    method = methods.get("rkv")
    for layer, (queries, keys) in enumerate(rotated_queries_and_keys(model, prompt)):
        view = PrefillView(state, captured, layer, memo={})
        close = dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(view.window_queries(8)[0].double(), queries[:, -8:], **close)
        expected = rkv_scores(queries, keys, view.scaling)
        torch.testing.assert_close(method.score(view)[0, :, :82].double(), expected, **close)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"mix": 1.5}, "mix=1.5"),
        ({"threshold": 2.0}, "threshold=2.0"),
        ({"reduction": "median"}, "reduction 'median'"),
        ({"kernel": 4}, "kernel=4"),
        ({"window": 0}, "window=0"),
    ],
)
def test_bad_parameters_fail_with_one_line(params, message):
    with pytest.raises(ValueError, match=message) as error:
        methods.get("rkv", **params)
    assert "\n" not in str(error.value)


def test_rkv_compresses_only_while_decoding(llama, tokenizer):
    with pytest.raises(ValueError, match="cannot compress a prefill"):
        generate(llama, tokenizer, ["abc"], "rkv", 0.5, max_new_tokens=2)


@pytest.mark.slow
def test_scores_and_kept_entries_on_the_embedded_model_match_the_authors_definition(monkeypatch):
    """The first compression of a real decode: every layer's scores and kept entries against a float64
    reference written from the authors' code, over keys and queries recomputed by an eager float64 model."""
    model, tokenizer = load_model("smollm2-135m")
    text = "Count the apples: one apple, two apples, three apples. Then count them again, slowly. " * 3
    messages = [{"role": "user", "content": text}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    method = methods.get("rkv")
    recorded: list[tuple[torch.Tensor, ...]] = []

    def recording_score(self, view):
        scores = score(self, view)
        recorded.append((view.keys.clone(), scores.clone()))
        return scores

    def recording_select(scores, valid, keep, forced):
        selection = select(scores, valid, keep, forced)
        recorded[len(kept)] += (selection.indices.clone(),)
        kept.append(None)
        return selection

    score, select, kept = RKV.score, decoding.select, []
    monkeypatch.setattr(RKV, "score", recording_score)
    monkeypatch.setattr(decoding, "select", recording_select)
    monkeypatch.setattr(sweep, "stop_token_ids", lambda model, tokenizer: [])  # every generated token kept
    every, ratio = 48, 0.5
    completion = generate(
        model,
        tokenizer,
        [prompt],
        "full",
        1.0,
        decode_method=method,
        decode_ratio=ratio,
        compress_every=every,
        max_new_tokens=every + 1,
        stop_at_eos=False,
        fidelity=False,  # the forced decode of the fidelity pass would compress again
    )[0]
    generated, before, _ = completion.stats["compressions"][0]
    ids = torch.tensor([prompt_ids + completion.token_ids[: before - len(prompt_ids)]])
    layers = rotated_queries_and_keys(model, ids)
    assert len(recorded) == len(layers)
    scaling = layers[0][0].shape[-1] ** -0.5
    candidates = before - method.window  # entries before the window
    chosen = math.ceil(generated * ratio) - method.window  # generated entries kept by score
    for (queries, keys), (our_keys, ours, our_kept) in zip(layers, recorded, strict=True):
        assert our_keys.shape[2] == before
        expected = rkv_scores(queries, keys, scaling)
        torch.testing.assert_close(ours[0, :, :candidates].double(), expected, rtol=1e-4, atol=1e-6)
        for head in range(keys.shape[0]):
            generated_scores = expected[head, len(prompt_ids) :]
            top = (generated_scores.topk(chosen).indices + len(prompt_ids)).tolist()
            whole = set(range(len(prompt_ids))) | set(top) | set(range(candidates, before))
            assert our_kept[0, head].tolist() == sorted(whole)
