"""KV budgets: a ratio of the prompt or a token count, turned into per-layer, per-row keep counts.

A ratio b keeps ⌊T·(1 − r)⌋ of T tokens with r = 1 − b evaluated in floating point, exactly as kvpress
0.5.5 (``compute_n_kept``) keeps ``int(T * (1 - compression_ratio))`` for ``compression_ratio = 1 - b``;
a token budget keeps that many tokens. Either is then at least the method's always-kept tokens and at
most T. Schedules over layers l = 0..L−1 for a per-row share s = T·(1 − r) (or the token count), window
w and the layer-0..L−1 budgets b_l:

* ``uniform``: b_l = ⌊s⌋.
* ``pyramid`` (kvpress 0.5.5's ``PyramidKVPress``, β = 20; the window counts inside each layer's budget):
  b_min = s/β, b_max = 2s − b_min; if b_max ≥ T − w then b_max = T − w, b_min = 2s − b_max. Unless
  T ≥ b_max ≥ b_min ≥ w (i.e. roughly s ≥ β·w) every layer falls back to round(s), uniform SnapKV;
  otherwise b_l = round(b_max − l (b_max − b_min)/(L − 1)). Rounding is half to even, as Python's.
* ``pyramid_original`` (PyramidKV's own code, KVCache-Factory ``pyramidkv_utils``; the window on top of
  each layer's budget): with c = ⌊s⌋ − w the budget above the window, m = ⌊c/β⌋, M = 2c − m (or, if
  M ≥ T − w, M = T − w and m = 2c − M), steps ⌊(M − m)/(L − 1)⌋: b_l = w + M − l·steps; prompts shorter
  than 2c keep ⌊s⌋ in every layer, as that code's uniform branch does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYER_BUDGETS = ("uniform", "pyramid", "pyramid_original")


@dataclass(frozen=True)
class Budget:
    """A KV budget: ``ratio`` of each prompt (0 < r ≤ 1) or a fixed number of ``tokens``."""

    ratio: float | None = None
    tokens: int | None = None

    @classmethod
    def parse(cls, value: float | int | str | Budget) -> Budget:
        """0.2, "20%" and "0.2" are ratios; 512 and "512" are token counts."""
        if isinstance(value, Budget):
            return value
        text = str(value).strip()
        try:
            if text.endswith("%"):
                number: float = float(text[:-1]) / 100.0
                return cls._from_ratio(number)
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int) or text.isdigit():
                return cls._from_tokens(int(text))
            return cls._from_ratio(float(text))
        except ValueError:
            raise ValueError(
                f"budget {value!r} is not allowed; use a ratio 0 < r <= 1 (e.g. 0.2 or '20%') "
                "or a token count >= sink + window (e.g. 512)"
            ) from None

    @classmethod
    def _from_ratio(cls, ratio: float) -> Budget:
        if not 0.0 < ratio <= 1.0:
            raise ValueError
        return cls(ratio=ratio)

    @classmethod
    def _from_tokens(cls, tokens: int) -> Budget:
        if tokens < 1:
            raise ValueError
        return cls(tokens=tokens)

    def check_floor(self, floor: int) -> None:
        """A token budget must keep at least the always-kept ``floor`` = sink + window tokens."""
        if self.tokens is not None and self.tokens < floor:
            raise ValueError(f"budget {self.tokens} tokens is below sink + window = {floor}; use >= {floor}")

    def label(self) -> str:
        return f"{self.ratio:g}" if self.ratio is not None else str(self.tokens)

    def share(self, lengths: torch.Tensor) -> torch.Tensor:
        """Unrounded tokens to keep per row (B,) in float64: T·(1 − (1 − b)) for a ratio b, as kvpress's
        ``T * (1 - compression_ratio)`` gives it, or the token count."""
        if self.ratio is not None:
            return lengths.double() * (1.0 - (1.0 - self.ratio))
        return torch.full_like(lengths, self.tokens, dtype=torch.float64)

    def per_row(self, lengths: torch.Tensor, floor: int) -> torch.Tensor:
        """Tokens to keep per row (B,): ⌊share⌋, at least ``floor`` and 1, at most the length."""
        wanted = self.share(lengths).floor().long()
        return torch.minimum(wanted.clamp_min(max(1, floor)), lengths)


def layer_schedule(
    kind: str,
    share: torch.Tensor,
    lengths: torch.Tensor,
    layers: int,
    window: int,
    beta: float = 20.0,
) -> list[torch.Tensor]:
    """Per-layer keep counts (list of L (B,) tensors) by schedule ``kind`` from each row's unrounded share
    (:meth:`Budget.share`) and length; the caller bounds them by the always-kept tokens and the length."""
    if kind == "uniform":
        keep = share.floor().long()
        return [keep.clone() for _ in range(layers)]
    if kind == "pyramid":
        return _pyramid(share, lengths.double(), layers, window, beta)
    if kind == "pyramid_original":
        return _pyramid_original(share.floor().long(), lengths, layers, window, beta)
    raise ValueError(f"layer_budget {kind!r} is not one of {LAYER_BUDGETS}")


def _pyramid(
    share: torch.Tensor, lengths: torch.Tensor, layers: int, window: int, beta: float
) -> list[torch.Tensor]:
    """kvpress's pyramid (module docstring), in the same float64 operations so that rounding agrees."""
    capacity = window + share
    smallest = (capacity - window) / beta
    largest = (capacity - window) * 2 - smallest
    capped = largest >= lengths - window
    largest = torch.where(capped, lengths - window, largest)
    smallest = torch.where(capped, (capacity - window) * 2 - largest, smallest)
    engaged = (lengths >= largest) & (largest >= smallest) & (smallest >= window)
    fallback = share.round().clamp_min(1.0)
    step = (largest - smallest) / (layers - 1) if layers > 1 else torch.zeros_like(largest)
    return [
        torch.where(engaged, (largest - index * step).round(), fallback).long() for index in range(layers)
    ]


def _pyramid_original(
    keep: torch.Tensor, lengths: torch.Tensor, layers: int, window: int, beta: float
) -> list[torch.Tensor]:
    """PyramidKV's own schedule (module docstring): integer steps, the window added to every layer."""
    above = (keep - window).clamp_min(0)
    smallest = torch.div(above, beta, rounding_mode="floor").long()
    largest = above * 2 - smallest
    capped = largest >= lengths - window
    largest = torch.where(capped, lengths - window, largest)
    smallest = torch.where(capped, above * 2 - largest, smallest)
    step = torch.div(largest - smallest, max(1, layers - 1), rounding_mode="floor")
    short = lengths < above * 2
    return [torch.where(short, keep, window + largest - index * step) for index in range(layers)]
