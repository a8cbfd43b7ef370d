"""StreamingLLM (Xiao et al. 2024): attention sinks plus the most recent tokens.

S_i = i    (position), with the first ``sink`` tokens always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv.methods.base import Method


@dataclass(frozen=True)
class StreamingLLM(Method):
    name = "streamingllm"
    sink: int = 4
    window: int = 0

    def score(self, view) -> torch.Tensor:
        return view.positions_score()
