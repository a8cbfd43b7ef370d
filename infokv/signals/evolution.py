"""Representation evolution: how far a token's residual stream at layer l is from its final one.

    D_i^(l) = 1 − cos(h_i^(l), h_i^(L)) = 1 − (h_i^(l) · u_i) / ‖h_i^(l)‖,    u_i = h_i^(L) / ‖h_i^(L)‖

with h the decoder layer outputs (before the final norm); D_i^(L) = 0. Products and norms are taken
in fp32 without fp32 copies of the (bf16) hidden states, and u is computed once for all layers.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def unit(final: torch.Tensor) -> torch.Tensor:
    """u = h / ‖h‖ in fp32: (…, hidden)."""
    final = final.float()
    return final / torch.linalg.vector_norm(final, dim=-1, keepdim=True).clamp_min(EPS)


def distance_to_unit(hidden: torch.Tensor, final_unit: torch.Tensor) -> torch.Tensor:
    """1 − (h · u) / ‖h‖ for (…, hidden) states ``hidden`` and fp32 unit vectors ``final_unit``: (…,)."""
    dot = torch.mul(hidden, final_unit).sum(dim=-1)
    norm = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float32).clamp_min(EPS)
    return 1.0 - dot / norm
