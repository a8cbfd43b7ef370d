"""Sweep rows attending masks over one shared prompt cache decode exactly like rows with gathered caches."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from infokv import generate, generate_sweep, methods
from infokv.engine import decoding
from infokv.engine import sweep as engine
from infokv.engine.capture import prefill
from infokv.engine.graphed_decode import GraphedDecoder
from infokv.engine.sweep import (
    build_settings,
    compress_settings,
    forward_tokens,
    kept_entries,
    left_pad,
    shares_prompt,
)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. ",
    "Pack my box with five dozen liquor jugs, then rest.",
]
SPECS = [("full", 1.0), ("snapkv", 0.5), ("pyramidkv", 0.5), ("h2o", 40), ("streamingllm", 0.6)]


def compressed_both_ways(model, tokenizer):
    ids, valid = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id, model.device)
    settings = build_settings(SPECS)
    needs = set().union(*(setting.method.requirements() for setting in settings))
    state, captured, logits = prefill(model, ids, valid, needs)
    with torch.inference_mode():
        gathered, _ = compress_settings(state, captured, settings)
        shared, _ = compress_settings(state, captured, settings, share=True)
    positions = captured.lengths.repeat(len(settings))
    return gathered, shared, positions, logits.repeat(len(settings), 1)


def test_shared_rows_decode_like_gathered_rows_and_keep_doing_so_after_rows_leave(model, tokenizer):
    gathered, shared, positions, logits = compressed_both_ways(model, tokenizer)
    assert shared.shared is not None and gathered.shared is None
    assert torch.equal(shared.valid_counts(), gathered.valid_counts())
    token = logits.argmax(-1)
    with torch.inference_mode():
        for step in range(6):
            if step == 3:  # rows leave the batch, as finished rows do on CPU
                rows = torch.tensor([0, 3, 4, 9])
                gathered, shared = gathered.select_rows(rows), shared.select_rows(rows)
                token, positions = token[rows], positions[rows]
            expected = forward_tokens(model, gathered, token[:, None], (positions + step)[:, None])
            got = forward_tokens(model, shared, token[:, None], (positions + step)[:, None])
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            assert torch.equal(shared.valid_counts(), gathered.valid_counts())
            token = expected.argmax(-1)


def test_fixed_shape_steps_over_a_shared_prompt_match_growing_steps(llama, tokenizer):
    gathered, shared, positions, logits = compressed_both_ways(llama, tokenizer)
    decoder = GraphedDecoder(llama, shared, positions, steps=5, capture=False)
    token = logits.argmax(-1)
    with torch.inference_mode():
        for step in range(5):
            expected = forward_tokens(llama, gathered, token[:, None], (positions + step)[:, None])
            torch.testing.assert_close(decoder(token), expected, rtol=1e-4, atol=1e-4)
            token = expected.argmax(-1)
    assert torch.equal(decoder.release().valid_counts(), gathered.valid_counts())


def test_a_sweep_shares_the_prompt_when_that_reads_less():
    lengths = torch.tensor([100, 80])

    def kept(specs):
        return kept_entries(build_settings(specs), lengths, 3)

    assert shares_prompt(kept(SPECS), lengths, 3)
    # window 16: kvpress's default of 64 would keep more than half of these short rows
    assert not shares_prompt(kept([(methods.get("snapkv", window=16), 0.5), ("h2o", 0.4)]), lengths, 3)
    assert not shares_prompt(kept([("full", 1.0)]), lengths, 3)


@pytest.mark.parametrize("replayed", [False, True])
def test_sweep_completions_and_stats_equal_separate_runs(llama, tokenizer, monkeypatch, replayed):
    shared = []
    original = engine.compress_settings

    def sharing(state, captured, settings, share=False):  # share whenever there are several settings
        shared.append(len(settings) > 1)
        return original(state, captured, settings, share=len(settings) > 1)

    monkeypatch.setattr(engine, "compress_settings", sharing)
    if replayed:
        monkeypatch.setattr(decoding, "replayable", lambda *args: True)
        monkeypatch.setattr(decoding, "GRAPH_STEPS", 4)
    sweep = generate_sweep(llama, tokenizer, PROMPTS, SPECS, max_new_tokens=10)
    for (name, budget), completions in zip(SPECS, sweep, strict=True):
        separate = generate(llama, tokenizer, PROMPTS, name, budget, max_new_tokens=10, fidelity=False)
        for got, expected in zip(completions, separate, strict=True):
            assert got.token_ids == expected.token_ids, (name, budget)
            for key in ("kept_tokens", "peak_cache_entries", "final_cache_entries"):
                assert got.stats[key] == expected.stats[key], (name, budget, key)
    assert shared == [True] + [False] * len(SPECS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_attention_on_cuda_matches_gathered_rows_in_captured_steps(tokenizer, dtype):
    """Memory-efficient attention over SPLITS key parts (CUDA) against gathered caches, in a CUDA graph."""
    model = tiny_model("llama").to("cuda", dtype)
    gathered, shared, positions, logits = compressed_both_ways(model, tokenizer)
    token = logits.argmax(-1)
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    with torch.inference_mode():
        decoder = GraphedDecoder(model, shared, positions, steps=4)
        assert decoder.graph is not None
        for step in range(4):
            expected = forward_tokens(model, gathered, token[:, None], (positions + step)[:, None])
            torch.testing.assert_close(decoder(token), expected, rtol=tolerance, atol=tolerance)
            token = expected.argmax(-1)
