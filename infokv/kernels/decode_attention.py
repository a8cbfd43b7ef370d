"""One decoding query per row over a fixed-shape cache (:class:`infokv.hf.cache.FixedWrite`).

The cache holds p entries, then the slots of the captured steps, valid once written. A mask over
the whole width would send every step to a masked kernel that reads all p entries of every row
without splitting them across thread blocks, far slower than an unmasked kernel at long prefixes
and small batches, and in a sweep, whose narrow rows are filled up to the widest, it reads the
filler too. So each group of rows whose valid entries form one run from the same start
(:class:`infokv.kernels.prefix.ValidPrefix`) attends that run without a mask, the few recent slots are
attended with one, and the parts are merged by their log-normalisers:

    lse = log(e^{l₁} + e^{l₂}),    o = e^{l₁ − lse} · o₁ + e^{l₂ − lse} · o₂

Shapes stay fixed from step to step, so the step can be captured as a CUDA graph.
"""

from __future__ import annotations

import torch

from infokv.kernels import causal_attention
from infokv.kernels.prefix import ValidPrefix


def _logits(grouped: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """fp32 logits (B, H_kv, g, T) = scaling · q kᵀ of grouped queries (B, H_kv, g, d), keys (B, H_kv, T, d).

    On CUDA a half-precision product accumulates and is written in fp32 by one batched matrix product, so
    the keys are read once in their own dtype instead of being copied to fp32 at every step."""
    if grouped.is_cuda and key.dtype in causal_attention.HALF and grouped.dtype == key.dtype:
        batch, kv_heads, groups, dim = grouped.shape
        queries = grouped.reshape(batch * kv_heads, groups, dim)
        keys = key.reshape(batch * kv_heads, key.shape[2], dim).transpose(1, 2)
        logits = torch.bmm(queries, keys, out_dtype=torch.float32)
        return logits.mul_(scaling).view(batch, kv_heads, groups, key.shape[2])
    return torch.matmul(grouped.float(), key.float().transpose(-1, -2)) * scaling


def _masked_part(
    grouped: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H_kv, g, d) and fp32 log-normaliser (B, H_kv, g) of grouped queries over the keys that
    ``valid`` (B, T), or per KV head (B, H_kv, T), lets them see.

    Logits and weights are fp32 (:func:`_logits`); the weights meet the values in the values' dtype (fp32
    accumulation), as in flash attention."""
    logits = _logits(grouped, key, scaling)
    per_head = valid[:, :, None, :] if valid.ndim == 3 else valid[:, None, None, :]
    logits = logits.masked_fill(~per_head, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    weights = (logits - lse[..., None]).exp()
    output = torch.matmul(weights.to(value.dtype), value).float()
    return output, lse


def _prefix_part(
    query: torch.Tensor, grouped: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, H_kv, g, d) and fp32 log-normaliser (B, H_kv, g) over keys that are all valid."""
    batch, kv_heads, groups, dim = grouped.shape
    if causal_attention.available(query):
        output, lse = causal_attention.flash(query, key, value, False, scaling)
        shape = (batch, kv_heads, groups)
        return output.reshape(*shape, dim), lse.reshape(shape)
    everything = torch.ones(batch, key.shape[2], dtype=torch.bool, device=key.device)
    return _masked_part(grouped, key, value, everything, scaling)


def prefix_and_recent_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor,
    prefix: ValidPrefix,
    scaling: float,
) -> torch.Tensor:
    """Attention (B, H_q, 1, d) of one query per row: each row group of ``prefix`` over its valid run of
    the first ``prefix.length`` entries, unmasked, and every row over the later slots under ``valid``."""
    batch, query_heads, _, dim = query.shape
    kv_heads, length = key.shape[1], prefix.length
    grouped = query.reshape(batch, kv_heads, query_heads // kv_heads, dim)
    parts = []
    for rows, start in prefix.groups:
        keys, values = key[rows, :, start:length], value[rows, :, start:length]
        parts.append(_prefix_part(query[rows], grouped[rows], keys, values, scaling))
    if len(parts) == 1:
        head = parts[0]
    else:
        head = (torch.cat([output for output, _ in parts]), torch.cat([lse for _, lse in parts]))
    return _with_recent(query, head, key[:, :, length:], value[:, :, length:], valid[:, length:], scaling)


def masked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention (B, H_q, 1, d) of one query per row over the entries ``valid`` (B, T), or per KV head
    (B, H_kv, T), lets it see: for masks that are not one valid run per row, such as head-wise budgets.
    The logits come from one batched product over all rows and heads, so a single row still spreads over
    the whole device, which a fused masked kernel with one block per head does not."""
    batch, query_heads, _, dim = query.shape
    grouped = query.reshape(batch, key.shape[1], query_heads // key.shape[1], dim)
    output = _masked_part(grouped, key, value, valid, scaling)[0]
    return output.to(query.dtype).reshape(batch, query_heads, 1, dim)


def shared_and_recent_attention(
    query: torch.Tensor,
    shared: tuple[torch.Tensor, torch.Tensor],
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Attention (B, H_q, 1, d) of one query per row over its kept entries of a shared prompt cache, given
    as their output and log-normaliser (:meth:`infokv.hf.shared_prefix.SharedPrefix.attend`), and over the
    row's own ``key``/``value`` entries under ``valid`` (None: all)."""
    if valid is None:
        valid = torch.ones(key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)
    return _with_recent(query, shared, key, value, valid, scaling)


def _with_recent(
    query: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor],
    key: torch.Tensor,
    value: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Merge attention over earlier entries (fp32 output (B, H_kv, g, d), log-normaliser (B, H_kv, g)) with
    attention over the masked ``key``/``value`` slots; (B, H_q, 1, d) in the query's dtype."""
    batch, query_heads, _, dim = query.shape
    grouped = query.reshape(batch, key.shape[1], query_heads // key.shape[1], dim)
    output = causal_attention.merge(head, _masked_part(grouped, key, value, valid, scaling))[0]
    return output.to(query.dtype).reshape(batch, query_heads, 1, dim)
