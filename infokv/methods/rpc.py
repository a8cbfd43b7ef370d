"""RPC, Reasoning Path Compression (Song et al. 2025), for the decoding scenario.

Every P generated tokens the cache is scored by the attention of the last R generated queries
(the selector window):

    S_i^(h) = R_{g∈G(h)} P( Σ_{j∈selector} softmax_i(q_j^(g) · k_i / √d) )

and the top ⌈generated / c⌉ generated tokens are kept *plus* the selector window (c = 1 / ratio:
4 for 25%, 8 for 12.5%). Unlike SnapKV's budget, the selector window is on top of the budget.

Defaults follow the authors' code (jiwonsong-dev/ReasoningPathCompression, ``rpc_utils``): R = 32
(``window``), an average pool of kernel 7 with zero padding (``pooling``, ``kernel``), P =
``compress_every`` and c from the decoding ratio; the prompt is kept whole. Where ours differs, and why:

* GQA: their default aggregation ("all") averages the scores of every query head of the layer, so all
  KV heads keep the same tokens; ours keeps per-KV-head selections (mean over each GQA group, their
  "group" option), as every other method here does, so that the cache stays per-head like theirs does
  under "group".
* Softmax domain: theirs normalises each selector's attention over the generated keys before the
  selector window only (the prompt and the window are always kept); ours is the selector's attention
  over every cached key (prompt and generated), as SnapKV's window attention, and pools over the keys
  before the window. Scaling a selector's row by a constant changes the sum over selectors only when
  selectors pay different shares to the prompt, so the two rank alike when that share is steady.
* No sinks (``sink`` 0), as theirs.
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
    kernel: int = 7
    pooling: str = "avg"

    def decode_target(self, count: int, ratio: float, floor: int) -> int:
        return math.ceil(count * ratio) + self.window
