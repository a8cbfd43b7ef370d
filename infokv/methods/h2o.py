"""H2O (Zhang et al. 2023): heavy hitters by attention accumulated over every query, plus recent tokens.

    S_i^(h) = R_{g∈G(h)} Σ_j softmax_i(q_j^(g) · k_i / √d)

summed over all prompt queries j (blockwise, no T × T tensor), with R the reduction of the
query heads g of KV head h's GQA group; the last ``window`` tokens are always kept.

kvpress 0.5.5 has no H2O press; its nearest, ``ObservedAttentionPress``, scores by the eager attention
weights of every query and differs from ours in three ways, each a choice made here:

* Normalisation: it divides each key's sum by the number of queries that see it, T − i, an average
  attention; H2O's paper and code accumulate the plain sum, which favours early keys (they are seen by
  more queries), and so do we.
* Recent window: it keeps none; H2O keeps a recent window beside its heavy hitters (half of the budget
  each in the paper's experiments); ours keeps a fixed ``window`` of 32 inside the budget and gives the
  rest to the heavy hitters, like the other methods here.
* GQA: it averages the query heads of a group after the sums (as ``reduction="mean"`` does here); the
  paper's models had one query head per KV head, so the paper has no reduction to follow.

Both have no sinks (``sink`` 0); both need the attention of every query: kvpress from eager attention
weights (a T × T tensor per layer), ours accumulated from the same fp32 probabilities as the prefill's
own attention output (:func:`infokv.signals.attention.blockwise_attention`). While decoding, each new
query's attention is added to the sums, as H2O's decoding-time eviction does.
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
