"""The model call every phase shares: append tokens at explicit positions and run the base model
through our attention function, plus the model facts the views need (attention scaling, RoPE)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from infokv.hf.cache import KVState, cache_argument_name
from infokv.hf.hooks import (
    AttentionCallback,
    AttentionReplacement,
    ForwardContext,
    decoder_layers,
    forward_context,
)


def forward_hidden(
    model: PreTrainedModel,
    state: KVState,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor | None = None,
    on_attention: AttentionCallback | None = None,
    attend: AttentionReplacement | None = None,
) -> torch.Tensor:
    """Append (R, q) tokens at explicit ``positions`` to the cache; final hidden states (R, q, hidden).

    ``valid`` (R, q) marks the new entries later queries may attend (None: all); ``on_attention``
    and ``attend`` are handed to our attention function (see :class:`infokv.hf.hooks.ForwardContext`).
    """
    state.extend_valid(valid, input_ids.shape[1], input_ids.shape[0])
    base = model.base_model
    with forward_context(model, ForwardContext(state, on_attention, attend=attend)):
        output = base(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=True,
            **{cache_argument_name(base): state.cache},
        )
    return output.last_hidden_state


def attention_scaling(model: PreTrainedModel) -> float:
    """The softmax scale of every layer's attention (``self_attn.scaling``); one line if layers differ."""
    scalings = sorted({float(layer.self_attn.scaling) for layer in decoder_layers(model)})
    if len(scalings) > 1:
        raise ValueError(f"layers scale attention differently ({scalings}); one scale per model is supported")
    return scalings[0]


def rotary_function(
    model: PreTrainedModel,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """cos, sin (B, n, d) of the model's RoPE at positions (B, n), or None for models without RoPE.

    Models with a RoPE per layer type (Gemma-3: a local base for sliding layers) give the full-attention
    layers' one: only those layers are compressed (:func:`infokv.hf.cache.attention_windows`)."""
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None:
        return None
    per_type = "layer_type" in inspect.signature(rotary.forward).parameters
    layer_type = {"layer_type": "full_attention"} if per_type else {}

    def rotate(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probe = torch.zeros(1, dtype=torch.float32, device=positions.device)
        cos, sin = rotary(probe, positions, **layer_type)
        return cos.float(), sin.float()

    return rotate
