"""Passkey retrieval: copy a five-digit number hidden in long filler text (generator, offline).

What is measured: whether a compressed KV cache kept the needle's entries, on a task the embedded
SmolLM2-135M solves with a full cache (see :mod:`infokv.eval.benchmarks.passkey_prompts`, which builds
the prompts). The
context is the instruction, the filler and the needle; the question follows it. ``score`` is 1 when
the gold number appears in the completion (RULER-style string match), else 0.

Sources: ``"generator"`` (the default under ``"auto"``; needs ``tokenizer=`` and ``tokens=`` because
lengths are counted in the model's tokens) or a local JSON/JSONL file with fields ``id``, ``context``,
``question`` and ``answer``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks import passkey_prompts
from infokv.eval.benchmarks.base import Prompt, Sample, Score, chat_prompt, check_limit, check_samples
from infokv.eval.benchmarks.sources import field, local_rows

NAME = "passkey"
SOURCES = ("generator",)
METRIC = "accuracy"
LOCAL_FIELDS = ("id", "question", "answer", "context")  # in the order of Sample's fields


def load(
    source: str = "auto",
    limit: int | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tokens: int = 2048,
    seed: int = 0,
) -> list[Sample]:
    """``limit`` samples (default 16) of about ``tokens`` tokens with seeds ``seed, seed + 1, ...``."""
    check_limit(NAME, limit)
    if source not in ("auto", *SOURCES):
        rows = local_rows(Path(source), LOCAL_FIELDS)[:limit]
        samples = [Sample(*(field(row, name, where) for name in LOCAL_FIELDS)) for where, row in rows]
        return check_samples(samples, f"{NAME} source {source}")
    if tokenizer is None:
        raise ValueError("passkey: the generator needs tokenizer= (lengths are counted in model tokens)")
    count = 16 if limit is None else limit
    samples = []
    for index in range(count):
        generated = passkey_prompts.passkey(tokenizer, seed + index, tokens)
        samples.append(
            Sample(
                id=f"passkey-{tokens}-{seed + index}",
                question="\n\n" + passkey_prompts.QUESTION,
                answer=generated.answer,
                context=generated.body,
                meta={"depth": generated.depth, "tokens": generated.tokens},
            )
        )
    return samples


def prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """The chat-formatted prompt; passkey retrieval has no reasoning, so ``cot`` changes nothing."""
    return chat_prompt(tokenizer, sample.context, sample.question)


def score(sample: Sample, completion: str) -> Score:
    """1.0 when the gold passkey appears in the completion."""
    value = passkey_prompts.score(completion, sample.answer)
    found = "".join(ch for ch in completion if ch.isdigit())[:16]
    return Score(value, {METRIC: value}, extracted=found)
