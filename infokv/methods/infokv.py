"""InfoKV: attention fused with predictive entropy and representation evolution.

For layer l, KV head h and token i, with H_i the top-k predictive entropy, D_i^(l) the cosine
distance of the token's residual stream at layer l from its final one, and A_i^(l,h) the SnapKV
window attention normalised to Σ_i A_i = 1:

    E_i^(l)   = (D_i^(l) + τ) · H_i
    S_i^(l,h) = α · A_i^(l,h) + (1 − α) · softmax_i(E^(l))_i

α = 1 reproduces SnapKV's selection exactly; α = 0 keeps the top tokens of softmax(E).

Defaults: A is :class:`~infokv.methods.snapkv.SnapKV`'s score with its defaults, which are kvpress
0.5.5's ``SnapKVPress`` (window 64, average pool of kernel 5 over the keys before the window, mean over
the GQA group, no sinks; A = 0 on the window, which is always kept); α = 0.9, τ = 1, top-256 entropy of
the distribution that produced each token are the paper's, as far as its public digests say.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Requirement
from infokv.methods.snapkv import SnapKV
from infokv.signals.entropy import POSITIONS


def combine(
    attention: torch.Tensor,
    entropy: torch.Tensor,
    evolution: torch.Tensor,
    alpha: float,
    tau: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """S (B, H_kv, T) from attention (B, H_kv, T), entropy H and evolution D of one layer.

    H and D are per token (B, T), or per cache entry (B, H_kv, T) when decoding; ``valid`` (B, T)
    excludes padding and filler from the softmax over tokens.
    """
    information = (evolution.float() + tau) * entropy.float()
    if information.ndim == 2:
        information = information[:, None, :]
    if valid is not None:
        information = information.masked_fill(~valid[:, None, :], float("-inf"))
    information = torch.nan_to_num(information.softmax(dim=-1), nan=0.0)
    return alpha * attention.float() + (1.0 - alpha) * information


@dataclass(frozen=True)
class InfoKV(SnapKV):
    name = "infokv"
    alpha: float = 0.9
    tau: float = 1.0
    entropy_topk: int = 256
    entropy_position: str = "producing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"infokv: alpha={self.alpha} must be in [0, 1]")
        if self.entropy_topk < 0:
            raise ValueError(f"infokv: entropy_topk={self.entropy_topk} must be >= 0 (0 = full vocabulary)")
        if self.entropy_position not in POSITIONS:
            raise ValueError(f"infokv: entropy_position {self.entropy_position!r} is not one of {POSITIONS}")

    def requirements(self) -> set[Requirement]:
        return super().requirements() | {(signals.ENTROPY, self.entropy_topk), (signals.EVOLUTION,)}

    def score(self, view) -> torch.Tensor:
        entropy = view.entropy(self.entropy_topk, self.entropy_position)
        return combine(self.attention(view), entropy, view.evolution(), self.alpha, self.tau, view.valid)

    def head_scores(self, view) -> torch.Tensor:
        """S itself: both of its terms sum to 1 over the tokens in every head."""
        return self.score(view)
