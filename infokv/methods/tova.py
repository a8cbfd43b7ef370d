"""TOVA (Oren et al. 2024, arXiv:2401.06104): the attention of the last token, averaged over the heads.

    S_i = mean_{g ∈ all query heads} softmax_{i' ≤ T−1}(q_{T−1}^(g) · k_{i'} / √d)_i,    i < T − 1

the softmax running over every key the last query sees (its own included); every KV head gets the same
score S_i, so a layer keeps one set of tokens. The last token itself is always kept (``window`` 1).
Computed as :func:`infokv.signals.attention.window_attention` with a window of one query, no pooling
and the ``mean_all`` reduction (it normalises S over i < T − 1, which leaves the ranking unchanged).

Defaults are kvpress 0.5.5's ``TOVAPress``: the attention of the last query to the keys before it,
averaged over all query heads of the layer and repeated for each KV head (``reduction`` ``mean_all``),
the last token scored above every other (``window`` 1), no sinks (``sink`` 0), and the kept count ⌊T·b⌋
of :mod:`infokv.methods.budget`. The TOVA paper averages over the heads of a layer too; it evicts one
token per decoding step and does not force the last one. ``reduction="mean"`` scores each KV head by
its own GQA group instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Method, Requirement
from infokv.signals.attention import REDUCTIONS


@dataclass(frozen=True)
class TOVA(Method):
    name = "tova"
    phases = ("prefill",)
    sink: int = 0
    window: int = 1
    reduction: str = "mean_all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window != 1:
            raise ValueError(f"tova: window={self.window} must be 1 (the last token, whose query scores)")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"tova: reduction {self.reduction!r} is not one of {REDUCTIONS}")

    def requirements(self) -> set[Requirement]:
        return {(signals.WINDOW_QUERIES, 1)}

    def score(self, view) -> torch.Tensor:
        return view.window_attention(1, "none", 1, self.reduction)

    def head_scores(self, view) -> torch.Tensor:
        """The last query's attention weights as the softmax gives them, without the normalisation over
        i < T − 1 that differs between heads under ``reduction=mean``."""
        return view.window_attention(1, "none", 1, self.reduction, normalised=False)
