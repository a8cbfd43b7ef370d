"""What a method sees when it scores one layer: the cache and the captured signals, with memoisation.

Methods in one sweep share the captured signals; derived quantities (window attention for a given
window and pooling, aligned entropy) are computed once per layer and reused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from infokv.engine.capture import Captured
from infokv.hf.cache import KVState
from infokv.signals.attention import reduce_heads, window_attention
from infokv.signals.entropy import align_to_tokens


def _computed_once(store: dict, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    if key not in store:
        store[key] = compute()
    return store[key]


class Memoised:
    """Derived signals computed once per key (``self._memo``) and shared by the methods that use them."""

    _memo: dict

    def memoised(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return _computed_once(self._memo, key, compute)


class PrefillView(Memoised):
    """Signals of layer ``layer`` of a prefilled batch; every score tensor is (B, H_kv, T).

    ``memo`` holds what is derived for this layer; ``shared`` (if given) what is the same for every
    layer (aligned entropy, forced masks), so views of all layers can compute it once."""

    def __init__(
        self, state: KVState, captured: Captured, layer: int, memo: dict, shared: dict | None = None
    ) -> None:
        self.layer = layer
        self.keys, self.values = state.layer(layer)
        self.captured = captured
        self.valid = captured.valid
        self.scaling = captured.scaling
        self._memo = memo
        self._shared = {} if shared is None else shared

    def across_layers(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once for every view sharing this one's ``shared`` store."""
        return _computed_once(self._shared, key, compute)

    def _missing(self, what: str) -> RuntimeError:
        return RuntimeError(f"{what} was not captured; the method must declare it in requirements()")

    def positions_score(self) -> torch.Tensor:
        """Scores that rank recent tokens first: the token index, per head."""
        batch, heads, length, _ = self.keys.shape
        index = torch.arange(length, device=self.keys.device, dtype=torch.float32)
        return index.expand(batch, heads, length)

    def window_attention(
        self, window: int, pooling: str, kernel: int, reduction: str, normalised: bool = True
    ) -> torch.Tensor:
        queries = self.captured.window_queries.get(self.layer)
        if queries is None:
            raise self._missing("window queries")

        def compute() -> torch.Tensor:
            stacked = torch.cat(queries, dim=2)
            valid = self._valid_or_none()
            return window_attention(
                stacked, self.keys, valid, self.scaling, window, pooling, kernel, reduction, normalised
            )

        return self.memoised(("window", self.layer, window, pooling, kernel, reduction, normalised), compute)

    def window_queries(self, window: int) -> torch.Tensor:
        queries = self.captured.window_queries.get(self.layer)
        if queries is None:
            raise self._missing("window queries")
        return torch.cat(queries, dim=2)[:, :, -window:]

    def cumulative_attention(self, reduction: str) -> torch.Tensor:
        cumulative = self.captured.cumulative.get(self.layer)
        if cumulative is None:
            raise self._missing("cumulative attention")
        return reduce_heads(cumulative, self.keys.shape[1], reduction)

    def entropy(self, topk: int, position: str) -> torch.Tensor:
        """H_i (B, T) restricted to the top ``topk`` tokens, aligned by ``position``."""
        if topk not in self.captured.next_entropy:
            raise self._missing(f"entropy (top-{topk})")
        return self.across_layers(
            ("entropy", topk, position),
            lambda: align_to_tokens(self.captured.next_entropy[topk], self._valid_or_none(), position),
        )

    def evolution(self) -> torch.Tensor:
        """D_i^(l) (B, T)."""
        if self.captured.evolution is None:
            raise self._missing("representation evolution")
        return self.captured.evolution[self.layer]

    def query_statistics(self, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and Σ of the pre-RoPE queries after each row's first ``skip`` tokens."""
        statistics = self.captured.query_statistics.get((self.layer, skip))
        if statistics is None:
            raise self._missing("query statistics")
        return statistics.mean_and_covariance()

    def future_rotation(self, positions: int) -> torch.Tensor:
        """R̄ (B, d, d): the RoPE rotation averaged over each row's next ``positions`` positions."""
        if self.captured.rotary is None:
            raise ValueError("expected_attention needs a model with rotary position embeddings")

        def compute() -> torch.Tensor:
            start = self.captured.lengths[:, None]
            future = start + torch.arange(positions, device=start.device)[None, :]
            cos, sin = self.captured.rotary(future)
            return rotation_matrix(cos.mean(dim=1), sin.mean(dim=1))

        return self.across_layers(("rotation", positions), compute)

    def _valid_or_none(self) -> torch.Tensor | None:
        return self.valid if self.captured.padded else None


def rotation_matrix(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, d, d) matrix M with M x = x·cos + rotate_half(x)·sin, rotate_half([x1, x2]) = [−x2, x1]."""
    batch, dim = cos.shape
    half = dim // 2
    swap = torch.zeros(dim, dim, device=cos.device)
    swap[torch.arange(half), torch.arange(half) + half] = -1.0
    swap[torch.arange(half) + half, torch.arange(half)] = 1.0
    return torch.diag_embed(cos) + sin[:, :, None] * swap[None]


class DecodeView(Memoised):
    """:class:`PrefillView`'s interface over a decoding cache: every signal is per entry (R, H_kv, K)."""

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        entries,
        scaling: float,
        rotary,
        next_positions: torch.Tensor,
    ) -> None:
        self.keys, self.values, self.valid = keys, values, valid
        self.entries = entries
        self.scaling = scaling
        self._rotary = rotary
        self._next_positions = next_positions
        self._memo: dict = {}

    def positions_score(self) -> torch.Tensor:
        return self.entries.positions.float()

    def window_attention(
        self, window: int, pooling: str, kernel: int, reduction: str, normalised: bool = True
    ) -> torch.Tensor:
        if self.entries.queries is None:
            raise RuntimeError("decoding window queries were not captured")
        return self.memoised(
            ("window", window, pooling, kernel, reduction, normalised),
            lambda: window_attention(
                self.entries.queries,
                self.keys,
                self.valid,
                self.scaling,
                window,
                pooling,
                kernel,
                reduction,
                normalised,
            ),
        )

    def window_queries(self, window: int) -> torch.Tensor:
        if self.entries.queries is None:
            raise RuntimeError("decoding window queries were not captured")
        return self.entries.queries[:, :, -window:]

    def cumulative_attention(self, reduction: str) -> torch.Tensor:
        return reduce_heads(self.entries.cumulative, self.keys.shape[1], reduction)

    def entropy(self, topk: int, position: str) -> torch.Tensor:
        table = self.entries.producing if position == "producing" else self.entries.next
        return table[topk]

    def evolution(self) -> torch.Tensor:
        return self.entries.evolution

    def query_statistics(self, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and Σ of the generated queries; ``skip`` (the prompt's sinks) leaves none of them out."""
        if self.entries.statistics is None:
            raise RuntimeError("decoding query statistics were not captured")
        return self.entries.statistics.mean_and_covariance()

    def future_rotation(self, positions: int) -> torch.Tensor:
        if self._rotary is None:
            raise ValueError("expected_attention needs a model with rotary position embeddings")

        def compute() -> torch.Tensor:
            start = self._next_positions[:, None]
            cos, sin = self._rotary(start + torch.arange(positions, device=start.device)[None, :])
            return rotation_matrix(cos.mean(dim=1), sin.mean(dim=1))

        return self.memoised(("rotation", positions), compute)
