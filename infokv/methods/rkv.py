"""R-KV, redundancy-aware KV-cache compression for reasoning models (Cai et al. 2025), for decoding.

Each cached entry i of a KV head h is scored by its importance to the last w queries (the observation
window) minus its redundancy among the cached keys:

    ℓ_{j,i} = M_{g∈G(h)} ( q_j^(g) · k_i · s )                       j in the window, i before it
    I_i    = maxpool_K( (1/w) Σ_j softmax_i(ℓ_{j,i}) )                over the keys before the window
    S_i    = λ · I_i − (1 − λ) · R_i

with s the attention scaling, M the reduction of the query heads of h's GQA group (max of the logits,
before the softmax), maxpool_K a max pool of kernel K over the keys before the window (stride 1; the
window's keys are not its neighbours) and R_i the key redundancy of :mod:`infokv.signals.redundancy`
(cosine similarity to the other keys, each entry's most recent near-duplicate above θ spared, mean,
softmax over every cached key). The last w entries are always kept and count toward the target
⌈ratio · generated⌉.

Definitions and defaults are the authors' code (Zefan-Cai/R-KV, ``R1KV.update_kv`` with
``compute_attention_scores`` and ``cal_similarity``): λ = 0.07 (``mix``, their ``mix_lambda``), w = 8
(``window``, their ``window_size``), K = 7 (``kernel``), θ = 0.5 (``threshold``), the max over the
group's logits (``reduction``; "mean" is their other option), the softmax over the keys before the
window only, one most recent near-duplicate spared (their ``retain_direction="last"``) and no sinks
(their ``first_tokens`` is not read by R-KV). Where ours differs, and why:

* Schedule: theirs compresses the whole cache, prompt included, to a fixed budget every 128 generated
  tokens; ours follows the engine's decoding schedule (every ``compress_every`` tokens, to ``ratio`` of
  the generated tokens, the prompt kept whole unless ``compress_prompt``). The prompt's keys are still
  scored alongside the generated ones, so they count in the redundancy as in theirs.
* Batches: their redundancy reads the first row of the batch only (they decode one sequence at a time);
  ours scores every row over its own valid entries, and an entry with no near-duplicate spares the row's
  first valid entry where theirs spares slot 0.
* Precision: the logits, softmax and similarities are fp32 whatever the cache dtype (theirs computes the
  similarities in the cache's dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infokv import signals
from infokv.methods.base import Method, Requirement
from infokv.signals.attention import before_window, pool_positions
from infokv.signals.redundancy import key_redundancy

LOGIT_REDUCTIONS = ("max", "mean")


@dataclass(frozen=True)
class RKV(Method):
    name = "rkv"
    phases = ("decode",)
    sink: int = 0
    window: int = 8
    kernel: int = 7
    mix: float = 0.07
    threshold: float = 0.5
    reduction: str = "max"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"{self.name}: window={self.window} must be >= 1 (the observation queries)")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"{self.name}: kernel={self.kernel} must be an odd number >= 1")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"{self.name}: mix={self.mix} must be in [0, 1]")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(
                f"{self.name}: threshold={self.threshold} must be a cosine similarity in [-1, 1]"
            )
        if self.reduction not in LOGIT_REDUCTIONS:
            raise ValueError(f"{self.name}: reduction {self.reduction!r} is not one of {LOGIT_REDUCTIONS}")

    def requirements(self) -> set[Requirement]:
        return {(signals.WINDOW_QUERIES, self.window)}

    def importance(self, view) -> torch.Tensor:
        """I (B, H_kv, T): pooled attention of the window queries to the keys before the window, else 0."""
        keys = view.keys
        batch, kv_heads, length, dim = keys.shape
        queries = view.window_queries(self.window)
        grouped = queries.reshape(batch, kv_heads, -1, queries.shape[2], dim)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", grouped.float(), keys.float()) * view.scaling
        logits = logits.amax(dim=2) if self.reduction == "max" else logits.mean(dim=2)
        context = before_window(view.valid, length, self.window, keys.device)[:, None, None, :]
        attention = logits.masked_fill(~context, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        pooled = pool_positions(attention.mean(dim=2), "max", self.kernel)
        return pooled.masked_fill(~context[:, :, 0], 0.0)

    def score(self, view) -> torch.Tensor:
        redundancy = key_redundancy(view.keys, view.valid, self.threshold)
        return self.mix * self.importance(view) - (1.0 - self.mix) * redundancy
