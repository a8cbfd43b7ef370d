"""Generation: equality with the uncompressed model, batching, sweeps, sampling, bad input."""

from __future__ import annotations

import pytest
import torch
from tiny import reference_greedy

from infokv import generate, generate_sweep, methods
from infokv.engine.capture import prefill
from infokv.engine.sweep import build_settings, compress_settings, left_pad
from infokv.engine.sweep import generate as engine_generate

ALL = methods.available("prefill")
SNAPKV_16 = methods.get("snapkv", window=16)
"""SnapKV with a window short enough for these short prompts to keep a choice below 64 tokens."""
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs, said the sphinx.",
    "How vexingly quick daft zebras jump! " * 2,
]


@pytest.mark.parametrize("name", ALL)
def test_budget_at_or_above_length_reproduces_uncompressed_generation(model, tokenizer, name):
    expected = [reference_greedy(model, tokenizer, prompt, 12) for prompt in PROMPTS]
    for budget in (1.0, 4096):
        completions = generate(model, tokenizer, PROMPTS, name, budget, max_new_tokens=12)
        assert [completion.token_ids for completion in completions] == expected


@pytest.mark.parametrize("name", ALL)
def test_batched_equals_one_by_one(model, tokenizer, name):
    batched = generate(model, tokenizer, PROMPTS, name, 0.5, max_new_tokens=10)
    for prompt, completion in zip(PROMPTS, batched, strict=True):
        alone = generate(model, tokenizer, [prompt], name, 0.5, max_new_tokens=10)[0]
        assert alone.token_ids == completion.token_ids
        assert alone.stats["kept_tokens"] == completion.stats["kept_tokens"]


def test_sweep_equals_separate_runs(model, tokenizer):
    settings = [(name, budget) for name in ALL for budget in (0.5, 70)]
    sweep = generate_sweep(model, tokenizer, PROMPTS, settings, max_new_tokens=8)
    assert len(sweep) == len(settings)
    for (name, budget), completions in zip(settings, sweep, strict=True):
        separate = generate(model, tokenizer, PROMPTS, name, budget, max_new_tokens=8)
        assert [c.token_ids for c in completions] == [c.token_ids for c in separate], (name, budget)
        assert all(c.method == name for c in completions)


@pytest.mark.parametrize("lengths", [(60, 60), (60, 45), (60, 38)])
@pytest.mark.parametrize(
    "specs",
    [[(SNAPKV_16, 40), ("h2o", 40)], [("full", 1.0), (SNAPKV_16, 40), ("pyramidkv", 0.5), ("h2o", 0.9)]],
)
def test_compressed_layers_are_unmasked_exactly_when_every_row_keeps_the_width(llama, lengths, specs):
    """The dense flags compress_settings derives from host keep counts match the selections' masks."""
    generator = torch.Generator().manual_seed(3)
    sequences = [torch.randint(4, 80, (length,), generator=generator).tolist() for length in lengths]
    input_ids, valid = left_pad(sequences, 0, torch.device("cpu"))
    settings = build_settings(specs)
    requirements = set().union(*(setting.method.requirements() for setting in settings))
    state, captured, _ = prefill(llama, input_ids, valid, requirements)
    assert captured.host_lengths.tolist() == list(lengths)
    with torch.inference_mode():
        compressed, per_setting = compress_settings(state, captured, settings)
    dense = [layer_valid is None for layer_valid in compressed.valid]
    for layer, is_dense in enumerate(dense):
        every_entry = all(bool(selections[layer].valid.all()) for selections in per_setting)
        widths = {selections[layer].indices.shape[-1] for selections in per_setting}
        assert is_dense == (every_entry and len(widths) == 1), layer
    assert any(dense) == (len(specs) == 2 and min(lengths) >= 40)


def test_compression_changes_what_is_kept(llama, tokenizer):
    completions = generate(llama, tokenizer, PROMPTS[:1], SNAPKV_16, 48, max_new_tokens=4)
    prompt_tokens = completions[0].stats["prompt_tokens"]
    assert prompt_tokens > 48
    assert completions[0].stats["kept_tokens"] == [48] * 3


def test_chunked_prefill_gives_the_same_generation(model, tokenizer):
    for name in ("snapkv", "infokv", "h2o", "expected_attention"):
        whole = generate(model, tokenizer, PROMPTS, name, 0.5, max_new_tokens=8)
        chunked = generate(model, tokenizer, PROMPTS, name, 0.5, max_new_tokens=8, prefill_chunk=16)
        assert [c.token_ids for c in whole] == [c.token_ids for c in chunked]


def test_context_only_matches_prompt_mode_when_nothing_is_evicted(model, tokenizer):
    pairs = [(prompt, " Answer:") for prompt in PROMPTS]
    joined = [context + question for context, question in pairs]
    whole = generate(model, tokenizer, joined, "snapkv", 1.0, max_new_tokens=8)
    split = generate(model, tokenizer, pairs, "snapkv", 1.0, max_new_tokens=8, compress="context_only")
    assert [c.token_ids for c in whole] == [c.token_ids for c in split]
    compressed = generate(model, tokenizer, pairs, SNAPKV_16, 40, max_new_tokens=8, compress="context_only")
    assert all(c.stats["kept_tokens"][0] == 40 for c in compressed)
    assert all(c.stats["prompt_tokens"] == c.stats["context_tokens"] + len(" Answer:") for c in compressed)


def test_sampling_is_reproducible_and_batch_independent(llama, tokenizer):
    options = dict(max_new_tokens=12, temperature=0.8, top_p=0.9)
    first = generate(llama, tokenizer, PROMPTS, "infokv", 0.5, seed=[1, 2, 3], **options)
    again = generate(llama, tokenizer, PROMPTS, "infokv", 0.5, seed=[1, 2, 3], **options)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    alone = generate(llama, tokenizer, PROMPTS[1:2], "infokv", 0.5, seed=2, **options)
    assert alone[0].token_ids == first[1].token_ids
    other = generate(llama, tokenizer, PROMPTS, "infokv", 0.5, seed=[7, 8, 9], **options)
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


def test_generation_stops_at_eos_per_row(llama, tokenizer):
    completions = generate(llama, tokenizer, PROMPTS, "full", 1.0, max_new_tokens=30)
    eos = tokenizer.eos_token_id
    for completion in completions:
        assert eos not in completion.token_ids
        assert completion.stats["new_tokens"] == len(completion.token_ids) <= 30


class Untouchable(RuntimeError):
    pass


@pytest.fixture
def guarded(llama):
    """The tiny model, failing loudly if a forward pass starts."""

    def refuse(*args, **kwargs):
        raise Untouchable("model work started before validation")

    handle = llama.model.register_forward_pre_hook(refuse)
    yield llama
    handle.remove()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="nope", budget=0.2), "unknown method 'nope'"),
        (dict(method="snapkv", budget=0.0), "budget 0.0 is not allowed"),
        (dict(method="snapkv", budget=1.5), "budget 1.5 is not allowed"),
        (dict(method="snapkv", budget=-4), "budget -4 is not allowed"),
        (dict(method="snapkv", budget="lots"), "budget 'lots' is not allowed"),
        (dict(method="snapkv", budget=20), "below sink \\+ window = 64"),
        (dict(method="snapkv", budget=0.2, max_new_tokens=0), "max_new_tokens 0"),
        (dict(method="snapkv", budget=0.2, temperature=-1.0), "temperature -1.0"),
        (dict(method="snapkv", budget=0.2, top_p=0.0), "top_p 0.0"),
        (dict(method="snapkv", budget=0.2, cuda_graphs="yes"), "cuda_graphs 'yes' must be true or false"),
        (dict(method="snapkv", budget=0.2, compress="question"), "compress 'question'"),
        (dict(method="snapkv", budget=0.2, compress="context_only"), "needs \\(context, question\\)"),
        (dict(method="snapkv", budget=0.2, max_new_tokens=2040), "the model's context 2048"),
    ],
)
def test_bad_input_fails_with_one_line_before_model_work(guarded, tokenizer, kwargs, message):
    options = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message) as error:
        engine_generate(guarded, tokenizer, PROMPTS, **options)
    assert "\n" not in str(error.value)


def test_eager_attention_is_refused(tokenizer):
    from tiny import tiny_config
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="eager")
    with pytest.raises(ValueError, match="attention implementation 'eager' is not supported"):
        generate(eager, tokenizer, PROMPTS, "snapkv", 0.5, max_new_tokens=2)
