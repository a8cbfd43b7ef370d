"""Signals gathered incrementally while decoding, kept aligned with the cache entries.

Each cache entry (row r, layer l, KV head h, slot k) carries its token's true position, the
entropy of the distribution that produced it and of the one at its position, its representation
evolution D^(l) (computed in the step that fed it), and — for H2O — the attention it received
from every decoding query. Compression gathers these with the same indices as the keys, so
nothing is ever recomputed over the whole history.

Between compressions the tracker can switch to fixed-shape recording (:meth:`DecodeTracker.fix_shapes`),
as the cache does for CUDA-graph steps: every per-entry tensor gets room for the steps ahead, step s
writes slot ``length + s`` (``s`` a device scalar), window queries go round a ring of ``window`` slots, and
accumulators are updated in place, so a tracked step can be captured once and replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from infokv import signals
from infokv.engine.capture import Captured
from infokv.methods.base import Requirement
from infokv.signals.attention import new_query_column_sums
from infokv.signals.entropy import align_to_tokens, topk_entropy
from infokv.signals.evolution import distance_to_unit, unit
from infokv.signals.query_statistics import QueryStatistics


@dataclass
class LayerEntries:
    """Per-entry signals of one layer: (R, H_kv, K) tensors, cumulative attention per query head."""

    positions: torch.Tensor
    producing: dict[int, torch.Tensor] = field(default_factory=dict)
    next: dict[int, torch.Tensor] = field(default_factory=dict)
    evolution: torch.Tensor | None = None
    cumulative: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    statistics: QueryStatistics | None = None

    def rows(self, selected: torch.Tensor | slice) -> LayerEntries:
        """The entries of some batch rows (a view when ``selected`` is a slice)."""

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[selected]

        statistics = None
        if self.statistics is not None:
            statistics = QueryStatistics()
            statistics.count = pick(self.statistics.count)
            statistics.total = pick(self.statistics.total)
            statistics.outer = pick(self.statistics.outer)
        return LayerEntries(
            positions=self.positions[selected],
            producing={k: v[selected] for k, v in self.producing.items()},
            next={k: v[selected] for k, v in self.next.items()},
            evolution=pick(self.evolution),
            cumulative=pick(self.cumulative),
            queries=pick(self.queries),
            statistics=statistics,
        )

    def map_entries(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace each tensor indexed by entry along its last dimension (positions, entropies, evolution,
        cumulative attention) by ``function`` of it."""
        self.positions = function(self.positions)
        self.producing = {k: function(v) for k, v in self.producing.items()}
        self.next = {k: function(v) for k, v in self.next.items()}
        if self.evolution is not None:
            self.evolution = function(self.evolution)
        if self.cumulative is not None:
            self.cumulative = function(self.cumulative)

    def gather(self, rows: torch.Tensor, indices: torch.Tensor) -> LayerEntries:
        """Rows ``rows`` and per-head entries ``indices`` (R', H_kv, K')."""

        selected = self.rows(rows)
        groups = 1 if selected.cumulative is None else selected.cumulative.shape[1] // indices.shape[1]

        def per_kv(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.gather(-1, indices)

        selected.positions = per_kv(selected.positions)
        selected.producing = {k: per_kv(v) for k, v in selected.producing.items()}
        selected.next = {k: per_kv(v) for k, v in selected.next.items()}
        selected.evolution = per_kv(selected.evolution)
        if selected.cumulative is not None:
            selected.cumulative = selected.cumulative.gather(-1, indices.repeat_interleave(groups, dim=1))
        return selected


@dataclass
class FixedSlots:
    """Fixed-shape recording for up to ``steps`` steps counted by the device scalar ``step``: layer l's
    entry fed at step s goes to slot ``lengths[l] + s``; its query to slot ``(held + s) mod window`` of the
    ring ``queries[l]``, whose first ``held`` slots hold the window queries kept before the steps. A ring
    of ``window`` slots, not ``window + steps``: the queries are a small share of the cache's memory."""

    steps: int
    step: torch.Tensor
    lengths: list[int]
    held: int
    window: int
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    slots: torch.Tensor | None = None
    """(L + 1,) this step's slot in every layer, then its window-query slot (:meth:`begin_step`)."""
    offsets: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        # Made here, not in a captured step (a host-to-device copy cannot be captured).
        self.offsets = torch.tensor([*self.lengths, self.held], device=self.step.device)

    def begin_step(self) -> None:
        """Compute this step's slots from ``step``: one kernel, not one per layer."""
        self.slots = self.step + self.offsets

    def slot(self, layer: int) -> torch.Tensor:
        return self.slots[layer : layer + 1]

    def query_slot(self) -> torch.Tensor:
        return self.slots[-1:] % self.window

    def window_queries(self, layer: int, steps: int) -> torch.Tensor:
        """Layer ``layer``'s last window queries after ``steps`` steps, oldest first (R, H_q, ≤ window, d)."""
        ring, written = self.queries[layer], self.held + steps
        if written <= self.window:
            return ring[:, :, :written]
        return ring.roll(-(written % self.window), dims=2)


class DecodeTracker:
    """Appends one entry's signals per decoding step; hooks are the callbacks of :mod:`infokv.hf.hooks`."""

    def __init__(self, requirements: set[Requirement], layers: list[LayerEntries], scaling: float) -> None:
        kinds = {requirement[0] for requirement in requirements}
        windows = [r[1] for r in requirements if r[0] == signals.WINDOW_QUERIES]
        self.window = max(windows, default=0)
        self.topks = sorted({r[1] for r in requirements if r[0] == signals.ENTROPY})
        self.evolution = signals.EVOLUTION in kinds
        self.cumulative = signals.CUMULATIVE_ATTENTION in kinds
        self.query_statistics = signals.QUERY_STATISTICS in kinds
        self.layers = layers
        self.scaling = scaling
        self.outputs: dict[int, torch.Tensor] = {}
        self.valid: torch.Tensor | None = None
        self.fixed: FixedSlots | None = None

    @property
    def needs_attention(self) -> bool:
        return self.window > 0 or self.cumulative

    @property
    def collects(self) -> bool:
        """Whether any per-step signal is collected."""
        return bool(self.needs_attention or self.topks or self.evolution or self.query_statistics)

    def on_attention(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, valid: torch.Tensor | None
    ) -> None:
        entries = self.layers[layer]
        if self.window > 0 and self.fixed is not None:
            self._buffer_query(layer, query)
        elif self.window > 0:
            buffered = query if entries.queries is None else torch.cat([entries.queries, query], dim=2)
            entries.queries = buffered[:, :, -self.window :]
        if self.cumulative:
            sums = new_query_column_sums(query, key, valid, self.scaling)
            if self.fixed is not None:
                entries.cumulative.add_(sums)
            else:
                grown = key.shape[2] - entries.cumulative.shape[-1]
                entries.cumulative = torch.nn.functional.pad(entries.cumulative, (0, grown)) + sums

    def _buffer_query(self, layer: int, query: torch.Tensor) -> None:
        """Fixed-shape mode: the step's query to its slot of the layer's ring (:class:`FixedSlots`)."""
        self.fixed.queries[layer].index_copy_(2, self.fixed.query_slot(), query)

    def on_layer_output(self, layer: int, hidden: torch.Tensor) -> None:
        self.outputs[layer] = hidden[:, -1]

    def on_queries(self, layer: int, queries: torch.Tensor) -> None:
        entries = self.layers[layer]
        if entries.statistics is None:
            entries.statistics = QueryStatistics()
        entries.statistics.add(queries, None)

    def fix_shapes(self, steps: int, step: torch.Tensor, query_heads: int, keys: torch.Tensor) -> None:
        """Fixed-shape recording for up to ``steps`` steps counted by ``step`` (:class:`FixedSlots`); window
        query buffers are shaped after the (R, H_kv, K, d) ``keys``, with ``query_heads`` heads."""
        lengths = [entries.positions.shape[-1] for entries in self.layers]
        # Every step adds a query to every layer, so every layer holds as many.
        first = self.layers[0].queries if self.layers else None
        held = 0 if first is None else first.shape[2]
        self.fixed = FixedSlots(steps, step, lengths, held, self.window)
        for layer, entries in enumerate(self.layers):
            entries.map_entries(lambda tensor: torch.nn.functional.pad(tensor, (0, steps)))
            if self.window > 0:
                rows, dim = keys.shape[0], keys.shape[-1]
                ring = keys.new_zeros(rows, query_heads, self.window, dim)
                if entries.queries is not None:
                    ring[:, :, :held] = entries.queries
                entries.queries = None
                self.fixed.queries[layer] = ring

    def checkpoint(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The accumulators a step adds into in place, each with a copy of its value now."""
        return [(tensor, tensor.clone()) for tensor in self._accumulators()]

    def rewind(self, checkpoint: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Undo the steps since ``checkpoint``: accumulators back to its values, ones made since to zero."""
        saved = {id(tensor): copy for tensor, copy in checkpoint}
        for tensor in self._accumulators():
            if id(tensor) in saved:
                tensor.copy_(saved[id(tensor)])
            else:
                tensor.zero_()

    def _accumulators(self) -> list[torch.Tensor]:
        found = []
        for entries in self.layers:
            if entries.cumulative is not None:
                found.append(entries.cumulative)
            if entries.statistics is not None and entries.statistics.total is not None:
                found += [entries.statistics.count, entries.statistics.total, entries.statistics.outer]
        return found

    def unfix_shapes(self, steps: int) -> None:
        """Back to growing records after ``steps`` fixed-shape steps, holding the entries and queries fed."""
        fixed, self.fixed = self.fixed, None
        for layer, entries in enumerate(self.layers):
            end = fixed.lengths[layer] + steps
            entries.map_entries(lambda tensor, end=end: tensor[..., :end])
            if layer in fixed.queries:
                entries.queries = fixed.window_queries(layer, steps)

    def begin_step(self) -> None:
        """Before a fixed-shape step's forward pass: where its entries go."""
        self.fixed.begin_step()

    def append(self, position: torch.Tensor, producing: torch.Tensor, next_logits: torch.Tensor) -> None:
        """Record the entry just fed at ``position`` (R,), produced by logits ``producing`` (R, V)."""
        if self.evolution:  # all layers at once: (L, R)
            final = unit(self.outputs[len(self.layers) - 1])
            outputs = torch.stack([self.outputs[index] for index in range(len(self.layers))])
            distances = distance_to_unit(outputs, final)
        produced = {topk: topk_entropy(producing, topk) for topk in self.topks}
        following = {topk: topk_entropy(next_logits, topk) for topk in self.topks}
        for index, entries in enumerate(self.layers):
            heads = entries.positions.shape[1]
            slot = None if self.fixed is None else self.fixed.slot(index)

            def record(held: torch.Tensor, values: torch.Tensor, heads: int = heads, slot=slot):
                column = values[:, None, None].expand(-1, heads, 1).to(held.dtype)
                if slot is None:
                    return torch.cat([held, column], dim=-1)
                return held.index_copy_(-1, slot, column)

            entries.positions = record(entries.positions, position)
            for topk in self.topks:
                entries.producing[topk] = record(entries.producing[topk], produced[topk])
                entries.next[topk] = record(entries.next[topk], following[topk])
            if self.evolution:
                entries.evolution = record(entries.evolution, distances[index])
        self.outputs.clear()

    def append_untracked(self, positions: torch.Tensor) -> None:
        """Entries fed without signals (a question after context-only compression): zeros, true positions."""
        for entries in self.layers:
            heads = entries.positions.shape[1]
            block = positions[:, None, :].expand(-1, heads, -1)
            zeros = torch.zeros(block.shape, device=block.device)
            entries.positions = torch.cat([entries.positions, block], dim=-1)
            for topk in self.topks:
                entries.producing[topk] = torch.cat([entries.producing[topk], zeros], dim=-1)
                entries.next[topk] = torch.cat([entries.next[topk], zeros], dim=-1)
            if self.evolution:
                entries.evolution = torch.cat([entries.evolution, zeros], dim=-1)
            if self.cumulative:
                groups = entries.cumulative.shape[1] // heads
                entries.cumulative = torch.cat(
                    [entries.cumulative, zeros.repeat_interleave(groups, 1)], dim=-1
                )


def entries_from_prefill(
    captured: Captured,
    rows: torch.Tensor,
    indices: list[torch.Tensor],
    requirements: set[Requirement],
    query_heads: int,
) -> list[LayerEntries]:
    """Per-entry signals of the compressed prompt cache, gathered from the prefill capture.

    Signals the prefill did not capture are zeros (prompt entries are only scored when
    ``compress_prompt`` is set, and then the prefill captures them).
    """
    topks = sorted({r[1] for r in requirements if r[0] == signals.ENTROPY})
    kinds = {r[0] for r in requirements}
    layers = []
    for layer, layer_indices in enumerate(indices):
        heads = layer_indices.shape[1]

        def per_token(values: torch.Tensor, layer_indices: torch.Tensor = layer_indices) -> torch.Tensor:
            return values[rows][:, None, :].expand(-1, layer_indices.shape[1], -1).gather(-1, layer_indices)

        entries = LayerEntries(positions=per_token(captured.positions))
        zeros = torch.zeros(layer_indices.shape, device=layer_indices.device)
        for topk in topks:
            if topk in captured.next_entropy:
                entropy = captured.next_entropy[topk]
                entries.producing[topk] = per_token(align_to_tokens(entropy, captured.valid, "producing"))
                entries.next[topk] = per_token(align_to_tokens(entropy, captured.valid, "next"))
            else:
                entries.producing[topk], entries.next[topk] = zeros.clone(), zeros.clone()
        if signals.EVOLUTION in kinds:
            evolution = captured.evolution
            entries.evolution = zeros.clone() if evolution is None else per_token(evolution[layer])
        if signals.CUMULATIVE_ATTENTION in kinds:
            groups = query_heads // heads
            expanded = layer_indices.repeat_interleave(groups, dim=1)
            cumulative = captured.cumulative.get(layer)
            entries.cumulative = (
                torch.zeros(expanded.shape, device=expanded.device)
                if cumulative is None
                else cumulative[rows].gather(-1, expanded)
            )
        layers.append(entries)
    return layers
