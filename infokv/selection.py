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
    """Keep ``keep[b]`` entries per (row b, head) by score; see the module docstring."""
    batch, heads, length = scores.shape
    width = int(keep.max())
    ranked = scores.float().masked_fill(forced[:, None, :], float("inf"))
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
