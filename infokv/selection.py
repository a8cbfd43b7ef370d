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


def select(scores: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, forced: torch.Tensor) -> Selection:
    """Keep ``keep[b]`` entries per (row b, head) by score; ``forced`` is (B, T) or per head (B, H, T)."""
    batch, heads, length = scores.shape
    width = int(keep.max())
    forced = forced if forced.ndim == 3 else forced[:, None, :]
    ranked = scores.float().masked_fill(forced, float("inf"))
    ranked = ranked.masked_fill(~valid[:, None, :], float("-inf"))
    # A stable sort breaks ties (max-pooling makes plateaus) by position, identically with or without padding.
    top = ranked.sort(dim=-1, descending=True, stable=True).indices[..., :width]
    slot = torch.arange(width, device=scores.device)
    is_kept = slot[None, :] < keep[:, None].to(scores.device)
    # Filler slots sort before every real index and are masked out.
    order_key = torch.where(is_kept[:, None, :], top, -1 - slot[None, None, :].expand(batch, heads, width))
    order = order_key.argsort(dim=-1)
    indices = torch.where(is_kept[:, None, :], top, torch.zeros_like(top)).gather(-1, order)
    fill = width - keep.to(scores.device)
    return Selection(indices, slot[None, :] >= fill[:, None])


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
