"""Compression while decoding: bounded cache, equality with the uncompressed run, batching, sampling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from reference import Reference

from infokv import generate, generate_sweep, methods
from infokv.engine import decoding
from infokv.engine.sweep import REASONING_PROTOCOL
from infokv.signals.entropy import topk_entropy

DECODERS = methods.available("decode")
PROMPTS = ["The quick brown fox jumps over the lazy dog. ", "Pack my box with five dozen liquor jugs."]
LONG = dict(max_new_tokens=100, stop_at_eos=False)


def target(name: str, generated: int, ratio: float) -> int:
    method = methods.get(name)
    if name == "rpc":
        return math.ceil(generated * ratio) + method.window
    return max(math.ceil(generated * ratio), method.window)


def decode_full_prompt(model, tokenizer, name: str, ratio: float, every: int):
    """Both prompts, prompt kept whole, 100 tokens compressed by ``name`` to ``ratio`` every ``every``."""
    return generate(
        model,
        tokenizer,
        PROMPTS,
        "full",
        1.0,
        decode_method=name,
        decode_ratio=ratio,
        compress_every=every,
        **LONG,
    )


@pytest.mark.parametrize("name", DECODERS[1:])
def test_cache_stays_within_target_plus_interval(model, tokenizer, name):
    completions = decode_full_prompt(model, tokenizer, name, ratio=0.25, every=24)
    for completion in completions:
        stats = completion.stats
        prompt = stats["prompt_tokens"]
        assert stats["generated_tokens"] == 100
        assert stats["compression_events"] == 100 // 24
        previous = None
        for generated, before, after in stats["compressions"]:
            assert before == (prompt + generated if previous is None else previous + 24)
            assert after == prompt + min(generated, target(name, generated, 0.25))
            previous = after
        last = max(generated for generated, _, _ in stats["compressions"])
        bound = prompt + target(name, last, 0.25) + 24
        assert stats["peak_cache_entries"] <= bound
        assert stats["final_cache_entries"] <= bound


@pytest.mark.parametrize("name", DECODERS)
def test_no_effective_compression_reproduces_uncompressed_generation(model, tokenizer, name):
    uncompressed = generate(model, tokenizer, PROMPTS, "full", 1.0, **LONG)
    expected = [c.token_ids for c in uncompressed]
    ratio_one = decode_full_prompt(model, tokenizer, name, ratio=1.0, every=16)
    rare = decode_full_prompt(model, tokenizer, name, ratio=0.25, every=101)
    assert [c.token_ids for c in ratio_one] == expected
    assert [c.token_ids for c in rare] == expected
    assert all(c.stats["compression_events"] == 0 for c in rare)
    # Untracked steps count their entries at the end; tracked ones (rare) count the cache every step.
    for key in ("peak_cache_entries", "final_cache_entries"):
        assert [c.stats[key] for c in uncompressed] == [c.stats[key] for c in rare], key


@pytest.mark.parametrize("name", DECODERS)
def test_decoding_compression_batched_equals_one_by_one(model, tokenizer, name):
    options = dict(
        decode_method=name, decode_ratio=0.25, compress_every=30, max_new_tokens=80, stop_at_eos=False
    )
    batched = generate(model, tokenizer, PROMPTS, "snapkv", 0.6, **options)
    for prompt, completion in zip(PROMPTS, batched, strict=True):
        alone = generate(model, tokenizer, [prompt], "snapkv", 0.6, **options)[0]
        assert alone.token_ids == completion.token_ids
        assert alone.stats["compressions"] == completion.stats["compressions"]


def test_decode_sweep_equals_separate_runs(llama, tokenizer):
    settings = [("full", 1.0, name, 0.25) for name in DECODERS] + [("snapkv", 0.5, "infokv", 0.125)]
    options = dict(compress_every=40, max_new_tokens=100, stop_at_eos=False)
    sweep = generate_sweep(llama, tokenizer, PROMPTS, settings, **options)
    for (method, budget, decoder, ratio), completions in zip(settings, sweep, strict=True):
        separate = generate(
            llama, tokenizer, PROMPTS, method, budget, decode_method=decoder, decode_ratio=ratio, **options
        )
        assert [c.token_ids for c in completions] == [c.token_ids for c in separate]


def test_finished_rows_leave_the_batch_without_changing_others(llama, tokenizer):
    free = generate(llama, tokenizer, PROMPTS, "full", 1.0, decode_method="infokv", compress_every=20, **LONG)
    stopping = copy.deepcopy(llama)
    stop = free[0].token_ids[30]
    stopping.generation_config.eos_token_id = [stop]
    options = dict(decode_method="infokv", compress_every=20, max_new_tokens=200)
    both = generate(stopping, tokenizer, PROMPTS, "full", 1.0, **options)
    assert both[0].token_ids == free[0].token_ids[: free[0].token_ids.index(stop)]
    for prompt, completion in zip(PROMPTS, both, strict=True):
        alone = generate(stopping, tokenizer, [prompt], "full", 1.0, **options)[0]
        assert alone.token_ids == completion.token_ids
    assert (
        both[0].stats["generated_tokens"] <= 31 < both[1].stats["generated_tokens"]
        or stop in free[1].token_ids
    )


def test_a_finished_row_idles_without_changing_others_or_its_own_record(llama, tokenizer):
    """One row of three stops early: it stays in the batch (fewer than half are done) but its tokens,
    cache entries and compression events end where it stopped."""
    prompts = [*PROMPTS, "Sphinx of black quartz, judge my vow."]
    options = dict(decode_method="infokv", compress_every=20, temperature=1.0, seed=[1, 2, 3])
    free = [c.token_ids for c in generate(llama, tokenizer, prompts, "full", 1.0, **options, **LONG)]

    def first(ids: list[int], token: int) -> int:
        return ids.index(token) if token in ids else len(ids)

    early = [t for t in set(free[0]) if 10 <= first(free[0], t) < min(first(ids, t) for ids in free[1:]) - 10]
    stop = min(early, key=lambda token: first(free[0], token))
    stopping = copy.deepcopy(llama)
    stopping.generation_config.eos_token_id = [stop]
    together = generate(stopping, tokenizer, prompts, "full", 1.0, **options, max_new_tokens=100)
    assert [c.token_ids for c in together] == [ids[: first(ids, stop)] for ids in free]
    options |= {"seed": 1, "max_new_tokens": 100}
    alone = generate(stopping, tokenizer, prompts[:1], "full", 1.0, **options)
    for key in ("compression_events", "peak_cache_entries", "final_cache_entries", "compressions"):
        assert together[0].stats[key] == alone[0].stats[key], key


def test_reasoning_protocol_sampling_is_reproducible_with_distinct_seeds(llama, tokenizer):
    options = {**REASONING_PROTOCOL, "max_new_tokens": 60}
    settings = [("full", 1.0, "infokv", 0.25)]
    first, again = (
        generate_sweep(
            llama, tokenizer, PROMPTS[:1], settings, samples=3, seed=5, compress_every=20, **options
        )[0]
        for _ in range(2)
    )
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.stats["seed"] for c in first] == [5, 6, 7]
    assert len({tuple(c.token_ids) for c in first}) > 1


@pytest.mark.parametrize("replayed", [False, True])
def test_decoded_entropy_and_evolution_match_a_full_recomputation(llama, tokenizer, monkeypatch, replayed):
    """Signals gathered step by step (eagerly, or by fixed-shape steps as replayed on CUDA) equal those of
    one float64 pass over prompt + generation."""
    from infokv.engine.decode_signals import DecodeTracker

    if replayed:
        monkeypatch.setattr(decoding, "replayable", lambda *args: True)
        monkeypatch.setattr(decoding, "GRAPH_STEPS", 16)

    captured: dict = {}
    original = DecodeTracker.append

    def spy(self, position, producing, next_logits):
        original(self, position, producing, next_logits)
        captured["layers"] = self.layers

    DecodeTracker.append = spy
    try:
        completion = generate(
            llama,
            tokenizer,
            PROMPTS[:1],
            "full",
            1.0,
            decode_method="infokv",
            compress_every=1000,
            max_new_tokens=40,
            stop_at_eos=False,
        )[0]
    finally:
        DecodeTracker.append = original
    prompt_ids = tokenizer(PROMPTS[0])["input_ids"]
    sequence = torch.tensor([prompt_ids + completion.token_ids[:-1]])
    reference = Reference(llama, sequence)
    start = len(prompt_ids)
    for layer, entries in enumerate(captured["layers"]):
        assert entries.positions[0, 0].tolist() == list(range(sequence.shape[1]))
        evolution = entries.evolution[0, 0, start:].double()
        torch.testing.assert_close(evolution, reference.evolution(layer)[start:], rtol=1e-4, atol=1e-6)
        producing = entries.producing[256][0, 0, start:].double()
        expected = topk_entropy(reference.logits[start - 1 : -1], 256).double()
        torch.testing.assert_close(producing, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(decode_method="pyramidkv"), "cannot compress while decoding"),
        (dict(decode_method="nope"), "unknown method 'nope'"),
        (dict(decode_method="infokv", decode_ratio=0.0), "decode ratio 0.0"),
        (dict(decode_method="infokv", compress_every=0), "compress_every 0"),
        (dict(method="rpc"), "cannot compress a prefill"),
        (dict(samples=0), "samples 0"),
    ],
)
def test_bad_decoding_input_fails_with_one_line(llama, tokenizer, options, message):
    arguments = {"method": "full", "budget": 1.0, "max_new_tokens": 4, **options}
    with pytest.raises(ValueError, match=message) as error:
        generate(llama, tokenizer, PROMPTS, **arguments)
    assert "\n" not in str(error.value)
