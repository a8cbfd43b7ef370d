"""Predictive entropy of next-token distributions, restricted to the top-k tokens.

For logits z over the vocabulary and K = top-k indices (renormalised over those k tokens):

    p_v = exp(z_v) / Σ_{u∈K} exp(z_u),    H = − Σ_{v∈K} p_v log p_v

``k = 0`` uses the full vocabulary. Logits are produced in row chunks, so no (T × vocab) tensor
exists for long prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

POSITIONS = ("producing", "next")


def topk_entropy(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """Entropy (…,) of the distributions given by (…, V) logits, restricted to the top ``topk``."""
    if 0 < topk < logits.shape[-1]:
        # Before the fp32 cast (no fp32 copy of (…, V)); unsorted, as the entropy does not depend on order.
        logits = logits.topk(topk, dim=-1, sorted=False).values
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
