"""Causal attention of a prefill chunk on CUDA: the last q of k keys, with each query's log-normaliser.

Query j of the chunk sits at key index p + j, p = k − q (lower-right causal). On Hopper, cuDNN's
attention kernel is faster than PyTorch's flash-attention 2 kernel (``results/bench/README.md``), but
its causal mask is aligned to the upper left when q < k. So
the chunk is attended in two exact parts, the p earlier keys (no mask) and its own q keys (square
causal), and merged by their log-normalisers:

    lse = log(e^{l₁} + e^{l₂}),    o = (e^{l₁ − lse} · o₁ + e^{l₂ − lse} · o₂)

cuDNN builds an execution plan for every new shape (tens to hundreds of milliseconds), so it
is used only where q and p lie on a grid of :data:`CUDNN_GRID` tokens: the full chunks of a chunked
prefill, whose shapes recur from prompt to prompt, so each plan is built once per process. Other
shapes (a prompt's last, partial chunk) take the flash-attention 2 kernel, which is lower-right
causal and needs no plan. Both kernels take GQA keys and values as they are (no per-query-head
copies).
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)
CUDNN_HEAD_DIMS = 128
CUDNN_GRID = 1024


def available(query: torch.Tensor) -> bool:
    """Whether a fused kernel takes these queries (CUDA, half precision, head size ≤ 256)."""
    return query.is_cuda and query.dtype in HALF and query.shape[-1] <= 256


def _cudnn_usable(query: torch.Tensor, keys: int) -> bool:
    """cuDNN for head sizes it supports and shapes on the grid (the sdpa backend switches do not apply:
    decoding turns cuDNN off for sdpa, see :mod:`infokv.hf.hooks`, and this calls the kernel directly)."""
    queries, dim = query.shape[2], query.shape[-1]
    return (
        torch.backends.cudnn.is_available()
        and torch.backends.cudnn.enabled
        and dim <= CUDNN_HEAD_DIMS
        and dim % 8 == 0
        and queries % CUDNN_GRID == 0
        and keys % CUDNN_GRID == 0
    )


def _cudnn(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool, scaling: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    output, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        query, key, value, None, True, 0.0, causal, False, scale=scaling
    )[:2]
    return output, lse.reshape(query.shape[:3]).float()


def flash(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool, scaling: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-attention 2 output (B, H_q, q, d) and fp32 log-normalisers (B, H_q, q); ``causal`` is
    lower-right."""
    output, lse = torch.ops.aten._scaled_dot_product_flash_attention(
        query, key, value, 0.0, is_causal=causal, return_debug_mask=False, scale=scaling
    )[:2]
    return output, lse[..., : query.shape[2]].float()


def merge(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from (output, log-normaliser) of each:
    fp32 output (…, d) and log-normaliser (…)."""
    (first_output, first_lse), (second_output, second_lse) = first, second
    lse = torch.logaddexp(first_lse, second_lse)
    output = first_output.float() * (first_lse - lse).exp()[..., None]
    output += second_output.float() * (second_lse - lse).exp()[..., None]
    return output, lse


def lower_right_causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H_q, q, d) and fp32 log-normalisers (B, H_q, q) of q queries over the last q of k keys."""
    queries, keys = query.shape[2], key.shape[2]
    if not _cudnn_usable(query, keys):
        return flash(query, key, value, True, scaling)
    past = keys - queries
    own = _cudnn(query, key[:, :, past:], value[:, :, past:], True, scaling)
    if past == 0:
        return own
    output, lse = merge(_cudnn(query, key[:, :, :past], value[:, :, :past], False, scaling), own)
    return output.to(query.dtype), lse
