"""PyramidKV (Cai et al. 2024): SnapKV scores with per-layer budgets decreasing linearly over layers.

Scores as :class:`~infokv.methods.snapkv.SnapKV` (kvpress's defaults: window 64, average pool over
kernel 5, no sinks); budgets by ``layer_budget`` (:mod:`infokv.methods.budget`):

* ``pyramid`` (default, kvpress 0.5.5's ``PyramidKVPress``): the window counts inside each layer's
  budget, β = 20 (its ``beta``), and the schedule falls back to uniform SnapKV (round(T·b) per layer)
  unless its conditions hold (:mod:`infokv.methods.budget`): below 50% roughly T·b ≥ β·window, so with the
  default window of 64 a prompt keeps uniform budgets below 1280 kept tokens; from 50% on, the first
  layer's budget is capped at T − window, which leaves the last one at the window and engages it.
* ``pyramid_original``: the PyramidKV authors' schedule (KVCache-Factory), the window added on top of
  each layer's linearly decreasing budget, with integer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv.methods.budget import layer_schedule
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

    def layer_schedule(self, share: torch.Tensor, lengths: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """The base schedule with this method's ``beta`` (the pyramid's steepness bound)."""
        return layer_schedule(self.layer_budget, share, lengths, layers, self.window, self.beta)
