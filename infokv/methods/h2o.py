"""H2O (Zhang et al. 2023): heavy hitters by attention accumulated over every query, plus recent tokens.

    S_i^(h) = R_{g∈G(h)} Σ_j softmax_i(q_j^(g) · k_i / √d)

summed over all prompt queries j (blockwise, no T × T tensor), with R the reduction of the
query heads g of KV head h's GQA group; the last ``window`` tokens are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Method, Requirement
from infokv.signals.attention import REDUCTIONS


@dataclass(frozen=True)
class H2O(Method):
    name = "h2o"
    sink: int = 0
    window: int = 32
    reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"h2o: reduction {self.reduction!r} is not one of {REDUCTIONS}")

    def requirements(self) -> set[Requirement]:
        return {(signals.CUMULATIVE_ATTENTION,)}

    def score(self, view) -> torch.Tensor:
        return view.cumulative_attention(self.reduction)
