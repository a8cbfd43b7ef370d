"""MATH-500: competition math (algebra ... precalculus), accuracy of the final answer.

What is measured: whether the model's final answer (boxed, or stated plainly) is mathematically equal to
the reference answer, checked with ``math-verify`` (:mod:`infokv.eval.benchmarks.math_answers`), which
handles fractions, radicals, intervals, tuples and the like.

Sources:

* ``offline`` (default): the MMATH mirror's 311 MATH-500 problems with integer answers
  (:mod:`infokv.eval.benchmarks.math_problems`) — a subset, not the full 500;
* ``hub``: ``HuggingFaceH4/MATH-500`` split ``test`` (500 rows: ``problem``, ``answer``, ``subject``,
  ``level``, ``unique_id``);
* a local ``.json``/``.jsonl`` file of rows shaped like the hub's.

Ids are ``math500-{i}`` with ``i`` the row of ``HuggingFaceH4/MATH-500``, the same for every source.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from infokv.eval.benchmarks.base import Sample, Score
from infokv.eval.benchmarks.math_answers import score_math
from infokv.eval.benchmarks.math_problems import math_prompt, mmath_samples
from infokv.eval.benchmarks.sources import field, hub_rows, load_from, local_rows

NAME = "math500"
SOURCES = ("offline", "hub")
HUB_DATASET = "HuggingFaceH4/MATH-500"
HUB_SPLIT = "test"
FIELDS = ("problem", "answer")

prompt = math_prompt


def from_hub_row(row: dict[str, Any], index: int, where: str) -> Sample:
    """The sample of one hub-shaped row (``index`` = its row in the hub split)."""
    meta = {key: row[key] for key in ("subject", "level", "unique_id") if row.get(key) is not None}
    return Sample(f"math500-{index}", field(row, "problem", where), field(row, "answer", where), meta=meta)


def _hub(limit: int | None) -> list[Sample]:
    rows = islice(hub_rows(HUB_DATASET, HUB_SPLIT, fields=FIELDS), limit)
    return [from_hub_row(row, index, where) for index, (where, row) in enumerate(rows)]


def _local(path: Path, limit: int | None) -> list[Sample]:
    rows = local_rows(path, FIELDS)[:limit]
    return [from_hub_row(row, index, where) for index, (where, row) in enumerate(rows)]


def load(source: str = "auto", limit: int | None = None) -> list[Sample]:
    """MATH-500 problems from ``source`` ("auto" = "offline", "hub", or a local path)."""
    loaders = {"offline": lambda n: mmath_samples("MATH500", "math500", n), "hub": _hub}
    return load_from(NAME, source, limit, loaders, _local)


def score(sample: Sample, completion: str) -> Score:
    """Accuracy: 1 when the completion's final answer equals ``sample.answer`` (math-verify), else 0."""
    return score_math(sample.answer, completion)
