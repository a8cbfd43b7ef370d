"""SnapKV (Li et al. 2024): attention of the last ``window`` queries to the keys before them, pooled.

    S_i^(h) = R_{g∈G(h)} P( Σ_{j∈window} softmax_i(q_j^(g) · k_i / √d) ),   normalised: Σ_i S_i = 1

for the keys i before the window (:func:`infokv.signals.attention.window_attention`), with P a 1-D pool
over those keys (``pooling``, ``kernel``; zero padding at the edges) and R the GQA reduction
(``reduction``). The window's own tokens are always kept and count toward the budget.

Defaults are kvpress 0.5.5's ``SnapKVPress`` (the press the paper's SnapKV baseline ran):
``window`` 64 (``window_size``), ``kernel`` 5 (``kernel_size``), ``pooling`` avg (``avg_pool1d`` with
its default ``count_include_pad``), ``reduction`` mean (its per-group mean), ``sink`` 0 (it keeps no
sinks), and the kept count ⌊T·b⌋ of :mod:`infokv.methods.budget`. The SnapKV authors' code pools with max over
kernel 7 (their LongBench settings, window 32 and up): ``pooling="max", kernel=7`` selects it; it pools
the same keys (those before the window).
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
    sink: int = 0
    window: int = 64
    kernel: int = 5
    pooling: str = "avg"
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

    def attention(self, view, normalised: bool = True) -> torch.Tensor:
        """The window attention A (B, H_kv, T), normalised to sum to 1 over the tokens before the window
        (or, without ``normalised``, the window's summed attention to them)."""
        return view.window_attention(self.window, self.pooling, self.kernel, self.reduction, normalised)

    def score(self, view) -> torch.Tensor:
        return self.attention(view)

    def head_scores(self, view) -> torch.Tensor:
        """The window's summed attention without the per-head normalisation, so a head that gives the
        tokens before the window more attention ranks them higher against other heads (kvpress's
        ``SnapKVPress`` scores, the mean over the window, are these divided by the window)."""
        return self.attention(view, normalised=False)
