"""StreamingLLM (Xiao et al. 2024): attention sinks plus the most recent tokens.

S_i = i    (position), with the first ``sink`` tokens always kept.

Defaults are kvpress 0.5.5's ``StreamingLLMPress``: ``sink`` 4 (its ``n_sink``, also the paper's four
sink tokens), no separate window (the most recent tokens fill the rest of the ⌊T·b⌋ budget anyway).
Like that press, kept keys keep their original positions (the paper re-rotates them; kvpress needs a
``KeyRerotationPress`` for that).
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
