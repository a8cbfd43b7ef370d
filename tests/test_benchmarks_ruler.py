"""RULER needle in a haystack and variable tracking: generation, length, determinism, scoring, bad data."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from transformers import AutoTokenizer

from infokv.eval.benchmarks import get, ruler_niah, ruler_vt
from infokv.eval.benchmarks.base import DataError
from infokv.eval.benchmarks.haystack import count_tokens
from infokv.hf.models import ensure_embedded

TASKS = [
    pytest.param(ruler_niah, {"keys": 4, "values": 2, "queries": 2}, id="niah-multi"),
    pytest.param(ruler_niah, {}, id="niah-single"),
    pytest.param(ruler_vt, {"chains": 2, "hops": 4}, id="vt"),
]


@pytest.fixture(scope="module")
def smollm_tokenizer():
    return AutoTokenizer.from_pretrained(ensure_embedded("smollm2-135m"))


@pytest.mark.parametrize("module, options", TASKS)
def test_generated_samples_have_the_length_every_statement_and_score_gold_one(
    smollm_tokenizer, module, options
):
    samples = module.load(tokens=2048, tokenizer=smollm_tokenizer, count=8, **options)
    assert len({sample.id for sample in samples}) == 8
    for sample in samples:
        for cot in (False, True):
            length = count_tokens(smollm_tokenizer, module.prompt(sample, cot, smollm_tokenizer).text)
            assert abs(length - 2048) <= 0.02 * 2048
        positions = [sample.context.index(statement) for statement in sample.meta["statements"]]
        assert all(position >= 0 for position in positions)
        gold = module.score(sample, "They are: " + ", ".join(sample.answer) + ".")
        assert gold.value == 1.0 and gold.metrics == {"recall": 1.0}
        assert module.score(sample, "I could not find anything.").value == 0.0
        half = module.score(sample, " ".join(sample.answer[:1]))
        assert (
            half.value == pytest.approx(1 / len(sample.answer))
            and half.details["missing"] == sample.answer[1:]
        )


def test_needles_sit_at_spread_depths_and_distractor_keys_are_not_asked(smollm_tokenizer):
    samples = ruler_niah.load(tokens=2048, tokenizer=smollm_tokenizer, count=10, keys=3, queries=1)
    depths = [s.context.index(needle) / len(s.context) for s in samples for needle in s.meta["statements"]]
    assert min(depths) < 0.2 and max(depths) > 0.8
    for sample in samples:
        (asked,) = sample.meta["asked"]
        assert asked in sample.question
        assert all(key not in sample.question for key in sample.meta["keys"] if key != asked)
        assert len(sample.answer) == 1 and f"{asked} is: {sample.answer[0]}." in sample.context


def test_variable_chains_keep_their_order(smollm_tokenizer):
    for sample in ruler_vt.load(tokens=2048, tokenizer=smollm_tokenizer, count=5, chains=2, hops=3):
        names = sample.answer
        assert len(names) == 4 and sample.meta["value"] in sample.question
        first = sample.context.index(f"VAR {names[0]} = {sample.meta['value']}.")
        hops = [sample.context.index(f"VAR {after} = VAR {before}.") for before, after in pairwise(names)]
        assert [first, *hops] == sorted([first, *hops])


@pytest.mark.parametrize("module", [ruler_niah, ruler_vt])
def test_generation_is_deterministic_by_seed(smollm_tokenizer, module):
    first = module.load(tokens=1024, tokenizer=smollm_tokenizer, count=3, seed=5)
    again = module.load(tokens=1024, tokenizer=smollm_tokenizer, count=3, seed=5)
    other = module.load(tokens=1024, tokenizer=smollm_tokenizer, count=3, seed=6)
    assert first == again
    assert [s.answer for s in first] != [s.answer for s in other]
    assert module.load(tokens=1024, tokenizer=smollm_tokenizer, count=3, seed=5, limit=2) == first[:2]
    longer = module.load(tokens=1024, tokenizer=smollm_tokenizer, count=3, seed=5, limit=4)
    assert longer[:3] == first and len(longer) == 4  # a limit beyond count generates more, never fewer


def test_local_files_and_bad_records(tmp_path):
    record = {
        "id": "n-1",
        "instruction": "Find it.",
        "context": "Essay. The number is 7.",
        "question": "Which?",
    }
    good = tmp_path / "niah.jsonl"
    good.write_text(json.dumps({**record, "answer": ["7"]}) + "\n")
    (sample,) = ruler_niah.load(str(good))
    assert sample.answer == ["7"] and ruler_niah.score(sample, "It is 7").value == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({**record, "answer": ["7"]}) + "\n" + json.dumps({**record, "answer": "7"}) + "\n"
    )
    with pytest.raises(
        DataError, match=rf"^{bad}: record 2: field 'answer' must be a non-empty list of strings$"
    ):
        ruler_vt.load(str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"^{missing}:1: missing field 'answer'$"):
        ruler_niah.load(str(missing))


def test_bad_options_are_one_line_errors(smollm_tokenizer):
    with pytest.raises(ValueError, match="pass tokenizer="):
        ruler_niah.load()
    with pytest.raises(ValueError, match="^ruler_niah: queries 3 must not exceed keys 2$"):
        ruler_niah.load(tokenizer=smollm_tokenizer, keys=2, queries=3)
    with pytest.raises(ValueError, match="^ruler_vt: hops 0 must be a positive integer$"):
        ruler_vt.load(tokenizer=smollm_tokenizer, hops=0)
    with pytest.raises(ValueError, match="^ruler_vt: unknown source 'hub'; allowed: auto, generator"):
        ruler_vt.load("hub", tokenizer=smollm_tokenizer)


def test_registry_names():
    assert get("ruler_niah") is ruler_niah and get("ruler_vt") is ruler_vt
    assert {get(name).NAME for name in ("aime", "math500", "gsm8k", "longreason")} == {
        "aime",
        "math500",
        "gsm8k",
        "longreason",
    }
