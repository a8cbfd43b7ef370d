"""Turn scores into kept cache indices, per layer and KV head.

Each row keeps its ``keep`` highest-scoring valid tokens; forced tokens (sinks, the observation
window) score +inf so they are always kept and count toward the budget; padding scores −inf so it
is evicted first. Rows of a batch that keep fewer tokens than the longest row are filled with
masked entries at the front, so the cache stays one tensor per layer; so are the KV heads of a row that
keep fewer entries than its widest head (head-wise budgets), whose validity is then per (row, head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """Kept indices (B, H_kv, K) into the uncompressed cache, sorted ascending, and their validity: (B, K)
    when every KV head of a row keeps as many entries, (B, H_kv, K) when they keep different numbers."""

    indices: torch.Tensor
    valid: torch.Tensor


def forced_mask(valid: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """(B, T) True for each row's first ``sink`` valid tokens and its last ``window`` tokens."""
    rank = valid.long().cumsum(dim=-1)
    total = rank[:, -1:]
    sinks = valid & (rank <= sink)
    recent = valid & (rank > total - window)
    return sinks | recent


def rank(scores: torch.Tensor, valid: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Entry indices (B, H, T) from best to worst: forced first, padding last, ties by position.

    ``forced`` is (B, T) or per head (B, H, T). A ranking serves every budget of one method.
    """
    return ranked_scores(scores, valid, forced).sort(dim=-1, descending=True, stable=True).indices


def ranked_scores(scores: torch.Tensor, valid: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """fp32 ``scores`` (B, H, T) as :func:`rank` orders them: +inf where ``forced``, −inf at padding."""
    forced = forced if forced.ndim == 3 else forced[:, None, :]
    ranked = scores.float().masked_fill(forced, float("inf"))
    # A stable sort of these breaks ties (max-pooling makes plateaus) by position, with or without padding.
    return ranked.masked_fill(~valid[:, None, :], float("-inf"))


def take_top(ranking: torch.Tensor, keep: torch.Tensor, width: int) -> Selection:
    """The first ``keep[b]`` (or, per head, ``keep[b, h]``) entries of each (row b, head h) ``ranking``, in
    ascending position order; ``width`` = max keep, passed in so that it is not read back from the device."""
    batch, heads, _ = ranking.shape
    top = ranking[..., :width]
    slot = torch.arange(width, device=ranking.device)
    per_head = keep if keep.ndim == 2 else keep[:, None]
    is_kept = slot < per_head[..., None]  # (B, 1 or H, width)
    # Filler slots sort before every real index and are masked out.
    order_key = torch.where(is_kept, top, -1 - slot.expand(batch, heads, width))
    order = order_key.argsort(dim=-1)
    indices = torch.where(is_kept, top, torch.zeros_like(top)).gather(-1, order)
    real = slot >= (width - per_head)[..., None]
    return Selection(indices, real if keep.ndim == 2 else real[:, 0])


def select(scores: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor) -> Selection:
    """Keep ``keep[b]`` entries per (row b, head) by score; ``forced`` is (B, T) or per head (B, H, T)."""
    return take_top(rank(scores, valid, forced), keep, int(keep.max()))


def _front_fill(selection: Selection, width: int) -> Selection:
    """Widen a selection to ``width`` entries with masked filler at the front."""
    extra = width - selection.indices.shape[-1]
    if extra == 0:
        return selection
    batch, heads, _ = selection.indices.shape
    filler = torch.zeros(batch, heads, extra, dtype=selection.indices.dtype, device=selection.indices.device)
    invalid = selection.valid.new_zeros(*selection.valid.shape[:-1], extra)
    return Selection(torch.cat([filler, selection.indices], -1), torch.cat([invalid, selection.valid], -1))


def _per_head(selection: Selection) -> Selection:
    """``selection`` with its validity per (row, head) (B, H_kv, K)."""
    if selection.valid.ndim == 3:
        return selection
    return Selection(selection.indices, selection.valid[:, None, :].expand_as(selection.indices))


def combine_groups(per_group: list[list[Selection]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stack per-group selections (group-major rows): one (R, H, K_l) index and (R, K_l) mask per layer,
    or an (R, H, K_l) mask where some group's heads keep different numbers of entries."""
    indices, valid = [], []
    for layer in range(len(per_group[0])):
        width = max(selections[layer].indices.shape[-1] for selections in per_group)
        filled = [_front_fill(selections[layer], width) for selections in per_group]
        if any(selection.valid.ndim == 3 for selection in filled):
            filled = [_per_head(selection) for selection in filled]
        indices.append(torch.cat([selection.indices for selection in filled]))
        valid.append(torch.cat([selection.valid for selection in filled]))
    return indices, valid
