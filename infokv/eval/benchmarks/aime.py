"""AIME 2024 / 2025: competition math with integer answers 0-999; accuracy of the final answer.

What is measured: whether the model's final answer (boxed, or stated plainly) is equal to the official
answer, checked with ``math-verify`` (:mod:`infokv.eval.benchmarks.math_answers`). ``year`` picks the set.

Sources:

* ``offline`` (default): the AIME problems of the MMATH mirror (:mod:`infokv.eval.benchmarks.math_problems`):
  2024 I and II (30), 2025 I (15).
* ``hub``: 2024 — ``HuggingFaceH4/aime_2024`` (split ``train``, fields ``problem``, ``answer``);
  2025 — ``opencompass/AIME2025`` configs ``AIME2025-I`` and ``AIME2025-II`` (split ``test``, fields
  ``question``, ``answer``), 30 problems in contest order.
* a local ``.json``/``.jsonl`` file of rows shaped like that year's hub rows.

Ids are ``aime{year}-{i}`` with ``i`` the problem's position in the year's set (I 1-15, then II 1-15),
the same for every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infokv.eval.benchmarks.base import Sample, Score
from infokv.eval.benchmarks.math_answers import score_math
from infokv.eval.benchmarks.math_problems import math_prompt, mmath_samples
from infokv.eval.benchmarks.sources import field, hub_rows, load_from, local_rows

NAME = "aime"
SOURCES = ("offline", "hub")


@dataclass(frozen=True)
class HubSet:
    dataset: str
    configs: tuple[str | None, ...]
    split: str
    problem_field: str


HUB = {
    2024: HubSet("HuggingFaceH4/aime_2024", (None,), "train", "problem"),
    2025: HubSet("opencompass/AIME2025", ("AIME2025-I", "AIME2025-II"), "test", "question"),
}

prompt = math_prompt


def from_hub_row(row: dict[str, Any], index: int, year: int, where: str) -> Sample:
    """The sample of one hub-shaped row (``index`` = position in the year's set)."""
    problem = field(row, HUB[year].problem_field, where)
    return Sample(f"aime{year}-{index}", problem, field(row, "answer", where), meta={"year": year})


def _hub(year: int, limit: int | None) -> list[Sample]:
    spec = HUB[year]
    samples: list[Sample] = []
    for config in spec.configs:
        for where, row in hub_rows(spec.dataset, spec.split, config, ("answer", spec.problem_field)):
            samples.append(from_hub_row(row, len(samples), year, where))
            if len(samples) == limit:
                return samples
    return samples


def _local(year: int, path: Path, limit: int | None) -> list[Sample]:
    rows = local_rows(path, ("answer", HUB[year].problem_field))[:limit]
    return [from_hub_row(row, index, year, where) for index, (where, row) in enumerate(rows)]


def load(source: str = "auto", limit: int | None = None, year: int = 2024) -> list[Sample]:
    """AIME ``year`` (2024 or 2025) problems from ``source`` ("auto" = "offline", "hub", or a path)."""
    if year not in HUB:
        raise ValueError(f"aime: year {year!r} is not one of {sorted(HUB)}")
    loaders = {
        "offline": lambda n: mmath_samples(f"AIME{year}", f"aime{year}", n),
        "hub": lambda n: _hub(year, n),
    }
    return load_from(NAME, source, limit, loaders, lambda path, n: _local(year, path, n))


def score(sample: Sample, completion: str) -> Score:
    """Accuracy: 1 when the completion's final answer equals ``sample.answer`` (math-verify), else 0."""
    return score_math(sample.answer, completion)
