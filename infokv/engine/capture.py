"""The capture pass: a chunked prefill that collects every signal the selected methods need, once.

Prefill runs in chunks of ``chunk`` tokens, so the logits needed for entropy and the per-layer
hidden states needed for representation evolution never exist for more than one chunk; attention
signals are recomputed from captured queries inside our attention function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from infokv import signals
from infokv.hf.cache import KVState
from infokv.hf.forward import attention_scaling, forward_hidden, rotary_function
from infokv.hf.hooks import (
    decoder_layers,
    layer_output_hooks,
    prerope_query_hooks,
)
from infokv.hf.logit_head import LogitHead
from infokv.kernels import fused_attention
from infokv.methods.base import Requirement
from infokv.signals.attention import blockwise_attention
from infokv.signals.evolution import distance_to_unit, unit
from infokv.signals.query_statistics import QueryStatistics


@dataclass
class Captured:
    """Signals of one prefilled batch (B rows, T tokens, L layers)."""

    valid: torch.Tensor
    positions: torch.Tensor
    scaling: float
    host_lengths: torch.Tensor
    """(B,) valid tokens per row, on the host: reading counts from the device would wait for its queue."""
    rotary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    window_queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    cumulative: dict[int, torch.Tensor] = field(default_factory=dict)
    next_entropy: dict[int, torch.Tensor] = field(default_factory=dict)
    evolution: torch.Tensor | None = None
    query_statistics: dict[tuple[int, int], QueryStatistics] = field(default_factory=dict)
    """Per (layer, s): statistics of the queries after each row's first s valid tokens."""

    @property
    def lengths(self) -> torch.Tensor:
        return self.valid.sum(dim=-1)

    @property
    def padded(self) -> bool:
        """Whether any row has padding."""
        return bool((self.host_lengths < self.valid.shape[-1]).any())


class Capturer:
    """Callbacks that fill a :class:`Captured` during a chunked prefill."""

    def __init__(
        self, captured: Captured, requirements: set[Requirement], layers: int, entropy_rows: int
    ) -> None:
        self.captured = captured
        self.layers = layers
        kinds = {requirement[0] for requirement in requirements}
        windows = [requirement[1] for requirement in requirements if requirement[0] == signals.WINDOW_QUERIES]
        self.window = max(windows, default=0)
        self.topks = sorted(
            {requirement[1] for requirement in requirements if requirement[0] == signals.ENTROPY}
        )
        self.cumulative = signals.CUMULATIVE_ATTENTION in kinds
        self.evolution = signals.EVOLUTION in kinds
        self.statistics_skips = sorted(
            {requirement[1] if len(requirement) > 1 else 0 for requirement in requirements
             if requirement[0] == signals.QUERY_STATISTICS}
        )
        self.query_statistics = bool(self.statistics_skips)
        self.chunk_valid: torch.Tensor | None = None
        self.chunk_positions: torch.Tensor | None = None
        self.layer_outputs: dict[int, torch.Tensor] = {}
        self.entropy_rows = entropy_rows
        """Positions whose logits exist at once (see :func:`entropy_rows`)."""

    @property
    def needs_attention(self) -> bool:
        return self.window > 0

    def on_attention(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None
    ) -> None:
        total = self.captured.valid.shape[-1]
        first = key.shape[2] - query.shape[2]
        if self.window > 0:
            skip = max(0, total - self.window - first)
            if skip < query.shape[2]:
                # A copy, not a view: a view would keep the whole chunk's queries alive.
                self.captured.window_queries.setdefault(layer, []).append(query[:, :, skip:].clone())

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, valid, scaling: float
    ) -> torch.Tensor:
        """The attention output, accumulating H2O's column sums from the same probabilities."""
        if valid is None and fused_attention.available(query):
            output, sums = fused_attention.attention_with_column_sums(query, key, value, scaling)
        else:
            output, sums = blockwise_attention(query, key, value, valid, scaling)
        if layer not in self.captured.cumulative:
            total = self.captured.valid.shape[-1]
            self.captured.cumulative[layer] = torch.zeros(*sums.shape[:2], total, device=sums.device)
        self.captured.cumulative[layer][..., : key.shape[2]] += sums
        return output

    def on_queries(self, layer: int, queries: torch.Tensor) -> None:
        for skip in self.statistics_skips:
            statistics = self.captured.query_statistics.setdefault((layer, skip), QueryStatistics())
            counted = self.chunk_valid
            if skip > 0:  # padding has position 0, so it is left out here too
                counted = self.chunk_positions >= skip
            statistics.add(queries, counted)

    def on_layer_output(self, layer: int, hidden: torch.Tensor) -> None:
        self.layer_outputs[layer] = hidden.detach()

    def finish_chunk(self, start: int, final_hidden: torch.Tensor, head: LogitHead) -> None:
        """Evolution, then entropy (once the layer outputs are freed), for the chunk starting at ``start``."""
        batch, total = self.captured.valid.shape
        stop = start + final_hidden.shape[1]
        if self.evolution:
            if self.captured.evolution is None:
                self.captured.evolution = torch.zeros(
                    self.layers, batch, total, device=self.captured.valid.device
                )
            last = unit(self.layer_outputs[self.layers - 1])
            for layer, hidden in self.layer_outputs.items():
                distance = distance_to_unit(hidden, last)
                self.captured.evolution[layer, :, start:stop] = distance.to(self.captured.evolution.device)
        self.layer_outputs.clear()
        for topk in self.topks:
            entropy = self.captured.next_entropy.setdefault(
                topk, torch.zeros(batch, total, device=self.captured.valid.device)
            )
            rows = self.entropy_rows
            entropy[:, start:stop] = head.entropy(final_hidden, topk, rows).to(entropy.device)


EVOLUTION_BUFFER_BYTES = 1 << 30
"""Representation evolution keeps every layer's residual stream of a chunk until the last layer has run
(L × chunk × hidden values); prefill chunks shrink so that this buffer stays within 1 GiB: 4096
tokens of Llama-3.1-8B in bf16 (the default chunk, so InfoKV prefills in the same chunks as the other
methods there), a quarter of its 32K-token KV cache. Half of it would mean 2048-token chunks, whose
smaller kernels make InfoKV's prefill measurably slower."""


ENTROPY_LOGITS_BYTES = 512 << 20
"""Entropy's logits are computed for as many positions at a time as fit in 512 MiB (2093 positions of
Llama-3.1-8B's 128K vocabulary in bf16): fewer, larger top-k calls are faster. They exist only after
the chunk's evolution buffer is freed, so they do not raise the prefill's peak where that is larger."""


def entropy_rows(model: PreTrainedModel) -> int:
    """Positions per logits block of the entropy signal (:data:`ENTROPY_LOGITS_BYTES`)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return max(1, ENTROPY_LOGITS_BYTES // (vocab * model.dtype.itemsize))


def evolution_chunk(model: PreTrainedModel, batch: int, chunk: int) -> int:
    """The largest prefill chunk ≤ ``chunk`` whose evolution buffer fits in :data:`EVOLUTION_BUFFER_BYTES`."""
    config = model.config.get_text_config(decoder=True)
    per_token = batch * config.num_hidden_layers * config.hidden_size * model.dtype.itemsize
    return max(1, min(chunk, EVOLUTION_BUFFER_BYTES // per_token))


def prefill(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    valid: torch.Tensor,
    requirements: set[Requirement],
    chunk: int = 4096,
) -> tuple[KVState, Captured, torch.Tensor]:
    """Prefill left-padded ``input_ids`` (B, T) in chunks, capturing the required signals.

    Returns the full cache, the captured signals and the logits (B, V) at the last position.
    """
    total = input_ids.shape[1]
    positions = (valid.long().cumsum(dim=-1) - 1).clamp_min(0)
    layers = len(decoder_layers(model))
    # Read before any work is queued, so compressing the cache never waits for the prefill to finish.
    host_lengths = valid.sum(dim=-1).cpu()
    captured = Captured(valid, positions, attention_scaling(model), host_lengths)
    captured.rotary = rotary_function(model)
    capturer = Capturer(captured, requirements, layers, entropy_rows(model))
    if capturer.evolution:
        chunk = evolution_chunk(model, input_ids.shape[0], chunk)
    state = KVState.empty(model)
    head = LogitHead.of(model)
    has_padding = captured.padded
    on_attention = capturer.on_attention if capturer.needs_attention else None
    hidden = None
    with torch.inference_mode(), contextlib.ExitStack() as hooks:
        if capturer.evolution:
            hooks.enter_context(layer_output_hooks(model, capturer.on_layer_output))
        if capturer.query_statistics:
            hooks.enter_context(prerope_query_hooks(model, capturer.on_queries))
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            capturer.chunk_valid = valid[:, start:stop] if has_padding else None
            capturer.chunk_positions = positions[:, start:stop]
            hidden = forward_hidden(
                model,
                state,
                input_ids[:, start:stop],
                positions[:, start:stop],
                capturer.chunk_valid,
                on_attention,
                attend=capturer.attend if capturer.cumulative else None,
            )
            capturer.finish_chunk(start, hidden, head)
        last_logits = head(hidden[:, -1]).float()
    return state, captured, last_logits
