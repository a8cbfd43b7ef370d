"""RULER needle in a haystack: retrieve the magic numbers of given keys from a long essay context.

What is measured: retrieval of facts planted anywhere in a long context — the first thing a KV-cache
compressor can break. ``keys`` needles "One of the special magic numbers for <key> is: <7 digits>."
(``values`` per key) are scattered at seeded depths through Paul Graham's essays; the query asks for the
numbers of ``queries`` of the keys (the other keys are distractors). The variants of RULER map to
options: single (keys=1), multi-key (keys>1), multi-value (values>1), multi-query (queries>1).

Score: RULER's ``string_match_all`` recall of the asked numbers (:mod:`infokv.eval.benchmarks.ruler_common`).
Offline generator written for infokv (the task format follows NVIDIA RULER; no code taken from it);
length in tokens of the model's tokenizer; deterministic in (tokenizer, tokens, seed, index).
"""

from __future__ import annotations

import functools
import random
import re

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import Sample
from infokv.eval.benchmarks.haystack import essay_filler
from infokv.eval.benchmarks.ruler_common import haystack_sample, load_generated, recall_score, ruler_prompt

NAME = "ruler_niah"
SOURCES = ("generator",)
INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards."
)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = "What are all the special magic numbers for {keys} mentioned in the provided text?"
_VOCABULARY_CHARS = 400_000

prompt = ruler_prompt
score = recall_score


@functools.lru_cache(maxsize=1)
def key_words() -> tuple[str, ...]:
    """Lower-case words of 5-10 letters from the essays, the vocabulary of needle keys."""
    return tuple(sorted(set(re.findall(r"\b[a-z]{5,10}\b", essay_filler("vocabulary", _VOCABULARY_CHARS)))))


def needle_sample(
    index: int,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    seed: int,
    keys: int,
    values: int,
    queries: int,
) -> Sample:
    """Sample ``index`` of the set given by (tokens, seed, keys, values, queries)."""
    sample_id = f"{NAME}-{tokens}-s{seed}-k{keys}v{values}q{queries}-{index}"
    rng = random.Random(sample_id)
    words = key_words()
    names: list[str] = []
    while len(names) < keys:
        name = f"{rng.choice(words)}-{rng.choice(words)}"
        if name not in names:
            names.append(name)
    numbers = {name: [str(rng.randint(1_000_000, 9_999_999)) for _ in range(values)] for name in names}
    needles = [NEEDLE.format(key=name, value=value) for name in names for value in numbers[name]]
    rng.shuffle(needles)
    asked = rng.sample(names, queries)
    answer = [value for name in asked for value in numbers[name]]
    question = QUESTION.format(keys=", ".join(asked))
    meta = {"keys": names, "asked": asked}
    return haystack_sample(sample_id, INSTRUCTION, needles, question, answer, tokenizer, tokens, meta)


def load(
    source: str = "auto",
    limit: int | None = None,
    tokens: int = 4096,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    count: int = 50,
    keys: int = 1,
    values: int = 1,
    queries: int = 1,
) -> list[Sample]:
    """``count`` generated needle samples of ``tokens`` tokens ("generator", needs ``tokenizer``), or a
    local file of samples."""
    for option, value in (("keys", keys), ("values", values), ("queries", queries)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{NAME}: {option} {value!r} must be a positive integer")
    if queries > keys:
        raise ValueError(f"{NAME}: queries {queries} must not exceed keys {keys}")

    def generate(index: int) -> Sample:
        return needle_sample(index, tokenizer, tokens, seed, keys, values, queries)

    return load_generated(NAME, source, limit, count, tokenizer, generate)
