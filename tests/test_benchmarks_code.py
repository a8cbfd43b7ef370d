"""Code benchmarks: HumanEval's canonical solutions in the sandbox, LiveCodeBench on a hand-made fixture,
code extraction, loading errors, and the pass@k estimator against brute-force enumeration."""

from __future__ import annotations

import base64
import itertools
import json
import pickle
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_hub import fake_hub
from transformers import AutoTokenizer

from infokv.eval import benchmarks
from infokv.eval.benchmarks import humaneval, livecodebench
from infokv.eval.benchmarks.base import DataError
from infokv.eval.benchmarks.code_answers import extract_code
from infokv.eval.benchmarks.passk import mean_pass_at_k, pass_at_k
from infokv.hf.models import ensure_embedded


@pytest.fixture(scope="module")
def problems():
    return humaneval.load()


def score_all(module, samples, completions):
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(module.score, samples, completions))


def test_every_humaneval_canonical_solution_passes_and_a_wrong_body_fails(problems):
    assert len(problems) == 164 and len({p.id for p in problems}) == 164
    assert problems[0].id == "HumanEval/0" and problems[0].meta["entry_point"] == "has_close_elements"
    right = score_all(humaneval, problems, [p.meta["canonical_solution"] for p in problems])
    failures = [(p.id, s.details) for p, s in zip(problems, right, strict=True) if s.value != 1]
    assert failures == []
    assert right[0].metrics == {"pass@1": 1.0} and right[0].details["reason"] == "passed"
    wrong = score_all(humaneval, problems, ["    return None\n"] * len(problems))
    assert [s.value for s in wrong] == [0.0] * 164
    assert {s.details["reason"] for s in wrong} == {"failed"}
    assert "AssertionError" in wrong[0].details["stderr"]


def test_humaneval_reads_a_whole_function_from_a_fenced_block_after_reasoning(problems):
    problem = problems[2]  # truncate_number: a one-line body
    whole = problem.question + problem.meta["canonical_solution"]
    chat = f"<think>modulo 1 gives the decimals</think>Here it is:\n```python\n{whole}```\nDone."
    assert humaneval.score(problem, chat).value == 1.0
    flush_left = "return number % 1.0\n"  # a body the model wrote without indentation
    assert humaneval.score(problem, flush_left).value == 1.0
    problem = humaneval.load(limit=3, timeout=1.5)[2]
    looping = humaneval.score(problem, "```python\ndef truncate_number(x):\n    while True: pass\n```")
    assert (looping.value, looping.details["reason"]) == (0.0, "timeout")
    assert "while True" in looping.extracted


def test_code_extraction_takes_the_last_block_and_accepts_an_unclosed_fence():
    assert extract_code("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("intro\n```python\nc = 3\n") == "c = 3\n"
    assert extract_code("    return 4\n") == "    return 4\n"
    assert extract_code("<think>```python\nx = 0\n```</think>y = 5") == "y = 5"


def test_prompts_show_the_function_and_ask_for_a_code_block(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded("smollm2-135m"))
    sample = humaneval.load(limit=1)[0]
    direct, cot = humaneval.prompt(sample, False, tokenizer), humaneval.prompt(sample, True, tokenizer)
    assert sample.question.rstrip() in direct.text and "```python" in direct.question
    assert "step by step" in cot.text and "step by step" not in direct.text
    assert direct.text.startswith(direct.context) and direct.text.endswith("assistant\n")
    functional, stdin = livecodebench.load(write_fixture_path(tmp_path))
    assert "class Solution" in livecodebench.prompt(functional, False, tokenizer).text
    assert "stdin" in livecodebench.prompt(stdin, True, tokenizer).text


def test_humaneval_hub_and_local_rows_and_bad_data(monkeypatch, tmp_path, problems):
    row = {name: problems[1].meta.get(name) for name in ("entry_point", "canonical_solution")}
    row |= {"task_id": problems[1].id, "prompt": problems[1].question, "test": problems[1].answer}
    calls = fake_hub(monkeypatch, {("openai/openai_humaneval", None, "test"): [row]})
    assert humaneval.load("hub") == [problems[1]] and calls == [("openai/openai_humaneval", None, "test")]
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "test": None}) + "\n")
    with pytest.raises(DataError, match=r"he.jsonl:2: missing field 'test'"):
        humaneval.load(str(path))
    with pytest.raises(ValueError, match="timeout -1"):
        humaneval.load(timeout=-1)
    assert {"humaneval", "livecodebench"} <= set(benchmarks.available())


# ---------------------------------------------------------------- LiveCodeBench on a hand-made fixture

def hub_private(cases: list[dict]) -> str:
    """Private test cases encoded as on the hub: base64 of zlib of a pickled JSON string."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def case(given: str, expected: str, kind: str) -> dict:
    return {"input": given, "output": expected, "testtype": kind}


FUNCTIONAL = {
    "question_id": "two-sum",
    "question_title": "Two Sum",
    "question_content": "Return the indices of the two numbers of nums that add up to target.",
    "platform": "leetcode",
    "difficulty": "easy",
    "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n",
    "public_test_cases": json.dumps([case("[2, 7, 11, 15]\n9", "[0, 1]", "functional")]),
    "private_test_cases": hub_private([case("[3, 2, 4]\n6", "[1, 2]", "functional")]),
    "metadata": json.dumps({"func_name": "twoSum"}),
}
STDIN = {
    "question_id": "abc000_a",
    "question_content": "Read N, then N lines of two integers; print each pair's sum on its own line.",
    "platform": "atcoder",
    "starter_code": "",
    "public_test_cases": json.dumps([case("2\n1 2\n3 4\n", "3\n7\n", "stdin")]),
    "private_test_cases": hub_private([case("3\n-1 1\n10 20\n5 5\n", "0\n30  \n10\n\n", "stdin")]),
    "metadata": "{}",
}
TWO_SUM = """```python
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for index, value in enumerate(nums):
            if target - value in seen:
                return [seen[target - value], index]
            seen[value] = index
```"""
PAIR_SUMS = """```python
n = int(input())
for _ in range(n):
    a, b = map(int, input().split())
    print(a + b)
```"""


def write_fixture_path(folder: Path) -> str:
    path = folder / "lcb.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (FUNCTIONAL, STDIN)))
    return str(path)


def test_livecodebench_correct_programs_pass_both_test_types_and_wrong_ones_fail(tmp_path):
    functional, stdin = livecodebench.load(write_fixture_path(tmp_path))
    assert (functional.id, stdin.id) == ("lcb-two-sum", "lcb-abc000_a")
    assert [c["testtype"] for c in functional.answer] == ["functional", "functional"]  # private decoded
    for sample, right in ((functional, TWO_SUM), (stdin, PAIR_SUMS)):
        score = livecodebench.score(sample, "Reasoning...\n" + right)
        assert (score.value, score.metrics) == (1.0, {"pass@1": 1.0}), score.details
        assert score.details["cases_passed"] == 2 and score.details["reason"] == "passed"
    # passes the public case, fails the private one: [3, 2, 4] -> 6 must not reuse index 0
    greedy = TWO_SUM.replace("in seen:", "in seen or value * 2 == target:")
    greedy = greedy.replace("[seen[target - value], index]", "[seen.get(target - value, index), index]")
    wrong = livecodebench.score(functional, greedy)
    assert (wrong.value, wrong.details["failed_case"], wrong.details["cases_passed"]) == (0.0, 1, 1)
    assert (wrong.details["detail"], wrong.details["returned"]) == ("wrong output", "[0,0]")
    difference = livecodebench.score(stdin, PAIR_SUMS.replace("a + b", "a - b"))
    assert (difference.value, difference.details["failed_case"]) == (0.0, 0)
    assert (difference.details["reason"], difference.details["detail"]) == ("failed", "wrong output")
    crash = livecodebench.score(stdin, "```python\nprint(undefined_name)\n```")
    assert crash.value == 0.0 and "NameError" in crash.details["stderr"]


def test_livecodebench_hub_reads_the_release_files_and_bad_data_is_one_line(monkeypatch, tmp_path):
    import datasets

    calls = []

    def load_dataset(path, data_files=None, split=None):
        calls.append((path, data_files, split))
        return [FUNCTIONAL, STDIN]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert [s.id for s in livecodebench.load("hub", limit=1, release="v2")] == ["lcb-two-sum"]
    assert calls == [("json", ["hf://datasets/livecodebench/code_generation_lite/test2.jsonl"], "train")]
    assert len(livecodebench.RELEASE_FILES["release_v5"]) == 5
    with pytest.raises(ValueError, match="release 'release_v9' is not one of"):
        livecodebench.load("hub", release="release_v9")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**STDIN, "private_test_cases": "not-encoded"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: record 1: field 'private_test_cases' is neither JSON"):
        livecodebench.load(str(path))
    path.write_text(json.dumps({**FUNCTIONAL, "metadata": "{}"}) + "\n")
    with pytest.raises(DataError, match="no 'func_name'"):
        livecodebench.load(str(path))


# ---------------------------------------------------------------- pass@k

def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)
    assert mean_pass_at_k([(4, 0), (4, 4)], 2) == 0.5
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(3, 4, 1)
