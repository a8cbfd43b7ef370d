"""Forward Influence: how much evicting a set of prompt tokens changes the model's later predictions.

For a document x_1..x_T and an eviction set S ⊂ [0, P) chosen by a criterion, let p_t be the
full-cache next-token distribution at position t and q_t^S the one when the keys (and values) of S
are masked, at every layer, for all later queries (positions unchanged). The influence at t is

    KL_t(S) = KL(p_t ‖ q_t^S) = Σ_v p_t(v) · (log p_t(v) − log q_t^S(v)),

and the Forward Influence of S at distance d is its mean over the 128-token chunk that starts d
tokens after the evicted region:  FI_d(S) = (1/|C_d|) Σ_{t∈C_d} KL_t(S),  C_d = [P + d, P + d + 128).

Two eviction semantics (``mode``):

* ``context`` (default): a token of S is masked for every query after it, also inside the prefix,
  so later prefix tokens are recomputed without it. Only the part from the first evicted token of
  any set on is recomputed; the prefix before it comes from the capture prefill.
* ``cache``: the compression scenario. The prefix [0, P) is prefilled with the full context, S is
  then dropped from the cache, and only the continuation [P, T) is computed.

Efficiency: every eviction set is one row of a batched forward (``rows_per_forward`` rows per
call), next to row 0 which evicts nothing and provides p_t; identical sets share a row. The
continuation runs in ``forward_chunk``-token chunks and logits exist for one chunk at a time, so no
(T × vocab) tensor is ever held. The nothing-evicted row is compared with itself, so its KL is
exactly 0 by construction.

Criteria score each token of the prefix once (one capture prefill): per-(layer, KV head) scores of
a compression method are normalised to sum to 1 over the candidate tokens and averaged over layers
and heads into one score per token (the same tokens are evicted at every layer); ``entropy`` is the
token's predictive entropy H_i; ``random`` is seeded uniform noise. Each criterion evicts its
``count`` highest-scoring candidates; candidates exclude the first ``sink`` tokens (attention
sinks) and the last ``window`` tokens of the prefix (the observation window).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from infokv import methods, signals
from infokv.engine.capture import Captured, prefill
from infokv.engine.views import PrefillView
from infokv.hf.cache import KVState
from infokv.hf.forward import forward_hidden
from infokv.hf.logit_head import LogitHead
from infokv.methods.base import Requirement
from infokv.signals.divergence import kl_divergence

MODES = ("context", "cache")
KINDS = ("method", "entropy", "random")


@dataclass(frozen=True)
class Criterion:
    """How to rank prefix tokens for eviction: a compression method's score, entropy, or random."""

    name: str
    kind: str = "method"
    method: str | None = None
    params: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"criterion {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "method" and not self.method:
            raise ValueError(f"criterion {self.name!r}: kind 'method' needs a method name")

    def build(self) -> methods.Method:
        return methods.get(self.method, **self.params)


DEFAULT_CRITERIA: tuple[Criterion, ...] = (
    Criterion("attention", "method", "snapkv"),
    Criterion("entropy", "entropy"),
    Criterion("infokv", "method", "infokv"),
    Criterion("h2o", "method", "h2o"),
    Criterion("random", "random"),
)


@dataclass
class InfluenceConfig:
    """Settings of the analysis of one document (see the module docstring)."""

    prefix: int = 2048
    fraction: float = 0.1
    chunk: int = 128
    mode: str = "context"
    sink: int = 4
    window: int = 32
    entropy_topk: int = 256
    entropy_position: str = "producing"
    forward_chunk: int = 256
    rows_per_forward: int | None = None
    prefill_chunk: int = 4096
    seed: int = 0
    criteria: tuple[Criterion, ...] = DEFAULT_CRITERIA

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction {self.fraction} must be in (0, 1)")
        if min(self.prefix, self.chunk, self.forward_chunk) < 1:
            raise ValueError("prefix, chunk and forward_chunk must be >= 1")

    @property
    def count(self) -> int:
        """Tokens evicted by every criterion: ``round(fraction · prefix)``."""
        return max(1, round(self.fraction * self.prefix))


@dataclass
class DocumentResult:
    """Forward Influence of each criterion's eviction set on one document."""

    chunk_starts: list[int]
    influence: dict[str, list[float]]
    selected: dict[str, torch.Tensor]
    entropy: torch.Tensor
    cost: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Choosing the tokens
# --------------------------------------------------------------------------------------------------


def capture_requirements(criteria: Sequence[Criterion], entropy_topk: int) -> set[Requirement]:
    """Signals the capture prefill must collect for ``criteria`` (entropy is always captured)."""
    requirements: set[Requirement] = {(signals.ENTROPY, entropy_topk)}
    for criterion in criteria:
        if criterion.kind == "method":
            requirements |= criterion.build().requirements()
    return requirements


def candidate_mask(prefix: int, sink: int, window: int) -> torch.Tensor:
    """(prefix,) True for tokens that may be evicted: not among the first ``sink`` or last ``window``."""
    index = torch.arange(prefix)
    return (index >= sink) & (index < prefix - window)


def reduce_to_tokens(layer_scores: Sequence[torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
    """One score per token from per-layer (H, T) scores.

    s_i = (1 / (L·H)) Σ_l Σ_h  S_i^(l,h) / Σ_{j∈C} S_j^(l,h)      for candidates i ∈ C (else 0)
    """
    total = torch.zeros(candidates.shape[0], dtype=torch.float64)
    for scores in layer_scores:
        masked = scores.double().cpu() * candidates[None, :]
        masked = masked / masked.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        total += masked.mean(dim=0)
    return total / len(layer_scores)


def criterion_scores(
    state: KVState,
    captured: Captured,
    criterion: Criterion,
    config: InfluenceConfig,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Scores (P,) of the prefix tokens of row 0 under ``criterion``; higher is evicted first."""
    prefix = candidates.shape[0]
    if criterion.kind == "random":
        generator = torch.Generator().manual_seed(config.seed)
        return torch.rand(prefix, generator=generator, dtype=torch.float64)
    if criterion.kind == "entropy":
        view = PrefillView(state, captured, 0, memo={})
        return view.entropy(config.entropy_topk, config.entropy_position)[0].double().cpu()
    method = criterion.build()
    per_layer = [
        method.score(PrefillView(state, captured, layer, memo={}))[0] for layer in range(state.num_layers)
    ]
    return reduce_to_tokens(per_layer, candidates)


def choose(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` highest-scoring candidate positions, ascending (ties broken by position)."""
    if count > int(candidates.sum()):
        raise ValueError(f"cannot evict {count} tokens from {int(candidates.sum())} candidates")
    ranked = scores.double().masked_fill(~candidates, float("-inf"))
    top = ranked.sort(descending=True, stable=True).indices[:count]
    return top.sort().values


# --------------------------------------------------------------------------------------------------
# Measuring the influence
# --------------------------------------------------------------------------------------------------


def eviction_masks(evictions: Sequence[torch.Tensor], length: int) -> tuple[torch.Tensor, list[int]]:
    """Unique eviction rows (R, length) bool (True = evicted; row 0 evicts nothing) and each set's row."""
    rows: list[tuple[int, ...]] = [()]
    assignment = []
    for positions in evictions:
        key = tuple(sorted({int(p) for p in torch.as_tensor(positions).reshape(-1).tolist()}))
        if key and (key[0] < 0 or key[-1] >= length):
            raise ValueError(f"eviction positions must lie in [0, {length})")
        if key not in rows:
            rows.append(key)
        assignment.append(rows.index(key))
    masks = torch.zeros(len(rows), length, dtype=torch.bool)
    for index, key in enumerate(rows):
        masks[index, list(key)] = True
    return masks, assignment


def first_evicted(masks: torch.Tensor) -> int:
    """The first position evicted by any row, or the length if none is."""
    hits = masks.any(dim=0).nonzero()
    return int(hits[0]) if len(hits) else masks.shape[1]


def _branch(state: KVState, rows: int, start: int, cache_valid: torch.Tensor) -> KVState:
    """``rows`` copies of row 0's first ``start`` cache entries, masked by ``cache_valid`` (rows, start)."""
    keep, valid = [], []
    for layer in range(state.num_layers):
        heads = state.layer(layer)[0].shape[1]
        keep.append(torch.arange(start).expand(rows, heads, start))
        valid.append(cache_valid)
    device = state.layer(0)[0].device
    return state.gather(torch.zeros(rows, dtype=torch.long, device=device), keep, valid)


def influence(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    evictions: Sequence[torch.Tensor],
    state: KVState,
    start: int,
    forward_chunk: int = 256,
    rows_per_forward: int | None = None,
    kl_block: int = 128,
) -> torch.Tensor:
    """Per-position KL(p_t ‖ q_t^S) (len(evictions), T − start) for tokens t ∈ [start, T).

    ``input_ids`` is one document (1, T); ``state`` holds (at least) its first ``start`` tokens,
    uncompressed. Evicted positions before ``start`` are dropped from the cache (the ``cache``
    semantics); those at or after ``start`` are masked from their own position on (``context``).
    """
    device = input_ids.device
    total = input_ids.shape[1]
    masks, assignment = eviction_masks(evictions, total)
    masks = masks.to(device)
    rows = masks.shape[0]
    width = rows_per_forward or rows
    groups = [list(range(first, min(rows, first + width))) for first in range(0, rows, width)]
    branches = [_branch(state, len(group), start, ~masks[group, :start]) for group in groups]
    to_logits = LogitHead.of(model)
    result = torch.zeros(rows, total - start)
    with torch.inference_mode():
        for begin in range(start, total, forward_chunk):
            stop = min(total, begin + forward_chunk)
            positions = torch.arange(begin, stop, device=device)
            # Group 0 holds row 0 (nothing evicted): its log-probabilities are the reference p_t.
            reference: dict[int, torch.Tensor] = {}
            for group, branch in zip(groups, branches, strict=True):
                keep = ~masks[group, begin:stop]
                hidden = forward_hidden(
                    model,
                    branch,
                    input_ids[:, begin:stop].expand(len(group), -1),
                    positions.expand(len(group), -1),
                    None if bool(keep.all()) else keep,
                )
                for block in range(0, stop - begin, kl_block):
                    log_probs = to_logits(hidden[:, block : block + kl_block]).float().log_softmax(dim=-1)
                    if group[0] == 0:
                        reference[block] = log_probs[0]
                    offset = begin - start + block
                    for local, row in enumerate(group):
                        kl = kl_divergence(reference[block], log_probs[local])
                        result[row, offset : offset + kl.shape[0]] = kl.cpu()
                del hidden
    return result[assignment]


def chunk_means(kl: torch.Tensor, start: int, origin: int, chunk: int) -> tuple[list[int], torch.Tensor]:
    """Mean KL over each ``chunk``-token chunk from ``origin`` on: chunk starts and (S, chunks) means.

    ``kl`` (S, T − start) holds positions [start, T); the last chunk may be shorter.
    """
    total = start + kl.shape[1]
    starts = list(range(origin, total, chunk))
    means = [
        kl[:, begin - start : min(total, begin + chunk) - start].double().mean(dim=1) for begin in starts
    ]
    return starts, torch.stack(means, dim=1) if means else torch.zeros(kl.shape[0], 0)


def select_tokens(
    state: KVState, captured: Captured, config: InfluenceConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each criterion's eviction set (ascending positions) and the token entropies H_i (P,)."""
    prefix = captured.valid.shape[1]
    candidates = candidate_mask(prefix, config.sink, config.window)
    selected = {
        criterion.name: choose(
            criterion_scores(state, captured, criterion, config, candidates), candidates, config.count
        )
        for criterion in config.criteria
    }
    entropy = PrefillView(state, captured, 0, memo={}).entropy(config.entropy_topk, config.entropy_position)
    return selected, entropy[0].cpu()


def analyse_document(model: PreTrainedModel, ids: Sequence[int], config: InfluenceConfig) -> DocumentResult:
    """Forward Influence of every criterion on one document (its first ``prefix`` tokens may be evicted)."""
    total = len(ids)
    if total <= config.prefix:
        raise ValueError(f"document has {total} tokens; it needs more than prefix={config.prefix}")
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    clock = time.perf_counter()
    requirements = capture_requirements(config.criteria, config.entropy_topk)
    valid = torch.ones(1, config.prefix, dtype=torch.bool, device=model.device)
    state, captured, _ = prefill(
        model, input_ids[:, : config.prefix], valid, requirements, config.prefill_chunk
    )
    capture_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    with torch.inference_mode():
        selected, entropy = select_tokens(state, captured, config)
    scoring_seconds = time.perf_counter() - clock
    evictions = list(selected.values())
    masks, _ = eviction_masks(evictions, total)
    start = config.prefix if config.mode == "cache" else min(first_evicted(masks), config.prefix)
    clock = time.perf_counter()
    kl = influence(model, input_ids, evictions, state, start, config.forward_chunk, config.rows_per_forward)
    influence_seconds = time.perf_counter() - clock
    chunk_starts, means = chunk_means(kl, start, config.prefix, config.chunk)
    cost = {
        "tokens": float(total),
        "start": float(start),
        "rows": float(masks.shape[0]),
        "token_rows": float(masks.shape[0] * (total - start)),
        "capture_seconds": capture_seconds,
        "scoring_seconds": scoring_seconds,
        "influence_seconds": influence_seconds,
        "seconds": capture_seconds + scoring_seconds + influence_seconds,
    }
    influence_by_name = {name: means[index].tolist() for index, name in enumerate(selected)}
    return DocumentResult(chunk_starts, influence_by_name, selected, entropy, cost)
