"""The generation loop, with periodic compression of the generated part of the cache.

Every ``every`` generated tokens, the rows of a group whose decoding compression is set keep
their prompt entries (all of them, unless ``compress_prompt``), their most recent ``window``
entries, and the best-scoring generated entries up to ``⌈ratio · generated⌉`` (the method's
``decode_target``). Between compressions the cache grows by one entry per step, so it never
holds more than prompt + target + ``every`` entries per head. A compression rewrites the cache in place,
one layer at a time (:meth:`~infokv.hf.cache.KVState.compact`), into buffers with room for exactly the
entries fed until the next compression, so memory follows the compressed cache: at most one layer of the
old cache lives beside the new one, and nothing keeps the cache from before. Rows that stop idle in the batch
(their tokens are discarded) until they are half of it, then leave it together: each departure
copies the whole cache, which costs more than decoding a few idle rows. On CUDA the steps between
compressions replay captured graphs (:mod:`infokv.engine.graphed_decode`), recording each entry's signals in
fixed-shape slots; there finished rows idle until every row is done.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from infokv import methods
from infokv.engine.config_values import boolean
from infokv.engine.decode_signals import DecodeTracker, LayerEntries
from infokv.engine.graphed_decode import GraphedDecoder
from infokv.engine.sampling import Sampler
from infokv.engine.views import DecodeView
from infokv.hf.cache import KVState
from infokv.hf.forward import forward_hidden, rotary_function
from infokv.hf.hooks import layer_output_hooks, prerope_query_hooks
from infokv.hf.logit_head import LogitHead
from infokv.methods.base import Method
from infokv.methods.selection import Selection, combine_groups, forced_mask, select


@dataclass(frozen=True)
class DecodeCompression:
    """Compress the generated cache with ``method`` to ``ratio`` of it every ``every`` tokens."""

    method: Method
    ratio: float
    every: int = 1024
    compress_prompt: bool = False

    @classmethod
    def build(
        cls, method: str | Method, ratio: float, every: int = 1024, compress_prompt: bool = False
    ) -> DecodeCompression:
        resolved = methods.get_for_phase(method, "decode")
        if not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"decode ratio {ratio!r} is not allowed; use 0 < ratio <= 1 (e.g. 0.25)")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"compress_every {every!r} must be an integer >= 1")
        return cls(resolved, float(ratio), every, boolean("compress_prompt", compress_prompt))

    def label(self) -> str:
        return f"{self.method.label()}@{self.ratio:g}"


@dataclass
class RowStats:
    """What happened to one row while decoding."""

    compressions: int = 0
    peak_entries: int = 0
    final_entries: int = 0
    events: list[tuple[int, int, int]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "compression_events": self.compressions,
            "peak_cache_entries": self.peak_entries,
            "final_cache_entries": self.final_entries,
            "compressions": [list(event) for event in self.events],
            "decode_seconds_row": self.seconds,
        }


def decode_target(compression: DecodeCompression, generated: int, prompt_length: int) -> int:
    """Entries to keep per head after a compression: of the generated part, or of everything with
    ``compress_prompt`` (then the sinks count too)."""
    method = compression.method
    if compression.compress_prompt:
        return method.decode_target(prompt_length + generated, compression.ratio, method.sink + method.window)
    return method.decode_target(generated, compression.ratio, method.window)


def check_effect(compression: DecodeCompression, max_new_tokens: int, key: str) -> None:
    """One-line error where ``compression`` would leave a run of ``max_new_tokens`` new tokens as it is: no
    compression falls within the run, or the method's floor (its window, always kept) exceeds what the
    ratio keeps at the run's last compression, and so at every compression: every such ratio gives the
    same cache. The floor is checked without ``compress_prompt`` only: with it, the floor is weighed
    against the prompt too."""
    every, ratio = compression.every, compression.ratio
    if every > max_new_tokens:
        raise ValueError(
            f"{key}: compress_every {every} exceeds max_new_tokens {max_new_tokens}, so nothing would be "
            "compressed; lower scenario.compress_every or raise max_new_tokens"
        )
    if compression.compress_prompt:
        return
    method, last = compression.method, max_new_tokens // every * every
    kept = decode_target(compression, last, 0)
    if kept == method.decode_target(last, 0.0, method.window) and kept > math.ceil(last * ratio):
        raise ValueError(
            f"{key}: {method.name}'s window of {method.window} entries exceeds the "
            f"{math.ceil(last * ratio)} that ratio {ratio:g} keeps of {last} generated tokens, so the ratio "
            "would never bind; lower the method's window or raise max_new_tokens"
        )


def _compress_rows(
    state: KVState,
    layers: list[LayerEntries],
    rows: slice,
    compression: DecodeCompression,
    generated: int,
    prompt_lengths: torch.Tensor,
    next_positions: torch.Tensor,
    scaling: float,
    rotary,
) -> list[Selection]:
    """Selections (per layer) for a contiguous group of rows."""
    method = compression.method
    lengths = prompt_lengths[rows]
    selections = []
    for layer, entries in enumerate(layers):
        if state.windows[layer] is not None:  # sliding-window layers keep every entry (compress_settings)
            selections.append(_everything(state, layer, rows))
            continue
        keys, values = state.layer(layer)
        keys, values = keys[rows], values[rows]
        valid = state.valid_mask(layer)[rows]
        group_entries = entries.rows(rows)
        view = DecodeView(keys, values, valid, group_entries, scaling, rotary, next_positions[rows])
        scores = method.score(view)
        forced = forced_mask(valid, method.sink, method.window)[:, None, :].expand_as(scores)
        is_prompt = group_entries.positions < lengths[:, None, None]
        prompt_entries = (is_prompt[:, 0, :] & valid).sum(-1)
        if not compression.compress_prompt:
            forced = forced | is_prompt
        targets = torch.tensor(
            [decode_target(compression, generated, int(length)) for length in lengths.tolist()],
            device=keys.device,
        )
        base = torch.zeros_like(prompt_entries) if compression.compress_prompt else prompt_entries
        keep = torch.minimum(base + targets, valid.sum(-1))
        selections.append(select(scores, valid, keep, forced))
    return selections


def _everything(state: KVState, layer: int, rows: slice) -> Selection:
    keys = state.layer(layer)[0][rows]
    batch, heads, length, _ = keys.shape
    indices = torch.arange(length, device=keys.device).expand(batch, heads, length)
    return Selection(indices, state.valid_mask(layer)[rows])


@dataclass
class DecodeBatch:
    """The rows being decoded: cache, per-entry signals, positions and bookkeeping."""

    state: KVState
    layers: list[LayerEntries]
    positions: torch.Tensor
    prompt_lengths: torch.Tensor
    groups: torch.Tensor
    active: list[int]

    def keep_rows(self, keep: torch.Tensor) -> None:
        rows = keep.nonzero()[:, 0]
        self.state = self.state.select_rows(rows)
        self.layers = [entries.rows(rows) for entries in self.layers]
        self.positions, self.prompt_lengths, self.groups = (
            self.positions[rows],
            self.prompt_lengths[rows],
            self.groups[rows],
        )
        self.active = [self.active[row] for row in rows.tolist()]

    def group_slices(self) -> list[tuple[int, slice]]:
        """(group id, contiguous row slice) for every group still present."""
        ids = self.groups.tolist()
        slices, start = [], 0
        for index in range(1, len(ids) + 1):
            if index == len(ids) or ids[index] != ids[start]:
                slices.append((ids[start], slice(start, index)))
                start = index
        return slices


@dataclass
class Progress:
    """What decoding has produced so far: the tokens and statistics per row, and which rows are done."""

    tokens: list[list[int]]
    stats: list[RowStats]
    done: torch.Tensor
    start: float
    stops: torch.Tensor
    stop_at_eos: bool

    def take(self, batch: DecodeBatch, token: torch.Tensor) -> None:
        """Append each unfinished row's sampled token; a row that sampled a stop token is done from now."""
        for row, value, idle in zip(batch.active, token.tolist(), self.done.tolist(), strict=True):
            if not idle:
                self.tokens[row].append(value)
        stopped = torch.isin(token, self.stops) & ~self.done
        finished = stopped if self.stop_at_eos else torch.zeros_like(self.done)
        for row in torch.nonzero(finished)[:, 0].tolist():
            self.stats[batch.active[row]].seconds = time.perf_counter() - self.start
        self.done = self.done | finished

    def finished(self, generated: int, max_new_tokens: int) -> bool:
        return generated == max_new_tokens or bool(self.done.all())


@dataclass
class DecodeRun:
    """What both decoding loops work with: the model, the batch and its signal tracker, each group's
    compression, whether entries are tracked, and the progress so far."""

    model: PreTrainedModel
    batch: DecodeBatch
    tracker: DecodeTracker
    compressions: Sequence[DecodeCompression | None]
    max_new_tokens: int
    tracked: bool
    progress: Progress


def decode(
    model: PreTrainedModel,
    batch: DecodeBatch,
    tracker: DecodeTracker,
    compressions: Sequence[DecodeCompression | None],
    logits: torch.Tensor,
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: Sequence[int],
    stop_at_eos: bool = True,
    cuda_graphs: bool = True,
) -> tuple[list[list[int]], list[RowStats]]:
    """Generate up to ``max_new_tokens`` per row (stopping rows at a stop token), compressing as configured.

    ``compressions[g]`` applies to the rows whose group id is g (None: never compressed). On CUDA the
    steps replay captured graphs (:func:`_graphed_loop`), elsewhere they run eagerly (:func:`_eager_loop`).
    Returns the generated ids per row (stop token included) and per-row statistics.
    """
    rows = len(batch.active)
    progress = Progress(
        [[] for _ in range(rows)],
        [RowStats() for _ in range(rows)],
        torch.zeros(rows, dtype=torch.bool, device=logits.device),
        time.perf_counter(),
        torch.tensor(list(stop_ids), device=logits.device, dtype=torch.long),
        stop_at_eos,
    )
    # Entries are tracked (positions, signals, per-step counts) only for decoding compression.
    tracked = tracking(tracker, compressions)
    loop = _graphed_loop if cuda_graphs and replayable(model) else _eager_loop
    _record_entries(batch, progress.stats)
    with contextlib.ExitStack() as hooks:
        if tracker.evolution:
            hooks.enter_context(layer_output_hooks(model, tracker.on_layer_output))
        if tracker.query_statistics:
            hooks.enter_context(prerope_query_hooks(model, tracker.on_queries))
        run = DecodeRun(model, batch, tracker, compressions, max_new_tokens, tracked, progress)
        loop(run, logits, sampler)
    if not tracked:
        for row in range(rows):  # every token but the last was fed, and nothing was evicted
            progress.stats[row].final_entries += len(progress.tokens[row]) - 1
            progress.stats[row].peak_entries = progress.stats[row].final_entries
    elapsed = time.perf_counter() - progress.start
    for row, idle in zip(batch.active, progress.done.tolist(), strict=True):
        if not idle:
            progress.stats[row].seconds = elapsed
    return progress.tokens, progress.stats


def _eager_loop(run: DecodeRun, logits: torch.Tensor, sampler: Sampler) -> None:
    """One forward call per step; once half the rows are done, the finished rows leave the batch."""
    model, batch, tracker, progress = run.model, run.batch, run.tracker, run.progress
    to_logits = LogitHead.of(model)
    rotary = rotary_function(model)
    on_attention = tracker.on_attention if tracker.needs_attention else None
    for generated in range(1, run.max_new_tokens + 1):
        token = sampler(logits)
        progress.take(batch, token)
        if progress.finished(generated, run.max_new_tokens):
            return
        if 2 * int(progress.done.sum()) >= len(progress.done):
            keep = ~progress.done
            sampler = sampler.subset(keep.nonzero()[:, 0].tolist())
            token, logits, progress.done = token[keep], logits[keep], progress.done[keep]
            batch.keep_rows(keep)
            tracker.layers = batch.layers
        producing = sampler.distribution(logits) if run.tracked else None
        positions = batch.positions[:, None]
        hidden = forward_hidden(model, batch.state, token[:, None], positions, None, on_attention)
        logits = to_logits(hidden[:, -1]).float()
        if run.tracked:
            tracker.append(batch.positions, producing, logits)
        batch.positions = batch.positions + 1
        if run.tracked:
            _record_entries(batch, progress.stats, progress.done)
            _maybe_compress(run, generated, rotary)


def _graphed_loop(run: DecodeRun, logits: torch.Tensor, sampler: Sampler) -> None:
    """Steps replayed from a captured CUDA graph over a fixed-shape cache, recaptured after each
    compression or every :func:`graph_steps` steps. Rows never leave the batch: a finished row idles until
    every row is done."""
    model, batch, tracker, progress = run.model, run.batch, run.tracker, run.progress
    rotary = rotary_function(model)
    graphed, held = None, []
    for generated in range(1, run.max_new_tokens + 1):
        token = sampler(logits)
        progress.take(batch, token)
        if progress.finished(generated, run.max_new_tokens):
            break
        if graphed is None or graphed.done == graphed.steps:
            if graphed is not None:
                batch.state = graphed.release()
            steps = min(run.max_new_tokens - generated, _steps_to_compression(run.compressions, generated))
            recorder = tracker if run.tracked else None
            graphed, held = _fixed_shape_decoder(model, batch, recorder, steps, logits)
        producing = sampler.distribution(logits) if run.tracked else None
        logits = graphed(token, producing)
        batch.positions = batch.positions + 1
        if run.tracked:
            _record_counts(batch, progress.stats, [count + graphed.done for count in held], progress.done)
            if _due(batch, run.compressions, generated):
                batch.state, graphed = graphed.release(), None
                _maybe_compress(run, generated, rotary)
    if graphed is not None:
        batch.state = graphed.release()


GRAPH_STEPS = 256
"""Most steps per captured decoding graph. Every step attends all the graph's recent slots under a mask
(with a kernel that reads them in full), which costs in proportion to rows × steps, and a new capture
costs host time (about two steps' worth) every that many steps: few rows take GRAPH_STEPS, many rows
fewer (:func:`graph_steps`)."""
GRAPH_SLOTS = 4096
"""Recent slots (rows × steps) a graph's steps attend before :func:`graph_steps` shortens the graph."""
MIN_GRAPH_STEPS = 64


def graph_steps(rows: int) -> int:
    """Steps per captured graph for ``rows`` rows: GRAPH_STEPS up to GRAPH_SLOTS recent slots, then fewer,
    down to MIN_GRAPH_STEPS (256 for up to 16 rows, 64 from 64 rows on)."""
    return min(GRAPH_STEPS, max(MIN_GRAPH_STEPS, GRAPH_SLOTS // max(rows, 1)))


def tracking(tracker: DecodeTracker, compressions: Sequence) -> bool:
    """Whether steps must track cache entries: some rows compress while decoding, or signals are collected."""
    return tracker.collects or any(compression is not None for compression in compressions)


def replayable(model: PreTrainedModel) -> bool:
    """Whether steps can replay a captured CUDA graph: on CUDA."""
    return model.device.type == "cuda"


def _fixed_shape_decoder(
    model: PreTrainedModel,
    batch: DecodeBatch,
    tracker: DecodeTracker | None,
    steps: int,
    logits: torch.Tensor,
) -> tuple[GraphedDecoder, list[int]]:
    """A decoder for the next ``steps`` steps (at most :func:`graph_steps`) of ``batch``, recording signals in
    ``tracker`` if given, and each row's cache entries before them (every step adds one per layer and row)."""
    held = batch.state.valid_counts().amax(dim=0).tolist() if tracker is not None else []
    steps = min(graph_steps(len(batch.active)), steps)
    decoder = GraphedDecoder(model, batch.state, batch.positions, steps, tracker=tracker, logits=logits)
    return decoder, held


def _room(compressions: Sequence[DecodeCompression | None], generated: int, max_new_tokens: int) -> int:
    """Entries every row appends after a compression at step ``generated`` before the next one (or the end):
    one per step up to the next step after which some group compresses, none after the last sampled token."""
    intervals = [compression.every for compression in compressions if compression is not None]
    to_next = min((-generated % every or every for every in intervals), default=max_new_tokens)
    return max(0, min(to_next, max_new_tokens - 1 - generated))


def _steps_to_compression(compressions: Sequence[DecodeCompression | None], generated: int) -> int:
    """Steps from step ``generated`` up to and including the next one after which some group compresses
    (:data:`GRAPH_STEPS` when none ever does)."""
    intervals = [compression.every for compression in compressions if compression is not None]
    return min((-generated % every + 1 for every in intervals), default=GRAPH_STEPS)


def _record_entries(batch: DecodeBatch, stats: list[RowStats], done: torch.Tensor | None = None) -> None:
    _record_counts(batch, stats, batch.state.valid_counts().amax(dim=0).tolist(), done)


def _record_counts(
    batch: DecodeBatch, stats: list[RowStats], entries: list[int], done: torch.Tensor | None = None
) -> None:
    """Peak and current cache entries of the rows still generating, from their entry counts now."""
    idle = [False] * len(entries) if done is None else done.tolist()
    for row, count, row_idle in zip(batch.active, entries, idle, strict=True):
        if row_idle:
            continue
        stats[row].peak_entries = max(stats[row].peak_entries, int(count))
        stats[row].final_entries = int(count)


def _due(
    batch: DecodeBatch, compressions: Sequence[DecodeCompression | None], generated: int
) -> list[tuple[int, slice]]:
    """(group, rows) of the groups that compress after step ``generated``."""
    return [
        (group, rows)
        for group, rows in batch.group_slices()
        if compressions[group] is not None and generated % compressions[group].every == 0
    ]


SCORING_BYTES = 1 << 29
"""Bound on the fp32 window-attention logits of the rows one compression scores at a time."""


def _rows_per_scoring(state: KVState, window: int) -> int:
    """Rows whose window-attention logits over the longest layer, (rows, H_kv, window, entries) per query head
    group in fp32, stay within :data:`SCORING_BYTES` (one row at least)."""
    per_row = 4 * state.layer(0)[0].shape[1] * max(window, 1) * max(state.lengths())
    return max(1, SCORING_BYTES // per_row)


def _maybe_compress(run: DecodeRun, generated: int, rotary) -> None:
    """Compress the groups due after step ``generated``, and record each compressed row's event."""
    batch, tracker, compressions = run.batch, run.tracker, run.compressions
    stats, done = run.progress.stats, run.progress.done
    due = _due(batch, compressions, generated)
    if not due:
        return
    before = batch.state.valid_counts().amax(dim=0).tolist()
    due_groups = dict(due)
    per_group = []
    chunk = _rows_per_scoring(batch.state, tracker.window)
    for group, rows in batch.group_slices():
        if group in due_groups:
            # Scored a few rows at a time: a layer's window attention over every row would take a sizeable
            # share of the cache's memory just when the cache is at its largest.
            for start in range(rows.start, rows.stop, chunk):
                part = slice(start, min(start + chunk, rows.stop))
                per_group.append(
                    _compress_rows(
                        batch.state,
                        batch.layers,
                        part,
                        compressions[group],
                        generated,
                        batch.prompt_lengths,
                        batch.positions,
                        tracker.scaling,
                        rotary,
                    )
                )
        else:
            per_group.append(
                [_everything(batch.state, layer, rows) for layer in range(batch.state.num_layers)]
            )
    indices, valid = combine_groups(per_group)
    everyone = torch.arange(len(batch.active), device=batch.positions.device)
    batch.state.compact(indices, valid, _room(compressions, generated, run.max_new_tokens))
    batch.layers = [
        entries.gather(everyone, layer_indices)
        for entries, layer_indices in zip(batch.layers, indices, strict=True)
    ]
    tracker.layers = batch.layers
    after = batch.state.valid_counts().amax(dim=0).tolist()
    compressed_rows = set()
    for _, rows in due:
        compressed_rows.update(range(rows.start, rows.stop))
    idle = done.tolist()
    for row in compressed_rows - {row for row, row_idle in enumerate(idle) if row_idle}:
        stat = stats[batch.active[row]]
        stat.compressions += 1
        stat.events.append((generated, int(before[row]), int(after[row])))
        stat.final_entries = int(after[row])
