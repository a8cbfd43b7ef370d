"""Decoding steps of a fixed batch, captured once as a CUDA graph and replayed.

A decoding step of an 8B model launches over a thousand small kernels; launched one by one from
Python they take longer on the host than the GPU needs to run them over a compressed cache. Here
the cache is switched to fixed-shape appends (:meth:`infokv.hf.cache.KVState.fix_shapes`): step s writes
slot ``length + s`` and attention sees the whole buffer under a validity mask, so every kernel of the
step has fixed shapes and reads its varying inputs (token, position, step) from device tensors. The
step is captured once and replayed; on CPU (or ``capture=False``) the same fixed-shape step runs
eagerly, which is how its equivalence with ordinary decoding is tested.

With a :class:`~infokv.engine.decode_signals.DecodeTracker` (decoding compression, or collected signals) the
step also records each entry's signals in the tracker's fixed-shape mode; the distribution that produced
the fed token is copied into a fixed input buffer before each replay.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from infokv.engine.decode_signals import DecodeTracker
from infokv.hf.cache import KVState
from infokv.hf.forward import forward_hidden
from infokv.hf.logit_head import LogitHead


class GraphedDecoder:
    """Up to ``steps`` greedy-or-sampled steps of the rows of ``state`` at ``positions`` (R,), recording
    signals in ``tracker`` (if given) with producing distributions shaped like ``logits`` (R, V)."""

    def __init__(
        self,
        model: PreTrainedModel,
        state: KVState,
        positions: torch.Tensor,
        steps: int,
        capture: bool | None = None,
        tracker: DecodeTracker | None = None,
        logits: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.state = state
        self.steps = steps
        self.done = 0
        device = positions.device
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.tokens = torch.zeros(positions.shape[0], 1, dtype=torch.long, device=device)
        self.positions = positions.reshape(-1, 1).clone()
        self.to_logits = LogitHead.of(model)
        state.fix_shapes(steps, self.step)
        self.tracker = tracker
        self.producing = None
        if tracker is not None:
            query_heads = model.config.get_text_config(decoder=True).num_attention_heads
            tracker.fix_shapes(steps, self.step, query_heads, state.layer(0)[0])
            self.producing = torch.zeros_like(logits, dtype=torch.float)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        if capture if capture is not None else device.type == "cuda":
            self._capture()

    def _forward(self) -> torch.Tensor:
        tracker = self.tracker
        on_attention = None
        if tracker is not None:
            tracker.begin_step()
            on_attention = tracker.on_attention if tracker.needs_attention else None
        hidden = forward_hidden(self.model, self.state, self.tokens, self.positions, None, on_attention)
        logits = self.to_logits(hidden[:, -1]).float()
        if tracker is not None:
            tracker.append(self.positions[:, 0], self.producing, logits)
        self.step.add_(1)
        self.positions.add_(1)
        return logits

    def _capture(self) -> None:
        """Warm up on a side stream (as capture requires), undo the warm-up's step, then capture one step."""
        checkpoint = None if self.tracker is None else self.tracker.checkpoint()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.step.zero_()
        self.positions.sub_(1)
        self.state.rewind_fixed_steps()
        if checkpoint is not None:
            self.tracker.rewind(checkpoint)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    def __call__(self, tokens: torch.Tensor, producing: torch.Tensor | None = None) -> torch.Tensor:
        """Feed ``tokens`` (R,) at the current positions, produced by the distributions ``producing`` (R, V)
        (needed with a tracker); the next-token logits (R, V)."""
        if self.done >= self.steps:
            raise RuntimeError(f"the decoder was set up for {self.steps} steps")
        self.tokens.copy_(tokens.reshape(-1, 1))
        if self.producing is not None:
            self.producing.copy_(producing)
        self.done += 1
        if self.graph is None:
            return self._forward()
        self.graph.replay()
        return self.logits

    def release(self) -> KVState:
        """The cache, back to growing appends, holding every entry fed so far."""
        self.graph = None
        self.state.unfix_shapes(self.done)
        if self.tracker is not None:
            self.tracker.unfix_shapes(self.done)
        return self.state
