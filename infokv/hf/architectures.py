"""The paper's model architectures as transformers configs, and models of them with random weights.

For speed and memory work only: the time of a prefill, a compression or a decoding step depends on the
architecture (layers, heads, widths, vocabulary) and the sequence lengths, not on the weights' values,
so a model built from one of these configs (:func:`config`) with seeded random weights times like the
published one without a download. Its outputs are noise. :mod:`infokv.hf.models` exposes them as model names
``random:<alias>``; :func:`for_model` also gives the architecture of the paper's hub models offline,
for cost estimates.

The numbers are those of the published ``config.json`` files: Llama-3.1-8B (also the architecture of
DeepSeek-R1-Distill-Llama-8B), Llama-3.2-3B, and Qwen2.5-Math-7B's Qwen2 layout as used by
DeepSeek-R1-Distill-Qwen-7B. ``scripts/bench_common.py`` keeps its own Llama-3.1-8B config because it
must import no infokv (it is shared with the kvpress process).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

SEED = 0
RANDOM_PREFIX = "random:"

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama3(
    hidden: int, intermediate: int, layers: int, heads: int, rope_factor: float, tied: bool
) -> LlamaConfig:
    """A Llama-3 config: 128256-token vocabulary, 8 KV heads of 128, 128K context with llama3 RoPE."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=tied,
        rope_parameters={**_LLAMA3_ROPE, "factor": rope_factor},
    )


def llama_3_1_8b() -> LlamaConfig:
    """Llama-3.1-8B: 32 layers of width 4096, 32 query and 8 KV heads of 128, 128K context."""
    return _llama3(4096, 14336, 32, 32, rope_factor=8.0, tied=False)


def llama_3_2_3b() -> LlamaConfig:
    """Llama-3.2-3B: 28 layers of width 3072, 24 query and 8 KV heads of 128, the LM head tied to the
    input embedding, 128K context."""
    return _llama3(3072, 8192, 28, 24, rope_factor=32.0, tied=True)


def qwen2_7b() -> Qwen2Config:
    """The Qwen2 7B layout of DeepSeek-R1-Distill-Qwen-7B: 28 layers of width 3584, 28 query and 4 KV
    heads of 128 (with biased q/k/v projections), plain RoPE of theta 10000, full attention in every
    layer, 128K context."""
    return Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        bos_token_id=151646,
        eos_token_id=151643,
        tie_word_embeddings=False,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


ARCHITECTURES: dict[str, Callable[[], PretrainedConfig]] = {
    "llama-3.1-8b": llama_3_1_8b,
    "llama-3.2-3b": llama_3_2_3b,
    "qwen2-7b": qwen2_7b,
}


# The hub models of the paper's tables, by the architecture they have.
PUBLISHED = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "llama-3.1-8b",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": "qwen2-7b",
}


def config(alias: str) -> PretrainedConfig:
    """A fresh config of the architecture ``alias``; an unknown alias is a one-line error naming the known."""
    if alias not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {alias!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[alias]()


def random_alias(name: str) -> str | None:
    """The architecture of a model name ``random:<alias>`` (checked), or None for any other name."""
    if not name.startswith(RANDOM_PREFIX):
        return None
    alias = name.removeprefix(RANDOM_PREFIX)
    if alias not in ARCHITECTURES:
        known = ", ".join(RANDOM_PREFIX + known for known in sorted(ARCHITECTURES))
        raise ValueError(f"unknown random model {name!r}; known: {known}")
    return alias


def for_model(name: str) -> PretrainedConfig | None:
    """The architecture of a model name without loading anything from the network: a ``random:<alias>``,
    a paper model's hub id (:data:`PUBLISHED`), or a local directory's ``config.json``; None otherwise."""
    alias = random_alias(name) or PUBLISHED.get(name)
    if alias is not None:
        return config(alias)
    directory = Path(name).expanduser()
    if (directory / "config.json").is_file():
        return AutoConfig.from_pretrained(directory, local_files_only=True)
    return None


def build_random(
    config: PretrainedConfig,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_implementation: str = "sdpa",
    seed: int = SEED,
) -> PreTrainedModel:
    """The causal LM of ``config`` with its initialiser's random weights, created directly on ``device``
    in ``dtype`` (no copy through host memory), in eval mode without gradients. The weights depend on
    ``seed`` alone: the global random state is forked, so the caller's draws are left as they were."""
    device = torch.device(device)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), device:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval().requires_grad_(False)
