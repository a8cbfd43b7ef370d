"""LongReason: the offline builder (length, facts, determinism), hub-row mapping, scoring, bad data."""

from __future__ import annotations

import json

import pytest
from fake_hub import fake_hub
from transformers import AutoTokenizer

from infokv.eval.benchmarks import gsm8k, longreason
from infokv.eval.benchmarks.base import DataError
from infokv.eval.benchmarks.haystack import count_tokens, split_sentences
from infokv.hf.models import ensure_embedded


@pytest.fixture(scope="module")
def smollm_tokenizer():
    return AutoTokenizer.from_pretrained(ensure_embedded("smollm2-135m"))


@pytest.fixture(scope="module")
def built_4k(smollm_tokenizer):
    return longreason.load(tokens=4096, seed=0, tokenizer=smollm_tokenizer)


@pytest.mark.parametrize("tokens", [4096, 8192])
def test_builder_hits_the_requested_length_within_two_percent(smollm_tokenizer, tokens, built_4k):
    samples = built_4k
    if tokens != 4096:
        samples = longreason.load(limit=5, tokens=tokens, tokenizer=smollm_tokenizer)
    for sample in samples:
        for cot in (True, False):
            length = count_tokens(smollm_tokenizer, longreason.prompt(sample, cot, smollm_tokenizer).text)
            assert abs(length - tokens) <= 0.02 * tokens, (sample.id, cot, length)


def test_every_fact_is_in_the_context_in_order_and_the_question_comes_last(smollm_tokenizer, built_4k):
    problems = {problem.id: problem for problem in gsm8k.load()}
    one_sentence = [p.id for p in problems.values() if len(split_sentences(p.question)) == 1]
    assert len(built_4k) == len(problems) - len(one_sentence) == 99
    assert not {sample.id.rsplit("-s0-", 1)[1] for sample in built_4k} & set(one_sentence)
    for sample in built_4k:
        problem = problems[sample.id.rsplit("-s0-", 1)[1]]
        sentences = split_sentences(problem.question)
        assert sample.meta["facts"] == sentences[:-1] and sample.question == sentences[-1]
        positions = [sample.context.index(fact) for fact in sample.meta["facts"]]
        assert positions == sorted(positions)
        assert sample.answer == problem.answer
        text = longreason.prompt(sample, True, smollm_tokenizer).text
        last_fact = max([text.index(fact) for fact in sample.meta["facts"]], default=0)
        assert text.rindex(sample.question) > last_fact


def test_facts_are_spread_through_the_filler(built_4k):
    depths = [s.context.index(fact) / len(s.context) for s in built_4k for fact in s.meta["facts"]]
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_builder_is_deterministic_by_seed(smollm_tokenizer, built_4k):
    again = longreason.load(limit=3, tokens=4096, seed=0, tokenizer=smollm_tokenizer)
    other = longreason.load(limit=3, tokens=4096, seed=1, tokenizer=smollm_tokenizer)
    assert again == built_4k[:3]
    assert [s.context for s in other] != [s.context for s in again]
    assert [s.id for s in other] == [s.id.replace("-s0-", "-s1-") for s in again]


def test_gold_scores_one_and_wrong_scores_zero_on_every_built_sample(built_4k):
    for sample in built_4k:
        assert longreason.score(sample, f"so the total is \\boxed{{{sample.answer}}}").value == 1.0
        assert longreason.score(sample, f"{sample.answer}").value == 1.0
        wrong = longreason.score(sample, f"The answer is {int(sample.answer) + 1}.")
        assert wrong.value == 0.0 and wrong.extracted == str(int(sample.answer) + 1)


def test_prompts_with_and_without_chain_of_thought(smollm_tokenizer, built_4k):
    sample = built_4k[0]
    cot, direct = (longreason.prompt(sample, flag, smollm_tokenizer) for flag in (True, False))
    assert cot.context == direct.context and cot.context.endswith(sample.context + "\n\n")
    assert "step by step" in cot.question and "step by step" not in direct.question
    assert direct.question.startswith(f"Question: {sample.question}")


HUB_ROW = {
    "question": "Background... Which is right?\nA. 3\nB. 4",
    "background": "A long story. Tom has 3 apples. More story.",
    "final_inquiry": "How many apples does Tom have?\nA. 3\nB. 4",
    "example_idx": "17",
    "prompt": "full prompt",
    "answer": "A",
    "analysis": "Tom has 3.",
}


def test_hub_rows_map_to_multiple_choice_samples(smollm_tokenizer):
    sample = longreason.from_hub_row(HUB_ROW, "8k", "lz1bytedance/LongReason:8k:row 0")
    assert (sample.id, sample.answer, sample.context) == ("longreason-8k-17", "A", HUB_ROW["background"])
    assert sample.question == HUB_ROW["final_inquiry"] and sample.meta["format"] == "choice"
    prompt = longreason.prompt(sample, False, smollm_tokenizer)
    assert HUB_ROW["background"] in prompt.context and "only the letter" in prompt.question
    for completion, value in [
        ("The answer is (A).", 1.0),
        ("Let me think. Tom has 3 apples, so the answer is A", 1.0),
        ("A", 1.0),
        ("\\boxed{A}", 1.0),
        ("(B)", 0.0),
        ("The answer is B.", 0.0),
        ("Apples are nice.", 0.0),
    ]:
        assert longreason.score(sample, completion).value == value, completion


def test_local_hub_shaped_files_and_bad_rows(tmp_path):
    good = tmp_path / "16k.jsonl"
    good.write_text(json.dumps(HUB_ROW) + "\n")
    assert longreason.load(str(good))[0].id == "longreason-16k-17"
    bad = tmp_path / "bad.jsonl"
    row = {key: value for key, value in HUB_ROW.items() if key != "final_inquiry"}
    bad.write_text(json.dumps(HUB_ROW) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as error:
        longreason.load(str(bad))
    assert str(error.value) == f"{bad}:2: missing field 'final_inquiry'"


def test_bad_options_are_one_line_errors(smollm_tokenizer):
    with pytest.raises(ValueError, match="pass tokenizer="):
        longreason.load(limit=1)
    with pytest.raises(ValueError, match=r"tokens 50 is too small: the prompt without filler has \d+ tokens"):
        longreason.load(limit=1, tokens=50, tokenizer=smollm_tokenizer)
    with pytest.raises(ValueError, match=r"^longreason: the hub has no split for tokens=5000; allowed: 8192"):
        longreason.load("hub", tokens=5000)


def test_hub_source_reads_the_split_of_the_requested_length(monkeypatch):
    calls = fake_hub(
        monkeypatch, {("lz1bytedance/LongReason", None, "32k"): [HUB_ROW, {**HUB_ROW, "example_idx": 18}]}
    )
    samples = longreason.load("hub", tokens=32768, limit=1)
    assert [s.id for s in samples] == ["longreason-32k-17"] and calls == [
        ("lz1bytedance/LongReason", None, "32k")
    ]
