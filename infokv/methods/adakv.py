"""AdaKV (Feng et al. 2024, arXiv:2407.11550): one budget per layer, shared out over its KV heads by score.

A scoring method ``press`` (SnapKV by default) scores every entry; a layer whose rows keep n entries per
KV head under a uniform budget keeps H·n entries in all, the H·n best over all of its H KV heads:

    K = top_{H·n} { s̃_{h,i} },   s̃_{h,i} = +inf for the ⌊α·n⌋ best entries of every head (at least one
                                           when α > 0) and for forced entries, s_{h,i} otherwise,

with s the method's head-comparable scores (:meth:`~infokv.methods.base.Method.head_scores`; SnapKV's
window attention before its per-head normalisation) and α = ``alpha_safeguard``. Head h keeps
k_h = |K ∩ head h| entries, at least ⌊α·n⌋ (its floor) and at most T; Σ_h k_h = H·n. Every head keeps
its k_h best entries (forced first), so a budget at or above the length keeps everything.

The rule is kvpress 0.5.5's ``AdaKVPress`` (``alpha_safeguard`` 0.2, ``int(n · α)`` floored, at least 1),
whose inner press forces its own tokens (SnapKV's window) by scoring them highest; here they are forced
as the inner method forces them (``sink``, ``window``, passed on to it).

Memory: kvpress keeps all T entries of every head in the cache and masks the evicted ones in attention.
Here the evicted entries leave the cache: each layer holds max_h k_h entries per KV head (the widest
head's count), and the other heads' spare slots are filler masked per (row, head)
(:class:`~infokv.hf.cache.KVState`). A layer thus holds H·max_h k_h entries: more than the H·n of a
uniform budget when the heads' shares are uneven, at most the H·T that kvpress holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from infokv.methods.base import Method
from infokv.methods.budget import Budget
from infokv.methods.scorers import SCORERS
from infokv.methods.selection import forced_mask, ranked_scores
from infokv.methods.view import LayerView, Requirement


def head_budgets(ordered: torch.Tensor, keep: torch.Tensor, alpha: float) -> torch.Tensor:
    """Entries kept per (row, head) (B, H) by the rule of the module docstring.

    ``ordered`` (B, H, T) holds each head's scores in decreasing order (+inf forced, −inf padding) and
    ``keep`` (B,) the uniform per-head count n. Ties between heads go to the lower head index.
    """
    batch, heads, length = ordered.shape
    floor = (keep.double() * alpha).floor().long()
    if alpha > 0:
        floor = torch.where(keep > 0, floor.clamp_min(1), floor)
    slot = torch.arange(length, device=ordered.device)
    guarded = ordered.masked_fill(slot < floor[:, None, None], float("inf"))
    # Each head's scores decrease along its slots, so the layer's best H·n entries are a prefix of every
    # head; a stable sort over the flattened (head, slot) order takes a head's tied slots in order.
    order = guarded.reshape(batch, heads * length).argsort(dim=-1, descending=True, stable=True)
    chosen = torch.arange(heads * length, device=ordered.device) < (keep * heads)[:, None]
    return torch.zeros(batch, heads, dtype=torch.long, device=ordered.device).scatter_add_(
        1, torch.div(order, length, rounding_mode="floor"), chosen.long()
    )


@dataclass(frozen=True)
class AdaKV(Method):
    """Head-wise budgets over the scores of method ``press`` (by name, with its default parameters but
    ``sink``, ``window`` and ``layer_budget``, which are passed on to it: the defaults are SnapKV's, and
    ``layer_budget=pyramid`` gives per-layer budgets shared out over each layer's heads)."""

    name = "adakv"
    phases = ("prefill",)
    head_wise: ClassVar[bool] = True
    sink: int = 0
    window: int = 64
    press: str = "snapkv"
    alpha_safeguard: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha_safeguard <= 1.0:
            raise ValueError(f"adakv: alpha_safeguard={self.alpha_safeguard} must be in [0, 1]")
        if self.press not in SCORERS:
            raise ValueError(
                f"adakv: press {self.press!r} is not a method that scores a prefill per head; "
                f"use one of {list(SCORERS)}"
            )

    @property
    def inner(self) -> Method:
        """The scoring method, with this method's ``sink``, ``window`` and ``layer_budget``."""
        return SCORERS[self.press](sink=self.sink, window=self.window, layer_budget=self.layer_budget)

    def requirements(self) -> set[Requirement]:
        return self.inner.requirements()

    def keep_counts(self, budget: Budget, lengths: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """The inner method's per-head counts n: a layer keeps H·n entries over its heads."""
        return self.inner.keep_counts(budget, lengths, layers)

    def score(self, view: LayerView) -> torch.Tensor:
        return self.inner.head_scores(view)

    def head_keeps(self, view: LayerView, keep: torch.Tensor) -> torch.Tensor:
        forced = forced_mask(view.valid, self.sink, self.window)
        ranked = ranked_scores(self.score(view), view.valid, forced)
        ordered = ranked.sort(dim=-1, descending=True, stable=True).values
        return head_budgets(ordered, keep, self.alpha_safeguard)

    def label(self) -> str:
        return self.name if self.press == "snapkv" else f"{self.name}-{self.press}"
