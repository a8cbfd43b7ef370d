"""What the RULER tasks (needle in a haystack, variable tracking) share: generation, prompt, score.

A RULER sample is an instruction, a haystack of Paul Graham's essays with the task's statements
scattered through it (:mod:`infokv.eval.benchmarks.haystack`), and a query at the end; the answer is a list
of strings that the completion must reproduce. The score is RULER's ``string_match_all``:

    recall = |{r in answer : lower(r) is a substring of lower(completion)}| / |answer|

Generated samples fit the direct (``cot=False``) chat prompt to ``tokens`` tokens of the model's
tokenizer (within 0.5%) and are deterministic in (tokenizer, tokens, seed, index). Local files hold
records ``{"id", "instruction", "context", "question", "answer": [...]}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import DataError, Prompt, Sample, Score, chat_prompt
from infokv.eval.benchmarks.haystack import fit, scatter
from infokv.eval.benchmarks.sources import field, load_from, local_rows

METRIC = "recall"
LOCAL_FIELDS = ("id", "instruction", "context", "question", "answer")
TAILS = {
    True: "Think step by step, then state the answer.",
    False: "Answer directly, without explanation.",
}


def ruler_prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """Instruction and haystack as the context; the query and a step-by-step or direct tail after it."""
    context = f"{sample.meta['instruction']}\n\n{sample.context}\n\n"
    return chat_prompt(tokenizer, context, f"{sample.question} {TAILS[cot]}")


def recall_score(sample: Sample, completion: str) -> Score:
    """RULER's string match: the fraction of ``sample.answer`` strings found in the completion."""
    lowered = completion.lower()
    found = [value for value in sample.answer if value.lower() in lowered]
    value = len(found) / len(sample.answer)
    return Score(value, {METRIC: value}, found, {"missing": [v for v in sample.answer if v not in found]})


def haystack_sample(
    sample_id: str,
    instruction: str,
    statements: Sequence[str],
    question: str,
    answer: list[str],
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    meta: dict,
) -> Sample:
    """A sample whose context is essays with ``statements`` scattered in order, fitted to ``tokens``."""
    meta = {**meta, "instruction": instruction, "statements": list(statements), "tokens": tokens}

    def sample_with(filler: str) -> Sample:
        return Sample(sample_id, question, answer, scatter(filler, statements, sample_id), meta)

    filler = fit(
        tokenizer, tokens, lambda text: ruler_prompt(sample_with(text), False, tokenizer).text, sample_id
    )
    return sample_with(filler)


def _local(path: Path, limit: int | None) -> list[Sample]:
    samples = []
    for where, record in local_rows(path, LOCAL_FIELDS)[:limit]:
        answer = record["answer"]
        if not isinstance(answer, list) or not answer or not all(isinstance(item, str) for item in answer):
            raise DataError(f"{where}: field 'answer' must be a non-empty list of strings")
        instruction = field(record, "instruction", where)
        samples.append(
            Sample(
                field(record, "id", where),
                field(record, "question", where),
                answer,
                field(record, "context", where),
                {"instruction": instruction},
            )
        )
    return samples


def load_generated(
    name: str,
    source: str,
    limit: int | None,
    count: int,
    tokenizer: PreTrainedTokenizerBase | None,
    generate: Callable[[int], Sample],
) -> list[Sample]:
    """Samples ``generate(0), generate(1), ...`` ("generator" / "auto"): ``limit`` of them, or ``count``
    without a limit (a generator has no end, so a limit is never cut to ``count``); or the records of a
    local file."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{name}: count {count!r} must be a positive integer")

    def generated(limit: int | None) -> list[Sample]:
        if tokenizer is None:
            raise ValueError(f"{name}: the generator measures length in the model's tokens; pass tokenizer=")
        return [generate(index) for index in range(count if limit is None else limit)]

    return load_from(name, source, limit, {"generator": generated}, _local)
