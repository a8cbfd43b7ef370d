"""KNorm (Devoto et al. 2024, arXiv:2406.11430): keys with a small L2 norm draw the most attention.

    S_i^(h) = −‖k_i^(h)‖₂

per KV head h, over the keys as cached (after RoPE, which is a rotation and leaves the norm as it is),
computed in fp32. No attention is needed.

Defaults are kvpress 0.5.5's ``KnormPress``: it scores every token and forces none, so ``sink`` 0 and
``window`` 0, and the kept count ⌊T·b⌋ of :mod:`infokv.methods.budget`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv.methods.base import Method


@dataclass(frozen=True)
class KNorm(Method):
    name = "knorm"
    phases = ("prefill",)
    sink: int = 0
    window: int = 0

    def score(self, view) -> torch.Tensor:
        return -view.keys.float().norm(dim=-1)
