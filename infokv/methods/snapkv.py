"""SnapKV (Li et al. 2024): attention of the last ``window`` queries, pooled over positions.

    S_i^(h) = R_{g∈G(h)} P( Σ_{j∈window} softmax_i(q_j^(g) · k_i / √d) ),   normalised: Σ_i S_i = 1

with P a 1-D pool (``pooling``, ``kernel``) and R the GQA reduction (``reduction``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Method, Requirement
from infokv.signals.attention import POOLINGS, REDUCTIONS


@dataclass(frozen=True)
class SnapKV(Method):
    name = "snapkv"
    window: int = 32
    kernel: int = 7
    pooling: str = "max"
    reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"{self.name}: window={self.window} must be >= 1 (the observation queries)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{self.name}: pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}: reduction {self.reduction!r} is not one of {REDUCTIONS}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"{self.name}: kernel={self.kernel} must be an odd number >= 1")

    def requirements(self) -> set[Requirement]:
        return {(signals.WINDOW_QUERIES, self.window)}

    def attention(self, view) -> torch.Tensor:
        """The window attention A (B, H_kv, T), normalised to sum to 1 over tokens."""
        return view.window_attention(self.window, self.pooling, self.kernel, self.reduction)

    def score(self, view) -> torch.Tensor:
        return self.attention(view)
