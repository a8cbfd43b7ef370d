"""Fixed-shape decoding steps (the CUDA-graph path), run eagerly here: same logits, same cache, same text."""

from __future__ import annotations

import pytest
import torch

from infokv import decoding, generate, generate_sweep
from infokv.cache import MAX_PREFIX_GROUPS, ValidPrefix, valid_prefix
from infokv.capture import prefill
from infokv.engine import forward_tokens, left_pad
from infokv.graphed_decode import GraphedDecoder

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
