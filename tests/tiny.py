"""Tiny random-weight models of real architectures, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

VOCAB = 80


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
        return LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if architecture == "qwen2":
        return Qwen2Config(
            **common,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    raise ValueError(architecture)


def tiny_model(architecture: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture), attn_implementation="sdpa")
    # Random init gives near-uniform logits; sharpen them so greedy decoding has clear winners.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()
