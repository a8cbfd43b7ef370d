"""Fixed-shape decoding steps (the CUDA-graph path), run eagerly here: same logits, same cache, same text."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_model

from infokv import generate, generate_sweep, methods
from infokv.engine import decoding
from infokv.engine.capture import prefill
from infokv.engine.graphed_decode import GraphedDecoder
from infokv.engine.sweep import forward_tokens, left_pad
from infokv.kernels.prefix import MAX_PREFIX_GROUPS, ValidPrefix, valid_prefix

PROMPTS = ["The quick brown fox jumps over the lazy dog. ", "Pack my box."]


def prefilled(model, tokenizer, prompts):
    ids, valid = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id, model.device)
    state, captured, logits = prefill(model, ids, valid, set())
    return state, captured.lengths, logits


@pytest.mark.parametrize("layout", ["padded", "dense", "hole"])
def test_fixed_shape_steps_match_growing_steps(model, tokenizer, layout):
    """Dense and left-padded rows attend their valid run unmasked, in groups of equal start; a cache with
    a hole in a row is attended over its whole width under a mask."""
    prompts = PROMPTS[:1] * 2 if layout == "dense" else PROMPTS
    growing, positions, logits = prefilled(model, tokenizer, prompts)
    if layout == "hole":
        growing.valid = [growing.valid_mask(layer).clone() for layer in range(growing.num_layers)]
        for valid in growing.valid:
            valid[0, 3] = False
    fixed_state = growing.select_rows(torch.arange(len(prompts)))
    decoder = GraphedDecoder(model, fixed_state, positions, steps=7, capture=False)
    groups = {"padded": 2, "dense": 1, "hole": None}[layout]
    prefix = fixed_state.valid_prefix(0)
    assert (prefix and len(prefix.groups)) == groups
    token = logits.argmax(-1)
    with torch.inference_mode():
        for step in range(7):
            expected = forward_tokens(model, growing, token[:, None], (positions + step)[:, None])
            got = decoder(token)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            token = expected.argmax(-1)
        with pytest.raises(RuntimeError, match="set up for 7 steps"):
            decoder(token)
    released = decoder.release()
    for layer in range(growing.num_layers):
        torch.testing.assert_close(released.layer(layer)[0], growing.layer(layer)[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(released.valid_mask(layer), growing.valid_mask(layer))


def test_replayed_decoding_gives_the_same_completions_and_stats(llama, tokenizer, monkeypatch):
    options = dict(max_new_tokens=40, stop_at_eos=False)
    settings = [("full", 1.0), ("snapkv", 0.5), ("pyramidkv", 0.5)]
    expected = generate_sweep(llama, tokenizer, PROMPTS, settings, **options)
    sampled = generate(llama, tokenizer, PROMPTS[:1], "h2o", 0.5, temperature=1.0, seed=3, **options)
    monkeypatch.setattr(decoding, "replayable", lambda *args: True)
    monkeypatch.setattr(decoding, "GRAPH_STEPS", 16)  # several captures per generation
    got = generate_sweep(llama, tokenizer, PROMPTS, settings, **options)
    for before, after in zip(expected, got, strict=True):
        assert [c.token_ids for c in after] == [c.token_ids for c in before]
        for key in ("peak_cache_entries", "final_cache_entries", "kept_tokens"):
            assert [c.stats[key] for c in after] == [c.stats[key] for c in before], key
    again = generate(llama, tokenizer, PROMPTS[:1], "h2o", 0.5, temperature=1.0, seed=3, **options)
    assert [c.token_ids for c in again] == [c.token_ids for c in sampled]


@pytest.mark.parametrize("name", methods.available("decode")[1:])
def test_replayed_tracked_decoding_matches_the_eager_loop(llama, tokenizer, monkeypatch, name):
    """Compression while decoding, with fixed-shape steps recording each entry's signals: the same tokens,
    compressions and cache counts as the eager loop, in a sweep whose groups compress (or not) at their
    own steps, one over layers of different lengths (PyramidKV), with one row stopping early (it idles
    here; in the eager loop rows leave the batch)."""
    settings = [("full", 1.0, name, 0.25), ("pyramidkv", 0.5, name, 0.5), ("full", 1.0)]
    options = dict(compress_every=24, max_new_tokens=90, temperature=1.0, seed=5)
    free = generate_sweep(llama, tokenizer, PROMPTS, settings, stop_at_eos=False, **options)
    stopping = copy.deepcopy(llama)
    stopping.generation_config.eos_token_id = [free[0][0].token_ids[40]]
    expected = generate_sweep(stopping, tokenizer, PROMPTS, settings, **options)
    monkeypatch.setattr(decoding, "replayable", lambda *args: True)
    monkeypatch.setattr(decoding, "GRAPH_STEPS", 16)  # captures end at compressions and every 16 steps
    got = generate_sweep(stopping, tokenizer, PROMPTS, settings, **options)
    assert len(expected[0][0].token_ids) <= 41 < 90
    keys = ("compressions", "compression_events", "peak_cache_entries", "final_cache_entries", "kept_tokens")
    for before, after in zip(expected, got, strict=True):
        assert [c.token_ids for c in after] == [c.token_ids for c in before]
        for key in keys:
            assert [c.stats[key] for c in after] == [c.stats[key] for c in before], key


def test_cuda_graphs_false_keeps_the_eager_loop(llama, tokenizer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fixed-shape decoder was built with cuda_graphs=False")

    monkeypatch.setattr(decoding, "replayable", lambda *args: True)
    monkeypatch.setattr(decoding, "GraphedDecoder", refuse)
    completions = generate(llama, tokenizer, PROMPTS, "snapkv", 0.5, max_new_tokens=8, cuda_graphs=False)
    assert all(len(c.stats["kept_tokens"]) == llama.config.num_hidden_layers for c in completions)


def test_valid_prefix_groups_rows_by_the_start_of_their_valid_run():
    def run(starts, length=6):
        return torch.arange(length)[None, :] >= torch.tensor(starts)[:, None]

    assert valid_prefix(None, 3, 6) == ValidPrefix(6, ((slice(0, 3), 0),))
    prefix = valid_prefix(run([0, 2, 2, 5]), 4, 6)
    assert prefix == ValidPrefix(6, ((slice(0, 1), 0), (slice(1, 3), 2), (slice(3, 4), 5)))
    holed = run([0, 2])
    holed[0, 3] = False
    assert valid_prefix(holed, 2, 6) is None
    assert valid_prefix(run([0, 6]), 2, 6) is None  # a row with no valid entry
    many = run(list(range(MAX_PREFIX_GROUPS + 1)), MAX_PREFIX_GROUPS + 2)
    assert valid_prefix(many, MAX_PREFIX_GROUPS + 1, MAX_PREFIX_GROUPS + 2) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["h2o", "expected_attention", "infokv", "rpc"])
def test_captured_tracked_steps_on_cuda_match_the_eager_loop(tokenizer, monkeypatch, name):
    """On CUDA, compression while decoding replays captured tracked steps: same tokens and compressions."""
    model = tiny_model("llama").to("cuda")
    options = dict(decode_method=name, decode_ratio=0.25, compress_every=24, max_new_tokens=90)
    options |= dict(stop_at_eos=False, temperature=1.0, seed=5)
    eager = generate(model, tokenizer, PROMPTS, "snapkv", 0.5, cuda_graphs=False, **options)
    built = []

    class Recorded(GraphedDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self.graph is not None and self.tracker is not None)

    monkeypatch.setattr(decoding, "GraphedDecoder", Recorded)
    replayed = generate(model, tokenizer, PROMPTS, "snapkv", 0.5, **options)
    assert built and all(built)
    assert [c.token_ids for c in replayed] == [c.token_ids for c in eager]
    for key in ("compressions", "peak_cache_entries", "final_cache_entries"):
        assert [c.stats[key] for c in replayed] == [c.stats[key] for c in eager], key


def test_graphs_are_shorter_for_many_rows():
    # Each step attends every recent slot of its graph under a mask: rows x steps is what it reads.
    assert decoding.graph_steps(1) == decoding.graph_steps(16) == decoding.GRAPH_STEPS
    assert decoding.graph_steps(32) == 128
    assert decoding.graph_steps(64) == decoding.graph_steps(512) == decoding.MIN_GRAPH_STEPS
