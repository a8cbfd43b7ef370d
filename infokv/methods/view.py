"""What a method reads when it scores one layer: the interface the engine's views implement.

A method's ``score(view)`` sees only this: the layer's cache (``keys``, ``values``, ``valid``), the
attention scaling, and the signals the capture pass collected, each as a (B, H_kv, T) or (B, T)
tensor over the layer's tokens. The engine provides one implementation over a prefilled prompt and
one over a decoding cache (:mod:`infokv.engine.views`); methods never import the engine.
"""

from __future__ import annotations

from typing import Protocol

import torch

Requirement = tuple
"""A hashable signal request, e.g. ``("window_queries", 32)`` or ``("entropy", 256)``."""


class LayerView(Protocol):
    """One layer's cache and captured signals; every score tensor is (B, H_kv, T)."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    scaling: float

    def positions_score(self) -> torch.Tensor:
        """Scores that rank recent tokens first: the token position, per head."""
        ...

    def window_attention(
        self, window: int, pooling: str, kernel: int, reduction: str, normalised: bool = True
    ) -> torch.Tensor:
        """Attention of the last ``window`` queries to every token, pooled and reduced to KV heads, summing
        to 1 per head when ``normalised``."""
        ...

    def window_queries(self, window: int) -> torch.Tensor:
        """The last ``window`` captured queries (B, H_q, ≤ window, d), after RoPE, as the keys are."""
        ...

    def cumulative_attention(self, reduction: str) -> torch.Tensor:
        """Attention each token received from every later query, reduced to KV heads."""
        ...

    def entropy(self, topk: int, position: str) -> torch.Tensor:
        """H_i (B, T), the top-``topk`` next-token entropy aligned to tokens by ``position``."""
        ...

    def evolution(self) -> torch.Tensor:
        """D_i^(l) (B, T): how far this layer moved each token's hidden state."""
        ...

    def query_statistics(self, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and Σ of the pre-RoPE queries after each row's first ``skip`` tokens."""
        ...

    def future_rotation(self, positions: int) -> torch.Tensor:
        """R̄ (B, d, d): the RoPE rotation averaged over each row's next ``positions`` positions."""
        ...
