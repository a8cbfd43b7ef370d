"""Turn scores into kept cache indices, per layer and KV head.

Each row keeps its ``keep`` highest-scoring valid tokens; forced tokens (sinks, the observation
window) score +inf so they are always kept and count toward the budget; padding scores −inf so it
is evicted first. Rows of a batch that keep fewer tokens than the longest row are filled with
masked entries at the front, so the cache stays one tensor per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """Kept indices (B, H_kv, K) into the uncompressed cache, sorted ascending, and their validity (B, K)."""

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
    forced = forced if forced.ndim == 3 else forced[:, None, :]
    ranked = scores.float().masked_fill(forced, float("inf"))
    ranked = ranked.masked_fill(~valid[:, None, :], float("-inf"))
    # A stable sort breaks ties (max-pooling makes plateaus) by position, identically with or without padding.
    return ranked.sort(dim=-1, descending=True, stable=True).indices


def take_top(ranking: torch.Tensor, keep: torch.Tensor, width: int) -> Selection:
    """The first ``keep[b]`` entries of each (row b, head) ``ranking``, in ascending position order;
    ``width`` = max_b keep[b], passed in so that it is not read back from the device."""
    batch, heads, _ = ranking.shape
    top = ranking[..., :width]
    slot = torch.arange(width, device=ranking.device)
    is_kept = slot[None, :] < keep[:, None]
    # Filler slots sort before every real index and are masked out.
    order_key = torch.where(is_kept[:, None, :], top, -1 - slot[None, None, :].expand(batch, heads, width))
    order = order_key.argsort(dim=-1)
    indices = torch.where(is_kept[:, None, :], top, torch.zeros_like(top)).gather(-1, order)
    fill = width - keep
    return Selection(indices, slot[None, :] >= fill[:, None])


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
    invalid = torch.zeros(batch, extra, dtype=torch.bool, device=selection.valid.device)
    return Selection(torch.cat([filler, selection.indices], -1), torch.cat([invalid, selection.valid], -1))


def combine_groups(per_group: list[list[Selection]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stack per-group selections (group-major rows): one (R, H, K_l) index and (R, K_l) mask per layer."""
    indices, valid = [], []
    for layer in range(len(per_group[0])):
        width = max(selections[layer].indices.shape[-1] for selections in per_group)
        filled = [_front_fill(selections[layer], width) for selections in per_group]
        indices.append(torch.cat([selection.indices for selection in filled]))
        valid.append(torch.cat([selection.valid for selection in filled]))
    return indices, valid
