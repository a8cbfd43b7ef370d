"""RULER variable tracking: follow chains of variable assignments scattered through a long context.

What is measured: multi-hop tracing over a long context. ``chains`` chains of ``hops`` assignments
("VAR ABCDE = 12345", then "VAR FGHIJ = VAR ABCDE", ...) are scattered, each in its own order, at
seeded depths through Paul Graham's essays; the query asks for every variable that holds the first
chain's value. The other chains are distractors.

Score: RULER's ``string_match_all`` recall of the chain's variable names
(:mod:`infokv.eval.benchmarks.ruler_common`). Offline generator written for infokv (the task format follows
NVIDIA RULER; no code taken from it); length in tokens of the model's tokenizer; deterministic in
(tokenizer, tokens, seed, index).
"""

from __future__ import annotations

import random
import string
from itertools import pairwise

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import Sample
from infokv.eval.benchmarks.ruler_common import haystack_sample, load_generated, recall_score, ruler_prompt

NAME = "ruler_vt"
SOURCES = ("generator",)
INSTRUCTION = "Memorize and track the chains of variable assignments hidden in the following text."
QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
_NAME_LETTERS = 5

prompt = ruler_prompt
score = recall_score


def chain_sample(
    index: int, tokenizer: PreTrainedTokenizerBase, tokens: int, seed: int, chains: int, hops: int
) -> Sample:
    """Sample ``index`` of the set given by (tokens, seed, chains, hops)."""
    sample_id = f"{NAME}-{tokens}-s{seed}-c{chains}h{hops}-{index}"
    rng = random.Random(sample_id)
    names: list[str] = []
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=_NAME_LETTERS))
        if name not in names:
            names.append(name)
    values = rng.sample(range(10_000, 100_000), chains)
    statements: list[list[str]] = []
    for chain, value in enumerate(values):
        variables = names[chain * (hops + 1) : (chain + 1) * (hops + 1)]
        statements.append(
            [f"VAR {variables[0]} = {value}."]
            + [f"VAR {after} = VAR {before}." for before, after in pairwise(variables)]
        )
    # Hop by hop across chains, so that every chain keeps its own order in the context.
    ordered = [chain[hop] for hop in range(hops + 1) for chain in statements]
    answer = names[: hops + 1]
    meta = {"chains": chains, "hops": hops, "value": str(values[0])}
    question = QUESTION.format(value=values[0])
    return haystack_sample(sample_id, INSTRUCTION, ordered, question, answer, tokenizer, tokens, meta)


def load(
    source: str = "auto",
    limit: int | None = None,
    tokens: int = 4096,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    count: int = 50,
    chains: int = 1,
    hops: int = 4,
) -> list[Sample]:
    """``count`` generated variable-tracking samples of ``tokens`` tokens ("generator", needs
    ``tokenizer``), or a local file of samples."""
    for option, value in (("chains", chains), ("hops", hops)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{NAME}: {option} {value!r} must be a positive integer")

    def generate(index: int) -> Sample:
        return chain_sample(index, tokenizer, tokens, seed, chains, hops)

    return load_generated(NAME, source, limit, count, tokenizer, generate)
