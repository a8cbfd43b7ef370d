"""Representation evolution: how far a token's residual stream at layer l is from its final one.

    D_i^(l) = 1 − cos(h_i^(l), h_i^(L))

with h the decoder layer outputs (before the final norm); D_i^(L) = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(hidden: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """1 − cos between (…, hidden) states, computed in fp32: (…,)."""
    return 1.0 - F.cosine_similarity(hidden.float(), final.float(), dim=-1, eps=1e-12)
