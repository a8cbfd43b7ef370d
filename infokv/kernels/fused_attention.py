"""Causal attention with H2O's column sums on CUDA, without materialising probabilities.

The attention output and each query's log-normaliser come from
:func:`infokv.kernels.causal_attention.lower_right_causal_attention` (query j sits at key index k − q + j);
a Triton kernel then sums the probabilities over the queries for each key, recomputing the
scores tile by tile in registers:

    C_i = Σ_{j : k − q + j ≥ i} exp(s · q_j · k_i − lse_j),
    lse_j = log Σ_{i' ≤ k − q + j} exp(s · q_j · k_i')

Cost: one extra pass of q·kᵀ products (half an attention's FLOPs) and no (q × k) tensor in memory,
instead of the fp32 probability blocks that :func:`infokv.signals.attention.blockwise_attention`
writes and reads several times. Only the query tiles that straddle a key tile's causal edge are
masked. Used only for unpadded batches on CUDA with Triton installed.
"""

from __future__ import annotations

import functools

import torch

from infokv.kernels import causal_attention

BLOCK_QUERIES = 64
BLOCK_KEYS = 128
WARPS = 8
STAGES = 3
"""Tile shape and launch settings: the fastest of those tried on an H200 (32-128 per side, 4 or 8 warps,
2-4 stages). Wider key tiles read each query tile for more keys."""


@functools.cache
def _kernel():
    """The Triton column-sum kernel, built on first use (Triton is imported only on CUDA machines)."""
    import triton
    import triton.language as tl

    @triton.jit
    def tile_probabilities(
        query_ptr,
        lse_ptr,
        k,
        m,
        offs_n,
        offs_d,
        queries,
        first,
        stride_qt,
        scale_log2,
        block_m: tl.constexpr,
        causal: tl.constexpr,
    ):
        """The (block_m, block_n) probabilities of the query tile starting at ``m`` for the key tile ``k``."""
        offs_m = m + tl.arange(0, block_m)
        in_range = offs_m < queries
        tile = query_ptr + offs_m[:, None] * stride_qt + offs_d[None, :]
        q = tl.load(tile, mask=in_range[:, None], other=0.0)
        # Queries past the end get lse = inf, so their terms are exp2(-inf) = 0.
        row_lse = tl.load(lse_ptr + offs_m, mask=in_range, other=float("inf"))
        probabilities = tl.exp2(tl.dot(q, tl.trans(k)) * scale_log2 - row_lse[:, None] * 1.4426950408889634)
        if causal:
            probabilities = tl.where(first + offs_m[:, None] >= offs_n[None, :], probabilities, 0.0)
        return probabilities

    @triton.jit
    def column_sums(
        query,
        key,
        lse,
        out,
        queries,
        keys,
        first,
        groups,
        scale_log2,
        stride_qb,
        stride_qh,
        stride_qt,
        stride_kb,
        stride_kh,
        stride_kt,
        heads: tl.constexpr,
        dim: tl.constexpr,
        block_m: tl.constexpr,
        block_n: tl.constexpr,
    ):
        key_block = tl.program_id(0)
        batch_head = tl.program_id(1)
        batch = batch_head // heads
        head = batch_head % heads
        offs_n = key_block * block_n + tl.arange(0, block_n)
        offs_d = tl.arange(0, dim)
        key_ptr = key + batch * stride_kb + (head // groups) * stride_kh
        key_mask = offs_n[:, None] < keys
        k = tl.load(key_ptr + offs_n[:, None] * stride_kt + offs_d[None, :], mask=key_mask, other=0.0)
        query_ptr = query + batch * stride_qb + head * stride_qh
        lse_ptr = lse + batch_head * queries
        # Tiles are added elementwise and summed over queries once at the end: a sum over a tile's query
        # axis crosses threads (shuffles and shared memory), which per tile would cost more than the tile.
        total = tl.zeros([block_m, block_n], dtype=tl.float32)
        # Queries before key_block's first key (minus the offset of the first query) cannot see it;
        # from the tile at ``whole`` on, every query sees every key of the block and needs no mask.
        start = tl.maximum(key_block * block_n - first, 0)
        start = (start // block_m) * block_m
        whole = tl.maximum(key_block * block_n + block_n - 1 - first, 0)
        whole = tl.minimum(tl.cdiv(whole, block_m) * block_m, queries)
        for m in range(start, whole, block_m):
            total += tile_probabilities(
                query_ptr, lse_ptr, k, m, offs_n, offs_d, queries, first, stride_qt, scale_log2, block_m, True
            )
        for m in range(whole, queries, block_m):
            total += tile_probabilities(
                query_ptr, lse_ptr, k, m, offs_n, offs_d, queries, first, stride_qt, scale_log2, block_m,
                False,
            )
        tl.store(out + batch_head * keys + offs_n, tl.sum(total, axis=0), mask=offs_n < keys)

    return column_sums


def available(query: torch.Tensor) -> bool:
    """Whether the fused path can run for this tensor (flash attention, Triton importable, head size a
    power of 2)."""
    if not causal_attention.available(query):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    dim = query.shape[-1]
    return dim >= 16 and dim & (dim - 1) == 0


def attention_with_column_sums(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention output (B, H_q, q, d) of the last q of k keys, and Σ_j p_{j,i} per query head
    (B, H_q, k)."""
    batch, query_heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = query_heads // kv_heads
    output, lse = causal_attention.lower_right_causal_attention(query, key, value, scaling)
    lse = lse.contiguous()
    query = query if query.stride(-1) == 1 else query.contiguous()
    key = key if key.stride(-1) == 1 else key.contiguous()
    sums = torch.empty(batch, query_heads, keys, device=query.device, dtype=torch.float32)
    grid = ((keys + BLOCK_KEYS - 1) // BLOCK_KEYS, batch * query_heads)
    _kernel()[grid](
        query,
        key,
        lse,
        sums,
        queries,
        keys,
        keys - queries,
        groups,
        scaling * 1.4426950408889634,
        query.stride(0),
        query.stride(1),
        query.stride(2),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        heads=query_heads,
        dim=dim,
        block_m=BLOCK_QUERIES,
        block_n=BLOCK_KEYS,
        num_warps=WARPS,
        num_stages=STAGES,
    )
    return output, sums
