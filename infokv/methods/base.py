"""The interface every compression method implements."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from infokv.methods.budget import LAYER_BUDGETS, Budget, layer_schedule
from infokv.methods.view import LayerView, Requirement


@dataclass(frozen=True)
class Method:
    """A KV-cache compression method: scores per layer and KV head, then a top-budget selection.

    ``sink`` first tokens and the last ``window`` tokens are always kept and count toward the budget, which
    keeps ⌊T·b⌋ tokens of a T-token prompt (kvpress's rule, :mod:`infokv.methods.budget`).
    """

    name: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    head_wise: ClassVar[bool] = False
    """Whether the KV heads of a layer keep different numbers of entries (:meth:`head_keeps`)."""
    sink: int = 4
    window: int = 32
    layer_budget: str = "uniform"

    def __post_init__(self) -> None:
        if self.sink < 0 or self.window < 0:
            raise ValueError(f"{self.name}: sink={self.sink} and window={self.window} must be >= 0")
        if self.layer_budget not in LAYER_BUDGETS:
            raise ValueError(f"{self.name}: layer_budget {self.layer_budget!r} is not one of {LAYER_BUDGETS}")

    @property
    def floor(self) -> int:
        """Tokens always kept: ``sink + window``."""
        return self.sink + self.window

    @property
    def evicts(self) -> bool:
        return True

    def requirements(self) -> set[Requirement]:
        """Signals the capture pass must collect for this method."""
        return set()

    def keep_counts(self, budget: Budget, lengths: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """Tokens to keep per layer, per row: list of L tensors (B,)."""
        keep = budget.per_row(lengths, self.floor)
        share = budget.share(lengths)
        schedule = self.layer_schedule(share, lengths, layers)
        # A budget at or above a row's length evicts nothing from that row, whatever the schedule.
        whole = keep >= lengths
        return [
            torch.where(whole, lengths, torch.minimum(counts.clamp_min(self.floor), lengths))
            for counts in schedule
        ]

    def layer_schedule(self, share: torch.Tensor, lengths: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """Per-layer keep counts (L tensors (B,)) of schedule ``layer_budget`` from each row's share."""
        return layer_schedule(self.layer_budget, share, lengths, layers, self.window)

    def decode_target(self, count: int, ratio: float, floor: int) -> int:
        """Entries kept of ``count`` tokens at a decoding compression: ⌈ratio · count⌉, at least ``floor``."""
        return max(math.ceil(count * ratio), floor)

    def score(self, view: LayerView) -> torch.Tensor:
        """Scores (B, H_kv, T) for one layer; higher is kept first."""
        raise NotImplementedError

    def head_scores(self, view: LayerView) -> torch.Tensor:
        """Scores (B, H_kv, T) that can be compared between the KV heads of a layer (head-wise budgets,
        :mod:`infokv.methods.adakv`); the scores themselves unless a method rescales each head."""
        return self.score(view)

    def head_keeps(self, view: LayerView, keep: torch.Tensor) -> torch.Tensor:
        """Entries kept per (row, KV head) (B, H_kv) of a layer whose rows keep ``keep`` (B,) per head on
        average: ``keep`` in every head, unless the method distributes a layer's budget over its heads."""
        return keep[:, None].expand(-1, view.keys.shape[1])

    def params(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return self.name
