"""Full cache: no eviction (the reference every method is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv.methods.base import Method
from infokv.methods.budget import Budget


@dataclass(frozen=True)
class Full(Method):
    """Keeps every prompt token; the budget is ignored."""

    name = "full"
    sink: int = 0
    window: int = 0

    @property
    def evicts(self) -> bool:
        return False

    def keep_counts(self, budget: Budget, lengths: torch.Tensor, layers: int) -> list[torch.Tensor]:
        return [lengths.clone() for _ in range(layers)]

    def score(self, view) -> torch.Tensor:
        return view.positions_score()
