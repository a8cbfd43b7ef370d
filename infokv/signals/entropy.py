"""Predictive entropy of next-token distributions, restricted to the top-k tokens.

For logits z over the vocabulary and K = top-k indices (renormalised over those k tokens):

    p_v = exp(z_v) / Σ_{u∈K} exp(z_u),    H = − Σ_{v∈K} p_v log p_v

``k = 0`` uses the full vocabulary. Logits are produced in row chunks, so no (T × vocab) tensor
exists for long prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

POSITIONS = ("producing", "next")


def _group_size(width: int, k: int) -> int:
    """Columns b = ⌊√(V/k)⌋ per strided group of :func:`_group_candidates` (below 2: no groups)."""
    return math.isqrt(width // max(1, k))


def _group_candidates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Values (…, n) that hold the k largest of each row of (…, V) ``logits``: the columns of the k strided
    groups with the largest maxima, then the columns past them. Rows too short to group (V < 4k) are their
    own candidates.

    The first G·b columns are split into G = ⌊V/b⌋ strided groups {v : v mod G = g} of b = ⌊√(V/k)⌋
    columns; only the k groups with the largest maxima can hold the top k. If t is the k-th largest group
    maximum, every column outside those groups is ≤ t, and the k maxima inside are ≥ t, so the top k of
    the k·b columns inside (plus the < b columns past G·b) are the top k of the row.
    Strided groups make the maxima a reduction across rows of a (b, G) view, which vectorises, unlike
    one over short runs.
    """
    width = logits.shape[-1]
    size = _group_size(width, k)
    if size < 2:
        return logits
    groups = width // size
    grouped = logits[..., : groups * size].unflatten(-1, (size, groups))
    chosen = grouped.amax(dim=-2).topk(k, dim=-1, sorted=False).indices
    candidates = grouped.gather(-1, chosen.unsqueeze(-2).expand(*chosen.shape[:-1], size, k)).flatten(-2)
    if groups * size < width:
        candidates = torch.cat([candidates, logits[..., groups * size :]], dim=-1)
    return candidates


def top_values(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of each row of (…, V) ``logits``, unordered: the same values as ``topk``, faster
    (the top k of :func:`_group_candidates`)."""
    return _group_candidates(logits, k).topk(k, dim=-1, sorted=False).values


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
