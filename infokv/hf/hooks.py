"""Hooks into a transformers model: our attention function and forward hooks on decoder layers.

Together with :mod:`infokv.hf.cache` this is the only code that knows transformers internals.
While a :class:`ForwardContext` is active, the model's attention runs through
:func:`infokv_attention`, which

* builds its mask from the :class:`~infokv.hf.cache.KVState` validity masks (left padding, filler
  entries of shorter rows, per-layer cache lengths) and the causal order of the new queries, so
  a compressed cache of any per-layer length can be attended with explicit positions, restricted to
  the window in sliding-window layers (which are never compressed), and
* hands the post-RoPE queries and the keys to a capture callback, so attention-based signals
  are recomputed for the few queries that need them instead of asking for ``eager`` weights.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface, PreTrainedModel

from infokv.hf.cache import KVState, attention_windows
from infokv.kernels import causal_attention, decode_attention
from infokv.kernels.prefix import ValidPrefix

ATTENTION_NAME = "infokv"
Scaling = float | None
"""The softmax scale of attention (None: 1/√d)."""
SUPPORTED_ATTENTION = ("sdpa", "flash_attention_2")
QUERY_PROJECTIONS = ("q_proj", "qkv_proj")
"""Where a layer's queries come from: their own projection, or the first heads of a fused QKV one (Phi-3)."""

AttentionCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None], None]
AttentionReplacement = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor
]


@dataclass
class ForwardContext:
    """What our attention function needs to know during one forward pass."""

    state: KVState
    on_attention: AttentionCallback | None = None
    backend: str = "sdpa"
    attend: AttentionReplacement | None = None
    """Computes the attention output itself (B, H_q, q, d), e.g. to reuse its probabilities."""


_ACTIVE: contextvars.ContextVar[ForwardContext | None] = contextvars.ContextVar(
    "infokv_forward", default=None
)


def check_attention_implementation(model: PreTrainedModel) -> str:
    """The model's attention implementation, or a one-line error if we cannot score with it."""
    implementation = model.config._attn_implementation
    if implementation == ATTENTION_NAME:
        return "sdpa"
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {implementation!r} is not supported; load the model with "
            f"attn_implementation in {SUPPORTED_ATTENTION}"
        )
    return implementation


def check_attention_layers(model: PreTrainedModel) -> None:
    """A one-line error unless every decoder layer is a self-attention layer we can hold and attend: full
    attention or a sliding window (:func:`infokv.hf.cache.attention_windows`), with its query projection
    as ``q_proj`` or the fused ``qkv_proj`` (Phi-3) and a softmax scale (``scaling``: 1/√d, or Gemma's
    ``query_pre_attn_scalar``^-1/2), and without attention logit soft-capping (Gemma-2), which neither our
    attention nor the attention signals apply."""
    attention_windows(model)
    for index, layer in enumerate(decoder_layers(model)):
        attention = getattr(layer, "self_attn", None)
        if attention is None:
            raise ValueError(
                f"decoder layer {index} ({type(layer).__name__}) has no self-attention (self_attn); "
                "only decoder layers of full or sliding-window self-attention are supported"
            )
        if not any(hasattr(attention, name) for name in QUERY_PROJECTIONS):
            raise ValueError(
                f"decoder layer {index}'s attention {type(attention).__name__} has none of the query "
                f"projections {list(QUERY_PROJECTIONS)}"
            )
        if not isinstance(getattr(attention, "scaling", None), int | float):
            raise ValueError(f"decoder layer {index}'s attention {type(attention).__name__} has no scaling")
        cap = getattr(attention, "attn_logit_softcapping", None)
        if cap is not None:
            raise ValueError(f"attention logit soft-capping (attn_logit_softcapping={cap}) is not supported")


def attention_mask_for(
    valid: torch.Tensor | None, queries: int, keys: int, device: torch.device
) -> torch.Tensor:
    """Boolean (B or 1, 1, q, k) mask, or (B, H_kv, q, k) for a per-head ``valid`` (B, H_kv, k): query j sits
    at key index k - q + j and sees valid keys up to itself.

    A query always sees itself, so padding queries never produce an all-masked row (NaN).
    """
    query_index = torch.arange(keys - queries, keys, device=device)[:, None]
    key_index = torch.arange(keys, device=device)[None, :]
    causal = key_index <= query_index
    if valid is None:
        return causal[None, None]
    per_head = valid if valid.ndim == 3 else valid[:, None, :]
    return (causal & per_head[:, :, None, :]) | (key_index == query_index)


def window_mask_for(
    valid: torch.Tensor | None, queries: int, keys: int, window: int, device: torch.device
) -> torch.Tensor:
    """:func:`attention_mask_for` restricted to a sliding window: query j sees the valid keys among the last
    ``window`` tokens up to itself, as transformers' ``sliding_window_overlay`` (key index > query index −
    window). Tokens are counted by their order among the valid entries, so left padding and padded
    question tokens in the middle of a row do not shorten the window."""
    mask = attention_mask_for(valid, queries, keys, device)
    if valid is None:
        order = torch.arange(keys, device=device)[None, :]
    else:
        order = valid.long().cumsum(dim=-1)
    query_order = order[:, keys - queries :]
    near = order[:, None, :] > query_order[:, :, None] - window
    return mask & near[:, None]


def _repeat_heads(states: torch.Tensor, repeats: int) -> torch.Tensor:
    return states if repeats == 1 else states.repeat_interleave(repeats, dim=1)


FUSED_MASKED_ROWS = 64
"""(row, KV head) pairs from which a masked decoding step on CUDA takes sdpa's fused kernel
(:func:`_single_query_attention`)."""


def _single_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """One decoding query per row: the query heads of a GQA group become that KV head's queries,
    so keys and values are attended in place instead of being copied per query head.

    Under a mask, sdpa's fused kernel runs one thread block per (row, KV head) over all the keys; below
    :data:`FUSED_MASKED_ROWS` such pairs that leaves most of a GPU idle, and
    :func:`infokv.kernels.decode_attention.masked_attention`, whose batched products split the keys too,
    is faster; from there on the fused kernel is."""
    batch, query_heads, _, dim = query.shape
    kv_heads = key.shape[1]
    if valid is not None and query.is_cuda and batch * kv_heads < FUSED_MASKED_ROWS:
        scale = dim**-0.5 if scaling is None else scaling
        return decode_attention.masked_attention(query, key, value, valid, scale)
    grouped = query.reshape(batch, kv_heads, query_heads // kv_heads, dim)
    mask = None if valid is None else (valid if valid.ndim == 3 else valid[:, None, :])[:, :, None, :]
    output = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return output.reshape(batch, query_heads, 1, dim)


def _flash_attention(module, query, key, value, scaling, backend, **kwargs) -> torch.Tensor:
    """(B, q, H_q, d) flash output. Calls the private helper, not ``flash_attention_forward``, because
    the latter resolves the kernel from ``module.config._attn_implementation``, which is ``infokv`` here."""
    from transformers.modeling_flash_attention_utils import _flash_attention_forward

    return _flash_attention_forward(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        None,
        query_length=query.shape[2],
        is_causal=module.is_causal,
        softmax_scale=scaling,
        attn_implementation=backend,
        **kwargs,
    )


def infokv_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of (B, H_q, q, d) queries over (B, H_kv, k, d) keys with masks from the active context.

    A sliding-window layer attends under :func:`window_mask_for`, never through the faster unmasked paths,
    and its attention is not replaced by ``context.attend``: only full-attention layers are compressed, so
    only their attention signals are collected that way."""
    context = _ACTIVE.get()
    if context is None:
        raise RuntimeError("infokv attention called outside of an infokv forward context")
    layer = module.layer_idx
    valid = context.state.valid[layer]
    window = context.state.windows[layer]
    queries, keys = query.shape[2], key.shape[2]
    if valid is not None and valid.shape[-1] != keys:
        raise RuntimeError(f"layer {layer}: validity mask covers {valid.shape[-1]} entries, cache has {keys}")
    if kwargs.get("sliding_window") != window:
        raise RuntimeError(
            f"layer {layer}: the model attends a sliding window of {kwargs.get('sliding_window')}, the cache "
            f"was built for {window}"
        )
    if context.on_attention is not None:
        context.on_attention(layer, query, key, valid)
    if window is not None:
        if context.state.shared is not None:
            raise RuntimeError(f"layer {layer} slides a window, which a shared prompt cache cannot follow")
        mask = window_mask_for(valid, queries, keys, window, query.device)
        return _masked_attention(query, key, value, mask, scaling).transpose(1, 2).contiguous(), None
    if context.attend is not None:
        output = context.attend(layer, query, key, value, valid, scaling)
        return output.transpose(1, 2).contiguous(), None
    shared = context.state.shared
    if shared is not None:  # a sweep's rows over one prompt cache, plus what each generated
        if queries != 1:
            raise RuntimeError(f"a shared prompt cache is attended one query per row, not {queries}")
        prompt = shared.attend(layer, query, scaling)
        output = decode_attention.shared_and_recent_attention(query, prompt, key, value, valid, scaling)
        return output.transpose(1, 2).contiguous(), None
    trivial_mask = valid is None and (queries == 1 or queries == keys)
    if trivial_mask and context.backend == "flash_attention_2":
        return _flash_attention(module, query, key, value, scaling, context.backend, **kwargs), None
    if queries == 1:
        output = _step_attention(query, key, value, valid, context.state.valid_prefix(layer), scaling)
    elif query.is_cuda:
        output = _chunk_attention_cuda(query, key, value, valid, scaling)
    else:
        output = _chunk_attention_cpu(query, key, value, valid, scaling)
    return output.transpose(1, 2).contiguous(), None


def _step_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor | None,
    prefix: ValidPrefix | None,
    scaling: float | None,
) -> torch.Tensor:
    """One decoding query per row: a fixed-shape (CUDA-graph) step attends its valid prefix without a
    mask; an unmasked CUDA step uses sdpa's GQA kernel; any other step groups query heads per KV head."""
    if prefix is not None:
        return decode_attention.prefix_and_recent_attention(query, key, value, valid, prefix, scaling)
    if valid is None and query.is_cuda:
        repeats = query.shape[1] // key.shape[1]
        return F.scaled_dot_product_attention(query, key, value, scale=scaling, enable_gqa=repeats > 1)
    return _single_query_attention(query, key, value, valid, scaling)


def _chunk_attention_cuda(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor | None, scaling: Scaling
) -> torch.Tensor:
    """Causal attention of a chunk of queries on CUDA: the fused causal kernel for unmasked half-precision
    chunks, sdpa's GQA kernel with a lower-right causal mask for other unmasked ones, else a full mask."""
    queries, keys = query.shape[2], key.shape[2]
    repeats = query.shape[1] // key.shape[1]
    if valid is None and causal_attention.available(query):
        return causal_attention.lower_right_causal_attention(query, key, value, scaling)[0]
    if valid is None:
        causal = {"is_causal": True} if queries == keys else {"attn_mask": causal_lower_right(queries, keys)}
        return F.scaled_dot_product_attention(
            query, key, value, scale=scaling, enable_gqa=repeats > 1, **causal
        )
    mask = attention_mask_for(valid, queries, keys, query.device)
    return _masked_attention(query, key, value, mask, scaling)


def _chunk_attention_cpu(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor | None, scaling: Scaling
) -> torch.Tensor:
    """Causal attention of a chunk of queries on CPU: unmasked when queries and keys coincide, else
    under a full mask."""
    queries, keys = query.shape[2], key.shape[2]
    repeats = query.shape[1] // key.shape[1]
    if valid is None and queries == keys:
        return F.scaled_dot_product_attention(
            query, _repeat_heads(key, repeats), _repeat_heads(value, repeats), is_causal=True, scale=scaling
        )
    mask = attention_mask_for(valid, queries, keys, query.device)
    return _masked_attention(query, key, value, mask, scaling)


def _masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scaling: Scaling
) -> torch.Tensor:
    """Attention under a boolean (B or 1, 1 or H_kv, q, k) ``mask`` (per KV head: repeated per query head)."""
    repeats = query.shape[1] // key.shape[1]
    if mask.shape[1] > 1:  # per KV head: one mask per query head of its group
        mask = _repeat_heads(mask, repeats)
    return F.scaled_dot_product_attention(
        query, _repeat_heads(key, repeats), _repeat_heads(value, repeats), attn_mask=mask, scale=scaling
    )


AttentionInterface.register(ATTENTION_NAME, infokv_attention)


@contextlib.contextmanager
def forward_context(model: PreTrainedModel, context: ForwardContext) -> Iterator[None]:
    """Run the model's attention through :func:`infokv_attention` with ``context`` for the duration."""
    config = model.config
    previous = config._attn_implementation
    context.backend = check_attention_implementation(model)
    config._attn_implementation = ATTENTION_NAME
    token = _ACTIVE.set(context)
    try:
        with _without_cudnn_attention(model.device):
            yield
    finally:
        _ACTIVE.reset(token)
        config._attn_implementation = previous


def _without_cudnn_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA, keep sdpa off its cuDNN backend: cuDNN builds an execution plan for every new key length,
    and decoding (keys grow by one per step; PyramidKV has a different length in every layer) meets a new
    length at every call. Flash and memory-efficient kernels need no per-shape set-up."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layers of a causal LM (``model.model.layers`` for Llama, Qwen2, ...)."""
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers at base_model.layers")
    return layers


@contextlib.contextmanager
def layer_output_hooks(
    model: PreTrainedModel, callback: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``callback(layer, residual_stream)`` with each decoder layer's output (B, q, hidden)."""

    def make_hook(index: int):
        def hook(module: nn.Module, args, output) -> None:
            callback(index, output[0] if isinstance(output, tuple) else output)

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(decoder_layers(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def prerope_query_hooks(
    model: PreTrainedModel, callback: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``callback(layer, queries)`` with each layer's pre-RoPE queries (B, q, H_q, d).

    The hook sits on the query projection's output: ``q_proj``, or the first H_q · d features of a fused
    ``qkv_proj`` (Phi-3, whose queries come first). Where the architecture normalises queries, the hook
    applies the layer's ``q_norm`` itself, as the model does before RoPE: per head when its weight has d
    features (Qwen3, Gemma-3), over the whole projection when it has H_q · d (OLMo-2). The norm is applied
    to the projection rather than hooked, as its output's layout differs by architecture ((B, q, H, d) in
    Qwen3, (B, H, q, d) in Gemma-3).
    """
    text_config = model.config.get_text_config(decoder=True)
    heads = text_config.num_attention_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads

    def make_hook(index: int, norm: nn.Module | None):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            queries = output[..., : heads * head_dim]
            if norm is not None and norm.weight.shape[-1] != head_dim:
                queries = norm(queries)
            queries = queries.reshape(*queries.shape[:2], heads, head_dim)
            if norm is not None and norm.weight.shape[-1] == head_dim:
                queries = norm(queries)
            callback(index, queries)

        return hook

    handles = []
    for index, layer in enumerate(decoder_layers(model)):
        attention = layer.self_attn
        projection = next(getattr(attention, name) for name in QUERY_PROJECTIONS if hasattr(attention, name))
        norm = getattr(attention, "q_norm", None)
        handles.append(projection.register_forward_hook(make_hook(index, norm)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
