"""Running mean and covariance of pre-RoPE queries, per layer and query head (Expected Attention).

    μ = (1/n) Σ_j q_j,    Σ = (1/n) Σ_j q_j q_jᵀ − μ μᵀ

over the n valid prompt queries, accumulated chunk by chunk.
"""

from __future__ import annotations

import torch


class QueryStatistics:
    """Accumulates Σ q and Σ q qᵀ per (row, query head) for one layer."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, queries: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Add (B, q, H, d) queries; ``valid`` (B, q) marks the ones that count."""
        queries = queries.float()
        weights = torch.ones(queries.shape[:2], device=queries.device) if valid is None else valid.float()
        weighted = queries * weights[..., None, None]
        total = weighted.sum(dim=1)
        outer = torch.einsum("bqhd,bqhe->bhde", weighted, queries)
        count = weights.sum(dim=1)
        if self.total is None:
            self.count, self.total, self.outer = count, total, outer
        else:  # in place, so that a captured decoding step accumulates into the same tensors on replay
            self.count.add_(count)
            self.total.add_(total)
            self.outer.add_(outer)

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """μ (B, H, d) and Σ (B, H, d, d)."""
        count = self.count.clamp_min(1.0)[:, None, None]
        mean = self.total / count
        covariance = self.outer / count[..., None] - mean[..., :, None] * mean[..., None, :]
        return mean, covariance
