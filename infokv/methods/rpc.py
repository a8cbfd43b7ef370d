"""RPC, Reasoning Path Compression (Song et al. 2025), for the decoding scenario.

Every P generated tokens the cache is scored by the attention of the last R generated queries
(the selector window):

    S_i^(h) = R_{g∈G(h)} P( Σ_{j∈selector} softmax_i(q_j^(g) · k_i / √d) )

and the top ⌈generated / c⌉ generated tokens are kept *plus* the selector window (c = 1 / ratio:
4 for 25%, 8 for 12.5%). Unlike SnapKV's budget, the selector window is on top of the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infokv.methods.snapkv import SnapKV


@dataclass(frozen=True)
class RPC(SnapKV):
    name = "rpc"
    phases = ("decode",)
    sink: int = 0
    window: int = 32
    kernel: int = 1
    pooling: str = "none"

    def decode_target(self, count: int, ratio: float, floor: int) -> int:
        return math.ceil(count * ratio) + self.window
