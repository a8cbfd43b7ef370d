"""Predictive entropy of next-token distributions, restricted to the top-k tokens.

For logits z over the vocabulary and K = top-k indices (renormalised over those k tokens):

    p_v = exp(z_v) / Σ_{u∈K} exp(z_u),    H = − Σ_{v∈K} p_v log p_v

``k = 0`` uses the full vocabulary. Logits are produced in row chunks, so no (T × vocab) tensor
exists for long prompts.

Where bfloat16 products are much faster than the hidden states' dtype (fp32 on a CPU with native
bfloat16, or a GPU), :func:`two_stage_entropy` computes the full-vocabulary logits in bfloat16 only to
choose candidates, and the entropy from the exact logits of those candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

POSITIONS = ("producing", "next")

CANDIDATE_SLACK = 64
"""Candidates beyond the top k per row: a token of the exact top k is missed only if more than this many
others rank above it through bfloat16 rounding, so at worst near-ties at rank k are swapped (on a 2K-token
SmolLM2 prompt the entropy then matched fp32 to 2e-6)."""
CANDIDATE_ROWS = 256
"""Positions per block of :func:`two_stage_entropy`: the candidates of a block are the union of its rows'
(about 5K of SmolLM2's 49K tokens at 256 rows); larger blocks make the union, and the exact product, grow."""


def _group_size(width: int, k: int) -> int:
    """Columns b = ⌊√(V/k)⌋ per strided group of :func:`_group_candidates` (below 2: no groups)."""
    return math.isqrt(width // max(1, k))


def _group_candidates(
    logits: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Values (…, n) that hold the k largest of each row of (…, V) ``logits``, the k chosen groups
    (…, k), and a lower bound (…, 1) on each row's k-th largest value: the columns of the k strided
    groups with the largest maxima, then the columns past them, and the k-th largest group maximum.
    Rows too short to group (V < 4k) are their own candidates, with no groups or bound (None).

    The first G·b columns are split into G = ⌊V/b⌋ strided groups {v : v mod G = g} of b = ⌊√(V/k)⌋
    columns; only the k groups with the largest maxima can hold the top k. If t is the k-th largest group
    maximum, every column outside those groups is ≤ t, and the k maxima inside are ≥ t, so the top k of
    the k·b columns inside (plus the < b columns past G·b) are the top k of the row, and all are ≥ t.
    Strided groups make the maxima a reduction across rows of a (b, G) view, which vectorises, unlike
    one over short runs.
    """
    width = logits.shape[-1]
    size = _group_size(width, k)
    if size < 2:
        return logits, None, None
    groups = width // size
    grouped = logits[..., : groups * size].unflatten(-1, (size, groups))
    maxima = grouped.amax(dim=-2).topk(k, dim=-1, sorted=False)
    chosen = maxima.indices.unsqueeze(-2).expand(*maxima.indices.shape[:-1], size, k)
    candidates = grouped.gather(-1, chosen).flatten(-2)
    if groups * size < width:
        candidates = torch.cat([candidates, logits[..., groups * size :]], dim=-1)
    return candidates, maxima.indices, maxima.values.amin(dim=-1, keepdim=True)


def _candidate_ids(chosen: torch.Tensor, width: int, k: int) -> torch.Tensor:
    """Column ids (…, n) of the candidates of :func:`_group_candidates` from its chosen groups (…, k)."""
    size = _group_size(width, k)
    groups = width // size
    offsets = torch.arange(0, groups * size, groups, device=chosen.device)[:, None]
    columns = (chosen.unsqueeze(-2) + offsets).flatten(-2)
    tail = torch.arange(groups * size, width, device=chosen.device).expand(*columns.shape[:-1], -1)
    return torch.cat([columns, tail], dim=-1)


def top_values(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of each row of (…, V) ``logits``, unordered: the same values as ``topk``, faster
    (the top k of :func:`_group_candidates`)."""
    return _group_candidates(logits, k)[0].topk(k, dim=-1, sorted=False).values


def topk_entropy(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """Entropy (…,) of the distributions given by (…, V) logits, restricted to the top ``topk``."""
    if 0 < topk < logits.shape[-1]:
        # Before the fp32 cast (no fp32 copy of (…, V)); unordered, as the entropy does not depend on order.
        logits = top_values(logits, topk)
    log_probabilities = logits.float().log_softmax(dim=-1)
    return -(log_probabilities.exp() * log_probabilities).sum(dim=-1)


def chunked_entropy(
    hidden: torch.Tensor, to_logits: Callable[[torch.Tensor], torch.Tensor], topk: int, rows: int = 512
) -> torch.Tensor:
    """Entropy (B, T) of the next-token distribution at each of the (B, T, hidden) final hidden states."""
    batch, length, _ = hidden.shape
    flat = hidden.reshape(batch * length, -1)
    pieces = [
        topk_entropy(to_logits(flat[start : start + rows]), topk) for start in range(0, flat.shape[0], rows)
    ]
    return torch.cat(pieces).reshape(batch, length)


def candidate_columns(approximate: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending column ids (U,) that include those of the ``count`` largest values of every row of (N, V)
    ``approximate``: each row's group candidates (:func:`_group_candidates`) at or above its bound on the
    count-th largest value, which adds a few columns (1% more in the union of 256 SmolLM2 rows) but needs
    no second top-k, and compares only a tenth of the row."""
    width = approximate.shape[-1]
    candidates, chosen, bound = _group_candidates(approximate, count)
    if chosen is None:
        columns = torch.arange(width, device=approximate.device).expand_as(candidates)
        bound = candidates.topk(count, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    else:
        columns = _candidate_ids(chosen, width, count)
    kept = columns[candidates >= bound]
    union = torch.zeros(width, dtype=torch.bool, device=approximate.device)
    union[kept] = True
    return union.nonzero()[:, 0]


def two_stage_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    topk: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rows: int = CANDIDATE_ROWS,
) -> torch.Tensor:
    """Entropy (B, T) of the top ``topk`` of the logits z = transform(h Wᵀ + b) of (B, T, d) ``hidden``.

    Per block of ``rows`` positions, bfloat16 logits pick the columns among the topk + slack largest of
    some row (:data:`CANDIDATE_SLACK`); the entropy is that of the top ``topk`` of the exact logits of
    those columns only. ``transform`` (e.g. soft-capping) must be increasing, so it keeps the order.
    """
    batch, length, _ = hidden.shape
    flat = hidden.reshape(batch * length, -1)
    low_weight = weight.bfloat16()
    low_bias = None if bias is None else bias.bfloat16()
    pieces = []
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        approximate = torch.nn.functional.linear(block.bfloat16(), low_weight, low_bias)
        columns = candidate_columns(approximate, topk + CANDIDATE_SLACK)
        del approximate
        exact = torch.nn.functional.linear(block, weight[columns], None if bias is None else bias[columns])
        pieces.append(topk_entropy(exact if transform is None else transform(exact), topk))
    return torch.cat(pieces).reshape(batch, length)


def align_to_tokens(next_entropy: torch.Tensor, valid: torch.Tensor | None, position: str) -> torch.Tensor:
    """Per-token entropy H_i (B, T) from the entropy of the distribution at each position (B, T).

    ``next``: H_i is the entropy at position i. ``producing``: H_i is the entropy at position i−1,
    the distribution that produced token i; each row's first token, which has none, gets that
    row's maximum. Padding gets 0.
    """
    if position == "next":
        aligned = next_entropy.clone()
    elif position == "producing":
        aligned = torch.zeros_like(next_entropy)
        aligned[:, 1:] = next_entropy[:, :-1]
        first = valid.float().argmax(dim=-1) if valid is not None else torch.zeros_like(aligned[:, 0]).long()
        mask = valid.clone() if valid is not None else torch.ones_like(aligned, dtype=torch.bool)
        mask[torch.arange(aligned.shape[0]), first] = False
        row_max = aligned.masked_fill(~mask, float("-inf")).amax(dim=-1)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        aligned[torch.arange(aligned.shape[0]), first] = row_max
    else:
        raise ValueError(f"entropy_position {position!r} is not one of {POSITIONS}")
    if valid is not None:
        aligned = aligned * valid.float()
    return aligned
