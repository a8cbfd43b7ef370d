"""LiveCodeBench code generation (Jain et al. 2024): contest problems, scored by running every test.

What is measured: pass@1 of one completion — 1 when the program passes *all* of the problem's test
cases (public, then private) in the sandbox (:mod:`infokv.eval.sandbox.process`), else 0; testing stops at
the first failing case. Each case is its own sandbox run (a fresh process):

* ``stdin`` tests (AtCoder, Codeforces): the program reads the case's input on stdin; its stdout must
  equal the expected output line by line after whitespace normalisation (each line's whitespace-separated
  tokens, trailing blank lines ignored);
* ``functional`` tests (LeetCode): the case's input is one JSON value per line, the arguments of
  ``Solution().<func_name>(*args)`` (``func_name`` from the row's metadata); the return value, serialised
  to JSON by the sandbox's harness (tuples become lists) and parsed here, must equal the expected JSON
  output.

Both comparisons are made in the scorer's process, never in the program's: the expected outputs never
enter the sandbox, and what is compared holds only plain values (JSON), so neither replacing ``json`` or
``print`` nor returning an object whose ``__eq__`` is always true can make a wrong program pass. A stdin
program may end with ``sys.exit()`` (code 0 or None); any other exit before the harness's verdict fails
(:mod:`infokv.eval.sandbox.process`).

Like LiveCodeBench's own harness, the program runs after a prelude of common imports (``typing``,
``collections``, ``math``, ``heapq``, ``bisect``, ``itertools``, ``functools``, ``string``, ``re``), as
starter code uses names such as ``List`` unimported. The code is the completion's last fenced block
(:func:`infokv.eval.benchmarks.code_answers.extract_code`); ``Score.extracted`` is it, ``details`` keep the
number of cases passed, the failing case and the sandbox's reason.

Sources:

* ``hub``: ``livecodebench/code_generation_lite``; ``release`` picks the version (``release_v1`` ...
  ``release_v6``, ``release_latest``: cumulative; ``v1`` ... ``v6``: only that release's new problems),
  read as the release's JSONL files of the dataset repository (``hf://datasets/...`` through
  ``datasets``' JSON builder: the dataset's loading script is not run, as ``datasets`` >= 4 runs none);
* a local ``.json``/``.jsonl`` file of rows shaped like the hub's: ``question_id``, ``question_content``,
  ``starter_code``, ``public_test_cases`` and ``private_test_cases`` (JSON lists of ``{"input",
  "output", "testtype"}``, as text; the private ones may be base64 of zlib of a pickled JSON string, as
  on the hub), ``metadata`` (JSON text with ``func_name`` for functional problems), and optionally
  ``question_title``, ``platform``, ``difficulty``, ``contest_date``.

There is no offline mirror. Ids are ``lcb-<question_id>``.
"""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import DataError, Prompt, Sample, Score, chat_prompt, require
from infokv.eval.benchmarks.code_answers import extract_code, run_details
from infokv.eval.benchmarks.sources import field, load_from, local_rows
from infokv.eval.sandbox.process import Limits, RunResult, run_python

NAME = "livecodebench"
SOURCES = ("hub",)
METRIC = "pass@1"
HUB_DATASET = "livecodebench/code_generation_lite"
RELEASE_FILES = {
    f"release_v{version}": ["test.jsonl"] + [f"test{index}.jsonl" for index in range(2, version + 1)]
    for version in range(1, 7)
}
RELEASE_FILES["release_latest"] = RELEASE_FILES["release_v6"]
RELEASE_FILES |= {f"v{version}": RELEASE_FILES[f"release_v{version}"][-1:] for version in range(1, 7)}
FIELDS = (
    "question_id", "question_content", "starter_code", "public_test_cases", "private_test_cases", "metadata"
)
TEST_TYPES = ("stdin", "functional")
PRELUDE = (
    "from typing import *\nfrom collections import *\n"
    "import math, heapq, bisect, itertools, functools, string, re, collections\n\n"
)
ROLE = (  # in the user turn, not a system turn: the paper's R1-distilled models are used without one
    "You will be given a programming problem. Write a correct Python program that meets the "
    "specification and passes all tests."
)
STDIN_FORMAT = (
    "Read the input from stdin, solve the problem and write the answer to stdout (do not test on the "
    "sample inputs directly). Enclose your code in a single ```python code block."
)
STARTER_FORMAT = "Complete the following starter code and enclose your code in a single ```python code block:"
COT_INSTRUCTION = "Think step by step about the solution first, then give the code."
DIRECT_INSTRUCTION = "Give only the code, without explanation."


def decode_tests(text: Any, where: str, name: str) -> list[dict[str, str]]:
    """Test cases from a row's field: JSON text, or base64(zlib(pickle(JSON text))) as on the hub."""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {name!r} must be text, got {type(text).__name__}")
    try:
        cases = json.loads(text)
    except json.JSONDecodeError:
        try:
            cases = json.loads(pickle.loads(zlib.decompress(base64.b64decode(text.encode()))))
        except Exception:
            raise DataError(f"{where}: field {name!r} is neither JSON nor base64/zlib/pickle JSON") from None
    if not isinstance(cases, list):
        raise DataError(f"{where}: field {name!r} must hold a list of test cases")
    for index, case in enumerate(cases):
        if not isinstance(case, dict):
            raise DataError(f"{where}: field {name!r} case {index} is not an object")
        require(case, ("input", "output", "testtype"), f"{where}: field {name!r} case {index}")
        if case["testtype"] not in TEST_TYPES:
            raise DataError(f"{where}: field {name!r} case {index} has testtype {case['testtype']!r}")
    return cases


def from_row(row: dict[str, Any], where: str, timeout: float) -> Sample:
    """The sample of one hub-shaped row; the answer is the list of test cases (public first)."""
    require(row, FIELDS, where)
    tests = decode_tests(row["public_test_cases"], where, "public_test_cases")
    tests += decode_tests(row["private_test_cases"], where, "private_test_cases")
    if not tests:
        raise DataError(f"{where}: no test cases")
    try:
        metadata = json.loads(row["metadata"]) if isinstance(row["metadata"], str) else dict(row["metadata"])
    except (json.JSONDecodeError, TypeError, ValueError):
        raise DataError(f"{where}: field 'metadata' is not a JSON object") from None
    if any(case["testtype"] == "functional" for case in tests) and not metadata.get("func_name"):
        raise DataError(f"{where}: field 'metadata' has no 'func_name' for functional tests")
    meta = {key: row.get(key) for key in ("question_title", "platform", "difficulty", "contest_date")}
    meta |= {"starter_code": row["starter_code"], "func_name": metadata.get("func_name"), "timeout": timeout}
    question = field(row, "question_content", where)
    return Sample(f"lcb-{field(row, 'question_id', where)}", question, tests, meta=meta)


def _hub(release: str, limit: int | None, timeout: float) -> list[Sample]:
    import datasets

    files = [f"hf://datasets/{HUB_DATASET}/{name}" for name in RELEASE_FILES[release]]
    rows = datasets.load_dataset("json", data_files=files, split="train")
    return [
        from_row(dict(row), f"{HUB_DATASET}[{release}]:row {index}", timeout)
        for index, row in enumerate(islice(rows, limit))
    ]


def load(
    source: str = "auto", limit: int | None = None, release: str = "release_v5", timeout: float = 6.0
) -> list[Sample]:
    """LiveCodeBench problems of ``release`` from ``source`` ("auto" = "hub", or a local path); ``timeout``
    in seconds per test-case run."""
    if release not in RELEASE_FILES:
        raise ValueError(f"livecodebench: release {release!r} is not one of {', '.join(RELEASE_FILES)}")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"livecodebench: timeout {timeout!r} must be a positive number of seconds")

    def local(path: Path, n: int | None) -> list[Sample]:
        return [from_row(row, where, timeout) for where, row in local_rows(path, FIELDS)[:n]]

    return load_from(NAME, source, limit, {"hub": lambda n: _hub(release, n, timeout)}, local)


def prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """The problem, the answer format (starter code to complete, or a stdin/stdout program), the
    instruction (reason first with ``cot``)."""
    starter = sample.meta["starter_code"]
    answer_format = STDIN_FORMAT
    if starter.strip():
        answer_format = f"{STARTER_FORMAT}\n```python\n{starter.rstrip()}\n```"
    instruction = COT_INSTRUCTION if cot else DIRECT_INSTRUCTION
    request = f"{ROLE}\n\n### Question:\n{sample.question}\n\n### Format: {answer_format}\n\n{instruction}"
    return chat_prompt(tokenizer, "", request)


def normalised_lines(text: str) -> list[list[str]]:
    """Each line's whitespace-separated tokens, trailing blank lines dropped."""
    return [line.split() for line in text.strip().splitlines()]


def _run_case(
    code: str, case: dict[str, str], func_name: str | None, limits: Limits
) -> tuple[RunResult, bool]:
    """One sandbox run of one test case; (the run, whether its output was right). The comparison is made
    here, outside the sandbox: the program's stdout, or the JSON of the method's return value."""
    if case["testtype"] == "stdin":
        result = run_python([code], stdin=case["input"], limits=limits, program_may_exit=True)
        return result, result.passed and normalised_lines(result.stdout) == normalised_lines(case["output"])
    lines = case["input"].strip().splitlines()
    call = f"Solution().{func_name}(*[__import__('json').loads(line) for line in {lines!r}])"
    result = run_python([code], limits=limits, expression=call)
    return result, result.passed and json.loads(result.value) == json.loads(case["output"])


def score(sample: Sample, completion: str) -> Score:
    """pass@1: 1 when the extracted program passes every test case in the sandbox, else 0."""
    code = extract_code(completion)
    limits = Limits(timeout=sample.meta["timeout"])
    passed = 0
    details: dict[str, Any] = {"cases": len(sample.answer)}
    for index, case in enumerate(sample.answer):
        result, right = _run_case(PRELUDE + code, case, sample.meta["func_name"], limits)
        details |= run_details(result)
        if not right:
            details |= {"failed_case": index, "testtype": case["testtype"]}
            if result.passed:
                details |= {"reason": "failed", "detail": "wrong output", "stdout": result.stdout[-500:]}
                if result.value is not None:
                    details["returned"] = result.value[:500]
            break
        passed += 1
    details["cases_passed"] = passed
    value = float(passed == len(sample.answer))
    return Score(value, {METRIC: value}, extracted=code, details=details)
