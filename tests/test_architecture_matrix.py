"""The architecture matrix: every method on tiny random models of each supported architecture.

For each architecture of :data:`tiny.ARCHITECTURES` (GQA, MHA, q/k norms, a fused QKV projection,
sliding-window layers alone or beside global ones, query pre-attention scaling, final-logit soft-capping):
every prefill and decoding method runs through the engine, a budget at or above the length reproduces
``model.generate``, a batch equals its prompts one by one, and the attention signals and pre-RoPE
queries the methods read equal the model's own. Prompts are longer than the sliding window, so windows
really slide.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re

import pytest
import torch
from tiny import ARCHITECTURES, SLIDING_WINDOW, VOCAB, reference_greedy, tiny_config, tiny_model
from transformers import AutoModelForCausalLM, Gemma2Config, GPTNeoXConfig, MambaConfig, Qwen3NextConfig

from infokv import compress, generate, generate_sweep, methods, signals
from infokv.engine.capture import prefill
from infokv.hf.cache import KVState, attention_windows
from infokv.hf.forward import forward_hidden
from infokv.hf.hooks import decoder_layers, prerope_query_hooks

PREFILLERS = methods.available("prefill")
DECODERS = methods.available("decode")
PROMPTS = [
    "The quick brown fox jumps over the lazy dog, then naps in the warm sun by the old red barn door.",
    "Pack my box with five dozen liquor jugs, said the sphinx of black quartz.",
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow; five boxing wizards jump.",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return tiny_model(request.param)


def full_layers(model) -> list[int]:
    return [layer for layer, window in enumerate(attention_windows(model)) if window is None]


def test_the_matrix_covers_each_attention_layout():
    """The layouts the architectures are here for: MHA and GQA, sliding layers alone and beside full ones."""
    configs = {name: tiny_config(name) for name in ARCHITECTURES}
    assert {c.num_attention_heads == c.num_key_value_heads for c in configs.values()} == {True, False}
    layouts = {name: attention_windows(tiny_model(name)) for name in ("llama3", "mistral", "gemma3")}
    assert layouts == {
        "llama3": [None] * 3,
        "mistral": [SLIDING_WINDOW] * 3,
        "gemma3": [SLIDING_WINDOW, None, SLIDING_WINDOW],
    }
    assert all(len(prompt) > 4 * SLIDING_WINDOW for prompt in PROMPTS)


def test_every_prefill_method_at_full_budget_reproduces_model_generate(model, tokenizer):
    expected = [reference_greedy(model, tokenizer, prompt, NEW_TOKENS) for prompt in PROMPTS]
    settings = [(name, budget) for name in PREFILLERS for budget in (1.0, 4096)]
    sweep = generate_sweep(model, tokenizer, PROMPTS, settings, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    for (name, budget), completions in zip(settings, sweep, strict=True):
        assert [c.token_ids for c in completions] == expected, (name, budget)
        assert all(c.fidelity["argmax_agreement"] == 1.0 for c in completions), (name, budget)


def test_every_prefill_method_batched_equals_one_by_one(model, tokenizer):
    settings = [(name, 0.5) for name in PREFILLERS]
    options = dict(max_new_tokens=NEW_TOKENS, stop_at_eos=False, fidelity=False)
    batched = generate_sweep(model, tokenizer, PROMPTS, settings, **options)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_sweep(model, tokenizer, [prompt], settings, **options)
        for (name, _), together, single in zip(settings, batched, alone, strict=True):
            assert single[0].token_ids == together[row].token_ids, (name, row)
            assert single[0].stats["kept_tokens"] == together[row].stats["kept_tokens"], (name, row)
    windows = attention_windows(model)
    for (name, _), completions in zip(settings, batched, strict=True):
        for completion in completions:
            length = completion.stats["prompt_tokens"]
            kept = completion.stats["kept_tokens"]
            # Sliding layers keep every token; full-attention layers are cut by every evicting method.
            assert all(count == length for count, window in zip(kept, windows, strict=True) if window)
            evicted = [count < length for count, window in zip(kept, windows, strict=True) if window is None]
            assert all(evicted) if name != "full" else not any(evicted), (name, kept)


def test_every_decoding_method_without_eviction_reproduces_model_generate(model, tokenizer):
    expected = [reference_greedy(model, tokenizer, prompt, 2 * NEW_TOKENS) for prompt in PROMPTS]
    settings = [("full", 1.0, name, 1.0) for name in DECODERS]
    options = dict(max_new_tokens=2 * NEW_TOKENS, stop_at_eos=False, compress_every=8)
    sweep = generate_sweep(model, tokenizer, PROMPTS, settings, **options)
    for (_, _, name, _), completions in zip(settings, sweep, strict=True):
        assert [c.token_ids for c in completions] == expected, name
        events = 0 if name == "full" else (2 * NEW_TOKENS - 1) // 8  # none after the last token
        assert all(c.stats["compression_events"] == events for c in completions), name


def test_every_decoding_method_batched_equals_one_by_one(model, tokenizer):
    """Decoding compression with a window of 4, so each compression chooses among the generated entries."""
    settings = [("snapkv", 0.5, methods.get(name, window=4), 0.25) for name in DECODERS]
    options = dict(max_new_tokens=2 * NEW_TOKENS, stop_at_eos=False, compress_every=10, fidelity=False)
    batched = generate_sweep(model, tokenizer, PROMPTS, settings, **options)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_sweep(model, tokenizer, [prompt], settings, **options)
        for (_, _, method, _), together, single in zip(settings, batched, alone, strict=True):
            assert single[0].token_ids == together[row].token_ids, (method.name, row)
            assert single[0].stats["compressions"] == together[row].stats["compressions"], (method.name, row)
            assert len(together[row].stats["compressions"]) == (method.name != "full") * 3
    sliding = any(attention_windows(model))
    for (_, _, method, _), completions in zip(settings, batched, strict=True):
        for completion in completions:
            # Cache entries are counted in the fullest layer: a sliding layer, which keeps every entry.
            for _, before, after in completion.stats["compressions"]:
                assert after == before if sliding else after < before, (method.name, before, after)


def eager_twin(model):
    """The same weights under transformers' eager attention, which returns its probabilities."""
    twin = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), attn_implementation="eager")
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_attention_signals_of_full_layers_equal_the_model_s_attention(model, tokenizer):
    """H2O's column sums and SnapKV's window queries, captured in our attention function, give the attention
    probabilities of transformers' eager attention: its scaling (Gemma-3's query_pre_attn_scalar), q/k norms,
    RoPE and fused projections, unaffected by the sliding-window layers around a global layer."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"] for prompt in (PROMPTS[0], PROMPTS[0][::-1])])
    window = 8
    requirements = {(signals.CUMULATIVE_ATTENTION,), (signals.WINDOW_QUERIES, window)}
    state, captured, _ = prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), requirements, chunk=40)
    with torch.no_grad():
        eager = eager_twin(model)(ids, output_attentions=True).attentions
    assert sorted(captured.cumulative) == full_layers(model)
    for layer in full_layers(model):
        probabilities = eager[layer].float()
        torch.testing.assert_close(captured.cumulative[layer], probabilities.sum(dim=2), rtol=1e-4, atol=1e-5)
        queries = torch.cat(captured.window_queries[layer], dim=2)
        keys = state.layer(layer)[0]
        recomputed = signals.attention.attention_column_sums(queries, keys, None, captured.scaling)
        expected = probabilities[:, :, -window:].sum(dim=2)
        torch.testing.assert_close(recomputed, expected, rtol=1e-4, atol=1e-5)


def test_pre_rope_queries_rotate_into_the_queries_attention_sees(model, tokenizer):
    """The pre-RoPE query hook (q_proj or Phi-3's fused qkv_proj, after Qwen3's, Gemma-3's or OLMo-2's
    q_norm) gives queries that the layer's own RoPE turns into the queries our attention function receives."""
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    positions = torch.arange(ids.shape[1])[None]
    before, after = {}, {}

    def seen(layer: int, query: torch.Tensor, *_) -> None:
        after[layer] = query

    with torch.inference_mode(), prerope_query_hooks(model, before.__setitem__):
        forward_hidden(model, KVState.empty(model), ids, positions, on_attention=seen)
    rotary = model.base_model.rotary_emb
    per_type = "layer_type" in inspect.signature(rotary.forward).parameters
    for layer, decoder_layer in enumerate(decoder_layers(model)):
        attention = decoder_layer.self_attn
        kind = {"layer_type": attention.layer_type} if per_type else {}
        cos, sin = rotary(before[layer], positions, **kind)
        rotate = importlib.import_module(type(attention).__module__).apply_rotary_pos_emb
        queries = before[layer].transpose(1, 2)
        rotated, _ = rotate(queries, queries, cos, sin)
        torch.testing.assert_close(rotated, after[layer], rtol=1e-5, atol=1e-6)


def test_compress_keeps_sliding_layers_whole_and_cuts_global_ones(tokenizer):
    gemma = tiny_model("gemma3")
    ids = torch.tensor([tokenizer(PROMPTS[2])["input_ids"]])
    length = ids.shape[1]
    for name in PREFILLERS:
        method = methods.get(name, window=min(8, methods.get(name).window))
        _, kept = compress(gemma, ids, method, 40)
        for layer, window in enumerate(attention_windows(gemma)):
            if window is not None or name == "full":
                assert kept[layer][0].tolist() == [list(range(length))] * 2, (name, layer)
            elif method.head_wise:  # heads keep different counts; the layer keeps 40 per head in all
                heads = kept[layer].shape[1]
                assert int((kept[layer] >= 0).sum()) == 40 * heads, (name, layer)
            else:
                assert kept[layer].shape[-1] == 40 and bool((kept[layer] >= 0).all()), (name, layer)


def unsupported_models():
    """Real architectures outside the matrix, each with the words its error must name."""
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    heads = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return [
        (MambaConfig(**small, state_size=4), "layer types ['linear_attention']"),
        (
            Qwen3NextConfig(
                **small, **heads, num_experts=2, layer_types=["linear_attention", "full_attention"]
            ),
            "layer types ['linear_attention']",
        ),
        (GPTNeoXConfig(**small, num_attention_heads=4), "layer 0 (GPTNeoXLayer) has no self-attention"),
        (Gemma2Config(**small, **heads), "attention logit soft-capping"),
    ]


@pytest.mark.parametrize(
    ("config", "message"), unsupported_models(), ids=["mamba", "qwen3_next", "gpt_neox", "gemma2"]
)
def test_a_model_outside_the_matrix_fails_with_one_line_before_model_work(tokenizer, config, message):
    outside = AutoModelForCausalLM.from_config(config)

    def refuse(*args, **kwargs):
        raise AssertionError("model work started before validation")

    outside.base_model.register_forward_pre_hook(refuse)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        generate(outside, tokenizer, PROMPTS, "snapkv", 0.5, max_new_tokens=2)
    assert "\n" not in str(error.value)


def test_budget_at_length_reproduces_generation_of_a_prompt_with_padded_question(tokenizer):
    """A question fed after the context (``context_only``) is left-padded in the middle of a row's cache; a
    sliding window counts only the valid entries, so rows of different question lengths still match."""
    gemma = tiny_model("gemma3")
    pairs = list(zip(PROMPTS, (" Why?", " Answer briefly:", " Q"), strict=True))
    joined = [context + question for context, question in pairs]
    expected = [reference_greedy(gemma, tokenizer, prompt, NEW_TOKENS) for prompt in joined]
    options = dict(max_new_tokens=NEW_TOKENS, compress="context_only", stop_at_eos=False)
    split = generate(gemma, tokenizer, pairs, "snapkv", 1.0, **options)
    assert [c.token_ids for c in split] == expected
