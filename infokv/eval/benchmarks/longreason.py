"""LongReason: reasoning over facts scattered through a long context, with and without chain of thought.

What is measured: whether the model can find the few sentences that state a problem inside a long
context, and reason over them to the answer of a question asked at the end. Accuracy per sample is 1
for a correct final answer, else 0.

Sources:

* ``builder`` (default, offline): a LongReason-style set built here. Each GSM8K problem (offline mirror,
  :mod:`infokv.eval.benchmarks.gsm8k`) is split into sentences; all but the last (the facts) are scattered,
  in order, at seeded sentence boundaries of Paul Graham's essays (:mod:`infokv.eval.benchmarks.haystack`),
  and the last (the question) is asked after the context; one-sentence problems are skipped. The
  amount of essay text is fitted so that the chat-formatted prompt has ``tokens`` tokens of the
  model's tokenizer (within 0.5%; pass ``tokenizer=``). The gold answer is GSM8K's number, scored
  with math-verify (:mod:`infokv.eval.benchmarks.math_answers`). Deterministic in (tokenizer, tokens,
  seed, problem).
* ``hub``: the official ``lz1bytedance/LongReason`` (794 multiple-choice questions; one split per
  context length: ``8k``, ``16k``, ``32k``, ``64k``, ``128k``, picked by ``tokens``). Row fields:
  ``background`` (the expanded long context), ``final_inquiry`` (the question with its options),
  ``answer`` (the option letter), ``example_idx``, plus ``question``, ``prompt``, ``analysis``
  (kept in ``meta``). Scored by the option letter.
* a local ``.json``/``.jsonl`` file of rows shaped like the hub's.

Answer extraction: numbers as in :func:`infokv.eval.benchmarks.math_answers.extract_answer`; option letters
from ``\\boxed{X}``, "the answer is (X)", or a reply that starts with the letter (direct answers).
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks import gsm8k
from infokv.eval.benchmarks.base import Prompt, Sample, Score, chat_prompt
from infokv.eval.benchmarks.haystack import fit, scatter, split_sentences
from infokv.eval.benchmarks.math_answers import METRIC, last_boxed, score_math
from infokv.eval.benchmarks.math_problems import COT_INSTRUCTION, DIRECT_INSTRUCTION
from infokv.eval.benchmarks.sources import field, hub_rows, load_from, local_rows

NAME = "longreason"
SOURCES = ("builder", "hub")
HUB_DATASET = "lz1bytedance/LongReason"
HUB_SPLITS = {8192: "8k", 16384: "16k", 32768: "32k", 65536: "64k", 131072: "128k"}
HUB_FIELDS = ("background", "final_inquiry", "answer", "example_idx")
NUMBER, CHOICE = "number", "choice"

HEADS = {
    NUMBER: (
        "Below is a long text. The sentences of a short math word problem are scattered through it; "
        "the rest is unrelated. Find them, then answer the question at the end."
    ),
    CHOICE: "Below is some background. Read it, then answer the multiple-choice question at the end.",
}
INSTRUCTIONS = {
    (NUMBER, True): COT_INSTRUCTION,
    (NUMBER, False): DIRECT_INSTRUCTION,
    (CHOICE, True): 'Reason step by step, then end with "The answer is (X)", X being the option\'s letter.',
    (CHOICE, False): "Reply with only the letter of the correct option, with no explanation.",
}
_LETTER = r"\(?([A-J])\)?"
_CHOICE_PATTERNS = (
    re.compile(rf"answer\s+is\s*:?\s*(?:option\s+)?{_LETTER}(?![A-Za-z])", re.IGNORECASE),
    re.compile(rf"^\s*(?:option\s+)?{_LETTER}(?![A-Za-z])"),
)


def prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """Head, long context, then "Question: ..." and the instruction (reason step by step, or answer only)."""
    kind = sample.meta.get("format", NUMBER)
    head = f"{HEADS[kind]}\n\n{sample.context}\n\n"
    return chat_prompt(tokenizer, head, f"Question: {sample.question}\n\n{INSTRUCTIONS[kind, cot]}")


def build(problem: Sample, tokenizer: PreTrainedTokenizerBase, tokens: int, seed: int) -> Sample:
    """The long-context version of one short ``problem``: its facts scattered through essays so that
    ``prompt(sample, cot=True, tokenizer)`` has ``tokens`` tokens (within 0.5%)."""
    sentences = split_sentences(problem.question)
    facts, question = sentences[:-1], sentences[-1]
    key = f"longreason-{seed}-{problem.id}"
    meta = {"format": NUMBER, "facts": facts, "problem": problem.question, "tokens": tokens, "seed": seed}

    def sample_with(filler: str) -> Sample:
        context = scatter(filler, facts, key)
        return Sample(f"longreason-{tokens}-s{seed}-{problem.id}", question, problem.answer, context, meta)

    filler = fit(tokenizer, tokens, lambda text: prompt(sample_with(text), True, tokenizer).text, key)
    return sample_with(filler)


def _builder(
    tokenizer: PreTrainedTokenizerBase | None, tokens: int, seed: int, problems: str, limit: int | None
) -> list[Sample]:
    if tokenizer is None:
        raise ValueError("longreason: the builder measures length in the model's tokens; pass tokenizer=")
    # A one-sentence problem has no facts to scatter: it would test nothing about the long context.
    usable = [problem for problem in gsm8k.load(problems) if len(split_sentences(problem.question)) > 1]
    return [build(problem, tokenizer, tokens, seed) for problem in usable[:limit]]


def from_hub_row(row: dict[str, Any], split: str, where: str) -> Sample:
    """One hub-shaped row as a sample: background -> context, final inquiry -> question, letter -> answer."""
    answer = field(row, "answer", where).strip("() .").upper()
    meta = {"format": CHOICE, "split": split}
    meta.update({key: row[key] for key in ("question", "analysis") if row.get(key) is not None})
    return Sample(
        f"longreason-{split}-{field(row, 'example_idx', where)}",
        field(row, "final_inquiry", where),
        answer,
        field(row, "background", where),
        meta,
    )


def _hub_split(tokens: int) -> str:
    if tokens not in HUB_SPLITS:
        allowed = ", ".join(f"{length} ({name})" for length, name in HUB_SPLITS.items())
        raise ValueError(f"longreason: the hub has no split for tokens={tokens!r}; allowed: {allowed}")
    return HUB_SPLITS[tokens]


def _hub(tokens: int, limit: int | None) -> list[Sample]:
    split = _hub_split(tokens)
    rows = islice(hub_rows(HUB_DATASET, split, fields=HUB_FIELDS), limit)
    return [from_hub_row(row, split, where) for where, row in rows]


def _local(path: Path, limit: int | None) -> list[Sample]:
    return [from_hub_row(row, path.stem, where) for where, row in local_rows(path, HUB_FIELDS)[:limit]]


def load(
    source: str = "auto",
    limit: int | None = None,
    tokens: int = 8192,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    problems: str = "auto",
) -> list[Sample]:
    """LongReason samples of ``tokens`` tokens: built from GSM8K ``problems`` ("builder", the default;
    needs ``tokenizer``), the official hub split for that length ("hub"), or a local hub-shaped file."""
    loaders = {
        "builder": lambda n: _builder(tokenizer, tokens, seed, problems, n),
        "hub": lambda n: _hub(tokens, n),
    }
    return load_from(NAME, source, limit, loaders, _local)


def extract_choice(completion: str) -> str | None:
    """The option letter stated in ``completion`` (boxed, "the answer is (X)", or a leading letter)."""
    boxed = last_boxed(completion)
    if boxed is not None:
        completion = boxed
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(completion)
        if found:
            return found[-1].upper()
    return None


def score(sample: Sample, completion: str) -> Score:
    """Accuracy: 1 for the gold number (math-verify) or the gold option letter, else 0."""
    if sample.meta.get("format", NUMBER) == NUMBER:
        return score_math(sample.answer, completion)
    extracted = extract_choice(completion)
    value = float(extracted == sample.answer)
    return Score(value, {METRIC: value}, extracted, {"gold": sample.answer})

