"""Teacher-forced fidelity of compressed caches to the full cache, beside the benchmark score.

The full cache's answer A = (a_0 … a_{n−1}) (its generated tokens, the stop token included) is fed
through every cache row in one batched forward, so no compressed row has to decode again. Row r's
next-token distribution at answer position t is q_t (the model's, at temperature 1, before any
sampling); the full cache's row of the same prompt and draw gives the reference p_t. Then

    kl_mean = (1/n) Σ_t KL(p_t ‖ q_t),    kl_max = max_t KL(p_t ‖ q_t)
    argmax_agreement = (1/n) Σ_t [argmax q_t = argmax p_t]
    nll_sum = − Σ_t log q_t(a_t),          nll_mean = nll_sum / n

(:mod:`infokv.signals.divergence`). The full row is its own reference, so its KL is exactly 0 and its
agreement exactly 1. The distribution of a_0 is the one the decoding started from (the prefill's last
logits, or the question's through the row's cache); a_t for t ≥ 1 comes from feeding a_{t−1}.
Log-probabilities are made for a chunk of positions at a time (:data:`LOG_PROB_ELEMENTS`), so the
(positions × vocabulary) tensor of a long answer never exists whole.

A cache compressed while decoding changes along the generation, so one forward through it cannot stand
for it. :class:`ForcedSampler` instead takes the decoding loop's sampler's place: at step t every row is
fed a_t of its prompt's full-cache answer, so the loop compresses at the same steps, with the same
signals (the producing distribution is the one the real sampler would have used), as a real run of that
answer; q_t is then the row's distribution before a_t is fed, and the full cache's rows, decoded in the
same batch, give p_t. The record is the same as above.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from infokv.engine.sampling import Sampler
from infokv.hf.cache import KVState
from infokv.hf.forward import forward_hidden
from infokv.hf.logit_head import LogitHead
from infokv.signals.divergence import position_divergence

LOG_PROB_ELEMENTS = 1 << 26
"""fp32 log-probabilities per chunk over all rows (256 MiB; the reference rows' copy doubles it)."""
FORWARD_TOKENS = 256
"""Answer tokens fed per forward; their log-probabilities follow :data:`LOG_PROB_ELEMENTS` at a time."""

SCALAR_KEYS = ("kl_mean", "kl_max", "argmax_agreement", "nll_mean", "nll_sum", "reference_tokens")
"""The per-sample numbers of a fidelity record (``kl_per_position`` is the one list beside them)."""

EMPTY_ANSWER = "the full cache's answer has no tokens"


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, n) ids and validity mask, right-padded to the longest sequence (n may be 0)."""
    width = max((len(sequence) for sequence in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(list(sequence), dtype=torch.long)
        valid[row, : len(sequence)] = True
    return ids.to(device), valid.to(device)


def teacher_forced_log_probs(
    model: PreTrainedModel,
    state: KVState,
    first_logits: torch.Tensor,
    answers: torch.Tensor,
    valid: torch.Tensor,
    positions: torch.Tensor,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, log-probabilities (R, c, V)) of the next token at answer positions start … start + c − 1.

    ``first_logits`` (R, V) predict a_0; ``answers`` (R, n) with ``valid`` (R, n) are fed from ``positions``
    (R,) on, :data:`FORWARD_TOKENS` per forward, appended to ``state``, so the rows' distributions of
    a_1 … a_{n−1} follow chunk by chunk.
    """
    rows, length = answers.shape
    if length == 0:
        return
    yield 0, first_logits.float().log_softmax(dim=-1)[:, None]
    to_logits = LogitHead.of(model)
    chunk = max(1, LOG_PROB_ELEMENTS // (rows * first_logits.shape[-1]))
    for start in range(0, length - 1, FORWARD_TOKENS):
        stop = min(length - 1, start + FORWARD_TOKENS)
        offsets = torch.arange(start, stop, device=positions.device)
        fed_valid = valid[:, start:stop]
        hidden = forward_hidden(
            model,
            state,
            answers[:, start:stop],
            positions[:, None] + offsets,
            None if bool(fed_valid.all()) else fed_valid,
        )
        for block in range(0, stop - start, chunk):
            yield start + 1 + block, to_logits(hidden[:, block : block + chunk]).float().log_softmax(dim=-1)


def summarise(kl: torch.Tensor, agree: torch.Tensor, nll: torch.Tensor) -> dict[str, object]:
    """The fidelity record of one row from its per-position KL, agreement and NLL (n,) each; an empty
    answer gives None for every number, with the reason."""
    count = len(kl)
    if count == 0:
        return {
            **dict.fromkeys(SCALAR_KEYS),
            "reference_tokens": 0,
            "kl_per_position": [],
            "reason": EMPTY_ANSWER,
        }
    nll_sum = float(nll.double().sum())
    return {
        "kl_mean": float(kl.double().mean()),
        "kl_max": float(kl.max()),
        "kl_per_position": kl.tolist(),
        "argmax_agreement": float(agree.double().mean()),
        "nll_mean": nll_sum / count,
        "nll_sum": nll_sum,
        "reference_tokens": count,
    }


def measure(
    model: PreTrainedModel,
    state: KVState,
    first_logits: torch.Tensor,
    answers: Sequence[Sequence[int]],
    positions: torch.Tensor,
    reference_rows: torch.Tensor,
    pad_id: int,
) -> list[dict[str, object]]:
    """One fidelity record (:func:`summarise`) per row of ``state``: row r is fed ``answers[r]`` and compared
    with row ``reference_rows[r]`` (R,), which is fed the same answer through the full cache."""
    ids, valid = right_pad(answers, pad_id, first_logits.device)
    reference_rows = reference_rows.to(first_logits.device)
    parts: list[tuple[torch.Tensor, ...]] = []
    for start, log_probs in teacher_forced_log_probs(model, state, first_logits, ids, valid, positions):
        targets = ids[:, start : start + log_probs.shape[1]]
        terms = position_divergence(log_probs[reference_rows], log_probs, targets)
        parts.append(tuple(term.cpu() for term in terms))
    if not parts:
        empty = torch.zeros(len(answers), 0)
        parts = [(empty, empty.bool(), empty)]
    kl, agree, nll = (torch.cat(column, dim=1) for column in zip(*parts, strict=True))
    return [
        summarise(kl[row, :count], agree[row, :count], nll[row, :count])
        for row, count in enumerate(len(answer) for answer in answers)
    ]


class ForcedSampler(Sampler):
    """Feeds every row its answer, token by token, in place of sampling, and measures each step's
    distribution against the reference row's (:func:`infokv.signals.divergence.position_divergence`).

    Row r of the decoding batch is fed ``answers[r]`` and compared with row ``reference_rows[r]``, which is
    fed the same answer; rows past the end of their answer are fed ``pad_id`` and not measured.
    :meth:`distribution` is the real sampler's (``temperature``), so signals computed from the producing
    distribution match a real run. :meth:`subset` narrows this sampler in place (the decoding loop drops
    finished rows; rows sharing an answer stop together, so a row never outlives its reference), so that
    :meth:`records` of the caller's sampler covers every row.
    """

    def __init__(
        self,
        temperature: float,
        top_p: float,
        answers: Sequence[Sequence[int]],
        reference_rows: Sequence[int],
        pad_id: int,
        device: torch.device,
    ) -> None:
        super().__init__(temperature, top_p, [], device)
        self.answers, self.valid = right_pad(answers, pad_id, device)
        self.reference = list(reference_rows)
        self.step = 0
        self.terms: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._follow(list(range(len(answers))))

    def _follow(self, rows: list[int]) -> None:
        """Follow the original rows ``rows`` from now on, each compared with its reference among them."""
        self.rows = rows
        place = {row: index for index, row in enumerate(rows)}
        device = self.answers.device
        self.row_ids = torch.tensor(rows, device=device)
        self.reference_places = torch.tensor([place[self.reference[row]] for row in rows], device=device)

    @property
    def length(self) -> int:
        """Tokens of the longest answer: the steps that feed one."""
        return self.answers.shape[1]

    def subset(self, rows: list[int]) -> ForcedSampler:
        """This sampler, narrowed to the given rows of the current batch."""
        self._follow([self.rows[row] for row in rows])
        return self

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The answers' tokens at this step, after recording KL, agreement and NLL of every row."""
        targets = self.answers[self.row_ids, self.step]
        log_probs = logits.float().log_softmax(dim=-1)
        kl, agree, nll = position_divergence(log_probs[self.reference_places], log_probs, targets)
        self.terms.append((self.step, self.row_ids, kl, agree, nll))
        self.step += 1
        return targets

    def records(self) -> list[dict[str, object]]:
        """One fidelity record (:func:`summarise`) per original row, over the answer tokens it was fed."""
        count, width = self.answers.shape
        columns = [torch.zeros(count, width) for _ in range(3)]
        fed = torch.zeros(count, width, dtype=torch.bool)
        for step, rows, *terms in self.terms:
            rows = rows.cpu()
            for column, term in zip(columns, terms, strict=True):
                column[rows, step] = term.float().cpu()
            fed[rows, step] = True
        fed &= self.valid.cpu()
        kl, agree, nll = columns
        return [
            summarise(kl[row][fed[row]], agree[row][fed[row]], nll[row][fed[row]]) for row in range(count)
        ]
