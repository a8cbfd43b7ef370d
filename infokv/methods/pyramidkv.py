"""PyramidKV (Cai et al. 2024): SnapKV scores with per-layer budgets decreasing linearly (β = 20).

Scores as SnapKV; budgets by the ``pyramid`` schedule of :mod:`infokv.budget`.
"""

from __future__ import annotations

from dataclasses import dataclass

from infokv.methods.snapkv import SnapKV


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    name = "pyramidkv"
    phases = ("prefill",)
    layer_budget: str = "pyramid"
    beta: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1.0:
            raise ValueError(f"pyramidkv: beta={self.beta} must be >= 1")
