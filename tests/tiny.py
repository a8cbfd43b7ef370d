"""Tiny random-weight models of real architectures, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from infokv.hf import architectures

VOCAB = 80
SLIDING_WINDOW = 12
"""Window of the tiny sliding-window layers: shorter than the test prompts, so windows really slide."""

ROPE = {"rope_type": "default", "rope_theta": 10000.0}
LLAMA3_ROPE = architectures.llama_3_1_8b().rope_parameters
"""Llama-3.1's own RoPE scaling (factor 8), so the tiny Llama rotates as the real one does."""
ARCHITECTURES = ("llama3", "qwen2", "mistral", "qwen3", "phi3", "gemma3", "olmo2")
"""The architecture matrix (``tests/test_architecture_matrix.py``): GQA (Llama-3 with its RoPE scaling,
Qwen2, Qwen3 with q/k norms), Mistral with a sliding window in every layer, Phi-3's fused QKV projection,
Gemma-3's sliding and global layers with query pre-attention scaling and final-logit soft-capping, and
OLMo-2's multi-head attention."""


def tiny_config(architecture: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    if architecture == "llama":
        return LlamaConfig(**common, rope_parameters=ROPE)
    if architecture == "llama3":
        return LlamaConfig(**common, rope_parameters=LLAMA3_ROPE)
    if architecture == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False, rope_parameters=ROPE)
    if architecture == "mistral":
        return MistralConfig(**common, sliding_window=SLIDING_WINDOW, rope_parameters=ROPE)
    if architecture == "qwen3":
        return Qwen3Config(**common, head_dim=16, use_sliding_window=False, rope_parameters=ROPE)
    if architecture == "phi3":
        return Phi3Config(**common, rope_parameters=ROPE)
    if architecture == "gemma3":
        return Gemma3TextConfig(
            **common,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=30.0,
        )
    if architecture == "olmo2":
        return Olmo2Config(**{**common, "num_key_value_heads": 4}, rope_parameters=ROPE)
    raise ValueError(architecture)


def tiny_model(architecture: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture), attn_implementation="sdpa")
    with torch.no_grad():
        # Random init gives near-uniform logits; sharpen them so greedy decoding has clear winners.
        model.get_output_embeddings().weight.mul_(8.0)
        # q/k norms start as identities, which give every key the same norm (a tie for KNorm's ranking);
        # trained models' norm weights differ per feature.
        for name, parameter in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


def reference_greedy(model, tokenizer, prompt: str, new_tokens: int) -> list[int]:
    """The model's own greedy generation, without any infokv code in the loop."""
    input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    output = model.generate(
        input_ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    return output[0, input_ids.shape[1] :].tolist()
