"""KV budgets: a ratio of the prompt or a token count, turned into per-layer, per-row keep counts.

Schedules over layers l = 0..L−1 for a per-layer budget b (window w always kept):

* ``uniform``: b_l = b.
* ``pyramid`` (PyramidKV, β = 20): the part above the window, b' = b − w, is spread linearly from
  b'_max at the first layer down to b'_min = b'/β at the last, with b'_max = 2b' − b'_min so the
  total over layers is unchanged: b_l = w + b'_max − l (b'_max − b'_min)/(L − 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYER_BUDGETS = ("uniform", "pyramid")


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

    def per_row(self, lengths: torch.Tensor, floor: int) -> torch.Tensor:
        """Tokens to keep per row (B,), given each row's length: at least ``floor``, at most the length."""
        if self.ratio is not None:
            wanted = torch.ceil(lengths.double() * self.ratio).long()
        else:
            wanted = torch.full_like(lengths, self.tokens)
        return torch.minimum(wanted.clamp_min(floor), lengths)


def layer_schedule(
    kind: str, keep: torch.Tensor, layers: int, window: int, beta: float = 20.0
) -> list[torch.Tensor]:
    """Per-layer keep counts (list of (B,)) from per-row counts ``keep`` (B,) by schedule ``kind``."""
    if kind == "uniform":
        return [keep.clone() for _ in range(layers)]
    if kind == "pyramid":
        above = (keep - window).clamp_min(0).double()
        smallest = above / beta
        largest = 2 * above - smallest
        step = (largest - smallest) / max(1, layers - 1)
        return [(window + torch.round(largest - index * step)).long() for index in range(layers)]
    raise ValueError(f"layer_budget {kind!r} is not one of {LAYER_BUDGETS}")
