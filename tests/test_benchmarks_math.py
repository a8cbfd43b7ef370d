"""Math benchmarks (AIME, MATH-500, GSM8K): offline data, answer extraction, equivalence, loading errors."""

from __future__ import annotations

import json

import pytest
from fake_hub import fake_hub
from transformers import AutoTokenizer

from infokv.eval.benchmarks import aime, gsm8k, math500
from infokv.eval.benchmarks.base import DataError
from infokv.eval.benchmarks.math_answers import equivalent, extract_answer, gsm8k_final
from infokv.eval.benchmarks.math_problems import MMATH
from infokv.eval.benchmarks.sources import load_from
from infokv.hf.fetch import ChecksumError
from infokv.hf.models import ensure_embedded

OFFLINE = [
    pytest.param(lambda: aime.load(year=2024), aime, 30, id="aime2024"),
    pytest.param(lambda: aime.load(year=2025), aime, 15, id="aime2025"),
    pytest.param(lambda: math500.load(), math500, 311, id="math500"),
    pytest.param(lambda: gsm8k.load(), gsm8k, 100, id="gsm8k"),
]


@pytest.mark.parametrize("load, module, count", OFFLINE)
def test_gold_answers_score_one_and_wrong_answers_zero_on_every_offline_sample(load, module, count):
    samples = load()
    assert len(samples) == count
    assert len({sample.id for sample in samples}) == count
    for sample in samples:
        boxed = module.score(sample, f"Step one... so the result is \\boxed{{{sample.answer}}}.")
        plain = module.score(sample, f"Working it out, the answer is {sample.answer}.")
        wrong = module.score(sample, f"\\boxed{{{int(sample.answer) + 1}}}")
        assert (boxed.value, plain.value, wrong.value) == (1.0, 1.0, 0.0), sample.id
        assert boxed.metrics == {"accuracy": 1.0}
        assert plain.extracted == sample.answer


def test_offline_ids_are_stable_and_match_the_hub_rows():
    assert [s.id for s in aime.load(limit=2)] == ["aime2024-0", "aime2024-1"]
    assert aime.load(limit=1)[0].answer == "204"  # 2024 I problem 1 (Aya's walk)
    assert math500.load(limit=1)[0].id == "math500-3"  # row 3 of MATH-500: divisors of 196
    assert math500.load(limit=1)[0].answer == "9"
    first = gsm8k.load(limit=1)[0]
    assert first.id == "gsm8k-test-0013" and first.answer == "18"
    assert all(gsm8k_final(s.meta["solution"]) == s.answer for s in gsm8k.load())


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so \\boxed{\\frac{1}{\\sqrt{2}}} is it", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The answer is 18 vacuum cleaners.", "18"),
        ("The final answer is: $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("She pays 3*4=12 dollars.\n#### 1,234", "1,234"),
        ("She buys 3 apples and then 7 pears", "7"),
        ("\\frac{3}{4}", "\\frac{3}{4}"),
        ("It costs $1,250.50 in total", "1250.50"),
        ("I do not know.", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "gold, answer, same",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("1000", "1,000", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
        ("x^2+1", "1+x^2", True),
        ("18", "18.0", True),
        ("204", "205", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ],
)
def test_equivalence_uses_math_verify(gold, answer, same):
    assert equivalent(gold, answer) is same


@pytest.mark.parametrize("cot", [True, False])
def test_prompts_are_chat_formatted_and_ask_for_reasoning_or_only_the_answer(cot):
    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded("smollm2-135m"))
    sample = gsm8k.load(limit=1)[0]
    prompt = gsm8k.prompt(sample, cot, tokenizer)
    assert prompt.text.startswith("<|im_start|>") and prompt.text.endswith("<|im_start|>assistant\n")
    assert sample.question in prompt.question
    assert ("step by step" in prompt.text) is cot
    assert ("\\boxed{}" in prompt.text) is cot
    assert ("only the final answer" in prompt.text) is not cot


def test_hub_rows_map_to_samples():
    row = {"problem": "Find x.", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2}
    row["unique_id"] = "t/1"
    sample = math500.from_hub_row(row, 7, "hub:test:row 7")
    assert (sample.id, sample.question, sample.answer) == ("math500-7", "Find x.", "\\frac{1}{2}")
    assert sample.meta["unique_id"] == "t/1"
    gsm = gsm8k.from_hub_row({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"}, 5, "w")
    assert (gsm.id, gsm.answer) == ("gsm8k-test-0005", "4")
    a24 = aime.from_hub_row({"id": 60, "problem": "P", "answer": "204", "year": "2024"}, 0, 2024, "w")
    a25 = aime.from_hub_row({"question": "Q", "answer": "70"}, 15, 2025, "w")
    assert (a24.id, a24.question, a25.id, a25.question) == ("aime2024-0", "P", "aime2025-15", "Q")
    with pytest.raises(DataError, match=r"^hub:test:row 3: missing field 'answer'$"):
        math500.from_hub_row({"problem": "Find x."}, 3, "hub:test:row 3")
    with pytest.raises(DataError, match="field 'answer' has no '####'"):
        gsm8k.from_hub_row({"question": "Q", "answer": "just 4"}, 0, "w")


def test_local_files_load_and_bad_lines_name_file_line_and_field(tmp_path):
    good = tmp_path / "gsm.jsonl"
    good.write_text(
        "\n".join(json.dumps({"question": f"Q{i}?", "answer": f"so\n#### {i}"}) for i in range(3)) + "\n"
    )
    samples = gsm8k.load(str(good), limit=2)
    assert [(s.id, s.answer) for s in samples] == [("gsm8k-test-0000", "0"), ("gsm8k-test-0001", "1")]
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"problem": "P", "answer": "1"}\n{"problem": "P2"}\n')
    with pytest.raises(DataError) as error:
        math500.load(str(missing))
    assert str(error.value) == f"{missing}:2: missing field 'answer'"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "P", "answer": "1"}\n{"problem": \n')
    with pytest.raises(DataError, match=rf"^{broken}:2: not valid JSON"):
        aime.load(str(broken))


def test_bad_source_year_and_limit_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^aime: year 2023 is not one of \[2024, 2025\]$"):
        aime.load(year=2023)
    with pytest.raises(ValueError, match=r"^math500: unknown source 'web'; allowed: auto, offline, hub"):
        math500.load("web")
    with pytest.raises(ValueError, match="limit 0 is not allowed; use an integer >= 1"):
        load_from("x", "auto", 0, {"offline": lambda n: []}, lambda path, n: [])


@pytest.mark.parametrize(
    "load, cached_file, sha256",
    [
        (gsm8k.load, "data/gsm8k/cases.jsonl", gsm8k.OFFLINE.sha256),
        (math500.load, "data/mmath/en.json", MMATH.sha256),
    ],
)
def test_checksum_mismatch_stops_the_offline_load(tmp_path, monkeypatch, load, cached_file, sha256):
    monkeypatch.setenv("INFOKV_CACHE", str(tmp_path))
    cached = tmp_path / cached_file
    cached.parent.mkdir(parents=True)
    cached.write_text("[]\n")
    with pytest.raises(
        ChecksumError, match=rf"^sha256 mismatch for {cached}: expected {sha256}, got [0-9a-f]+$"
    ):
        load()


def test_hub_sources_ask_for_the_official_ids_and_map_their_rows(monkeypatch):
    aime24 = [
        {"id": 60 + i, "problem": f"P{i}", "answer": str(i), "url": "u", "year": "2024"} for i in range(30)
    ]
    calls = fake_hub(
        monkeypatch,
        {
            ("HuggingFaceH4/aime_2024", None, "train"): aime24,
            ("opencompass/AIME2025", "AIME2025-I", "test"): [{"question": "I1", "answer": "70"}],
            ("opencompass/AIME2025", "AIME2025-II", "test"): [{"question": "II1", "answer": "468"}],
            ("HuggingFaceH4/MATH-500", None, "test"): [
                {"problem": "Q", "answer": "\\frac{1}{2}", "level": 3}
            ],
            ("openai/gsm8k", "main", "test"): [{"question": "Q", "answer": "3 + 4 = 7\n#### 7"}],
        },
    )
    assert [s.id for s in aime.load("hub", limit=2)] == ["aime2024-0", "aime2024-1"]
    assert [(s.id, s.question) for s in aime.load("hub", year=2025)] == [
        ("aime2025-0", "I1"),
        ("aime2025-1", "II1"),
    ]
    (math_sample,) = math500.load("hub")
    assert math500.score(math_sample, "so \\boxed{0.5}").value == 1.0
    assert [(s.id, s.answer) for s in gsm8k.load("hub")] == [("gsm8k-test-0000", "7")]
    assert calls == [
        ("HuggingFaceH4/aime_2024", None, "train"),
        ("opencompass/AIME2025", "AIME2025-I", "test"),
        ("opencompass/AIME2025", "AIME2025-II", "test"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("openai/gsm8k", "main", "test"),
    ]
    fake_hub(monkeypatch, {("openai/gsm8k", "main", "test"): [{"question": "Q"}]})
    with pytest.raises(DataError, match=r"^openai/gsm8k\[main\]:test:row 0: missing field 'answer'$"):
        gsm8k.load("hub")
