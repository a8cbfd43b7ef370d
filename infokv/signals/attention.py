"""Attention signals recomputed from captured queries, never from ``eager`` attention weights.

Window attention (SnapKV): for the last ``w`` queries ``q_j`` and every key ``k_i``

    a_{j,i} = softmax_i(q_j · k_i · s + m_{j,i}),    A_i = P( Σ_j a_{j,i} )  for the keys i before the window

with scale ``s``, mask ``m`` (causal, padding), fp32 softmax over the full row (window keys included),
``P`` a 1-D pool over the keys before the window only, stride 1, edges padded with zeros (average: the
zeros count in the mean, as ``avg_pool1d``'s default; max: they never win over attention, which is ≥ 0);
query heads of a GQA group are then reduced to their KV head (or, ``mean_all``, every query head of the
layer to one score shared by all KV heads) and A is normalised to Σ_i A_i = 1 over those keys. The
window's own keys get A = 0: selection always keeps them. This is kvpress 0.5.5's ``SnapKVPress`` and
the SnapKV authors' code alike; only the pool kind differs (average, max).

Cumulative attention (H2O): ``C_i = Σ_j a_{j,i}`` over every query j seen, accumulated in blocks
of queries so no (T × T) tensor exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infokv.kernels.blocks import queries_per_block

POOLINGS = ("max", "avg", "none")
REDUCTIONS = ("mean", "max", "mean_all")


def _grouped_logits(grouped: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """fp32 s·q·kᵀ (B, H_kv, g, q, k) of grouped queries (B, H_kv, g, q, d): the g heads of a group are
    folded into rows of one product with their KV head's keys, so keys are not copied per query head.
    The scale is applied inside the product (``baddbmm``'s alpha), not in a pass over the logits."""
    batch, kv_heads, groups, queries, dim = grouped.shape
    folded = grouped.reshape(batch * kv_heads, groups * queries, dim)
    keys = key.transpose(-1, -2).reshape(batch * kv_heads, dim, key.shape[2])
    product = torch.baddbmm(folded.new_empty(()), folded, keys, beta=0.0, alpha=scaling)
    return product.float().view(batch, kv_heads, groups, queries, key.shape[2])


def _masked_logits(
    grouped: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None, first_query: int, scaling: float
) -> torch.Tensor:
    """fp32 logits (B, H_kv, g, q, k) of grouped queries at key indices ``first_query + j``, masked -inf."""
    queries, keys = grouped.shape[3], key.shape[2]
    logits = _grouped_logits(grouped, key, scaling)
    query_index = torch.arange(first_query, first_query + queries, device=key.device)[:, None]
    key_index = torch.arange(keys, device=key.device)[None, :]
    allowed = key_index <= query_index
    if valid is not None:
        allowed = (allowed[None] & valid[:, None, :]) | (key_index == query_index)[None]
        allowed = allowed[:, None, None]
    return logits.masked_fill(~allowed, float("-inf"))


def _query_weights(valid: torch.Tensor | None, first_query: int, queries: int) -> torch.Tensor | None:
    """(B, 1, 1, q, 1) weights that drop padding queries, or None."""
    if valid is None:
        return None
    return valid[:, first_query : first_query + queries].float()[:, None, None, :, None]


def blockwise_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    valid: torch.Tensor | None,
    scaling: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Attention of q queries (the last q of the k keys) in query blocks, with its column sums.

    Returns the attention output (B, H_q, q, d) when ``value`` is given (else None) and
    Σ_j softmax_i(q_j·k_i·s) per query head (B, H_q, k), under the mask ``valid`` (B, k) or none. Each
    block sees only the keys up to its last query, and its fp32 probabilities are used for both results,
    so collecting H2O's cumulative attention during prefill costs one softmax pass, not a second attention.
    """
    batch, query_heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = query_heads // kv_heads
    first = keys - queries
    block = min(queries, queries_per_block(query.device, batch, query_heads, kv_heads, keys))
    grouped = query.reshape(batch, kv_heads, groups, queries, dim)
    total = torch.zeros(batch, kv_heads, groups, keys, device=query.device)
    future = torch.ones(block, block, dtype=torch.bool, device=query.device).triu_(1)
    outputs = []
    for start in range(0, queries, block):
        stop = min(queries, start + block)
        visible = first + stop  # causal: later keys get no attention from this block
        if valid is None:
            logits = _grouped_logits(grouped[:, :, :, start:stop], key[:, :, :visible], scaling)
            logits[..., first + start :].masked_fill_(future[: stop - start, : stop - start], float("-inf"))
        else:
            logits = _masked_logits(
                grouped[:, :, :, start:stop], key[:, :, :visible], valid[:, :visible], first + start, scaling
            )
        probabilities = torch.softmax(logits, dim=-1, out=logits)
        if value is not None:
            folded = probabilities.to(value.dtype).view(batch, kv_heads, -1, visible)
            outputs.append(torch.matmul(folded, value[:, :, :visible]).view(*probabilities.shape[:4], -1))
        weights = _query_weights(valid, first + start, stop - start)
        if weights is not None:
            probabilities = probabilities * weights
        total[..., :visible] += probabilities.sum(dim=3)
    output = None
    if value is not None:
        output = torch.cat(outputs, dim=3).reshape(batch, query_heads, queries, value.shape[-1])
    return output, total.reshape(batch, query_heads, keys)


def attention_column_sums(
    query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Σ_j softmax_i(q_j·k_i·s) over the q queries (the last q of the k keys), per query head: (B, H_q, k)."""
    return blockwise_attention(query, key, None, valid, scaling)[1]


def new_query_column_sums(
    query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """softmax_i(q·k_i·s) (B, H_q, k) of one new query per row over the valid keys (None: all).

    The query's own entry is already among the keys, in whichever slot it was written, so no causal
    mask applies: this is the decoding step's share of H2O's cumulative attention, with fixed shapes.
    """
    batch, query_heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, query_heads // kv_heads, 1, dim)
    logits = _grouped_logits(grouped, key, scaling)
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, None, None, :], float("-inf"))
    return logits.softmax(-1).reshape(batch, query_heads, key.shape[2])


def pool_positions(scores: torch.Tensor, pooling: str, kernel: int) -> torch.Tensor:
    """1-D pooling of (B, H, T) scores over positions, stride 1, same length, zero padding at the edges
    (counted in an average, as kvpress does)."""
    if pooling == "none" or kernel <= 1:
        return scores
    batch, heads, length = scores.shape
    flat = scores.reshape(batch * heads, 1, length)
    padding = kernel // 2
    if pooling == "max":
        pooled = F.max_pool1d(flat, kernel, stride=1, padding=padding)
    elif pooling == "avg":
        pooled = F.avg_pool1d(flat, kernel, stride=1, padding=padding)
    else:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
    return pooled[..., :length].reshape(batch, heads, length)


def before_window(valid: torch.Tensor | None, length: int, window: int, device: torch.device) -> torch.Tensor:
    """(B, T) or (1, T) True at the valid keys that precede each row's last ``window`` valid keys."""
    if valid is None:
        return (torch.arange(length, device=device) < length - window)[None]
    rank = valid.long().cumsum(dim=-1)
    return valid & (rank <= rank[:, -1:] - window)


def reduce_heads(scores: torch.Tensor, kv_heads: int, reduction: str) -> torch.Tensor:
    """(B, H_q, T) -> (B, H_kv, T): reduce the query heads of each GQA group (``mean``, ``max``), or
    average every query head of the layer and give each KV head that one score (``mean_all``)."""
    batch, query_heads, length = scores.shape
    if reduction == "mean_all":
        return scores.mean(dim=1, keepdim=True).expand(batch, kv_heads, length)
    grouped = scores.reshape(batch, kv_heads, query_heads // kv_heads, length)
    if reduction == "mean":
        return grouped.mean(dim=2)
    if reduction == "max":
        return grouped.amax(dim=2)
    raise ValueError(f"reduction {reduction!r} is not one of {REDUCTIONS}")


def normalise(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Scale (B, H, T) scores so they sum to 1 over the valid positions of each row."""
    if valid is not None:
        scores = scores * valid[:, None, :].float()
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def window_attention(
    window_queries: torch.Tensor,
    key: torch.Tensor,
    valid: torch.Tensor | None,
    scaling: float,
    window: int,
    pooling: str,
    kernel: int,
    reduction: str,
    normalised: bool = True,
) -> torch.Tensor:
    """SnapKV attention (B, H_kv, T) of the last ``window`` queries over the keys before them, pooled,
    GQA-reduced and, with ``normalised``, normalised (module docstring); 0 at the window's keys and at
    padding. Without ``normalised`` it is the window's summed attention, whose total differs between heads."""
    queries = window_queries[:, :, -window:]
    summed = attention_column_sums(queries, key, valid, scaling)
    context = before_window(valid, key.shape[2], window, key.device)[:, None, :]
    pooled = pool_positions(summed * context, pooling, kernel) * context
    reduced = reduce_heads(pooled, key.shape[1], reduction)
    return normalise(reduced, None) if normalised else reduced
