"""IFEval: offline prompts, lm-eval checkers, strict and loose, the sentence-tokenizer fallback, bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nltk
import pytest
from fake_hub import fake_hub

from infokv.eval.benchmarks import base, ifeval

# One sentence per language that the data asks for; langdetect (seeded) recognises each.
LANGUAGE_TEXT = {
    "ar": "القطط حيوانات أليفة جميلة تحب النوم في الشمس واللعب مع الأطفال في البيت.",
    "bg": "Котките са красиви домашни животни, които обичат да спят на слънце и да играят с децата.",
    "bn": "বিড়াল সুন্দর পোষা প্রাণী যারা রোদে ঘুমাতে এবং বাচ্চাদের সাথে খেলতে ভালোবাসে।",
    "de": "Katzen sind schöne Haustiere, die gerne in der Sonne schlafen und mit den Kindern spielen.",
    "fa": "گربه‌ها حیوانات خانگی زیبایی هستند که دوست دارند زیر آفتاب بخوابند و با بچه‌ها بازی کنند.",
    "fi": "Kissat ovat kauniita lemmikkejä, jotka rakastavat nukkumista auringossa ja leikkimistä.",
    "gu": "બિલાડીઓ સુંદર પાળતુ પ્રાણીઓ છે જે તડકામાં સૂવાનું અને બાળકો સાથે રમવાનું પસંદ કરે છે.",
    "hi": "बिल्लियाँ सुंदर पालतू जानवर हैं जो धूप में सोना और बच्चों के साथ खेलना पसंद करती हैं।",
    "it": "I gatti sono bellissimi animali domestici che amano dormire al sole e giocare con i bambini.",
    "kn": "ಬೆಕ್ಕುಗಳು ಸುಂದರವಾದ ಸಾಕು ಪ್ರಾಣಿಗಳು, ಅವು ಬಿಸಿಲಿನಲ್ಲಿ ಮಲಗಲು ಮತ್ತು ಮಕ್ಕಳೊಂದಿಗೆ ಆಡಲು ಇಷ್ಟಪಡುತ್ತವೆ.",
    "ko": "고양이는 햇볕 아래에서 자고 아이들과 노는 것을 좋아하는 아름다운 애완동물입니다.",
    "mr": "मांजरी सुंदर पाळीव प्राणी आहेत ज्यांना उन्हात झोपायला आणि मुलांसोबत खेळायला आवडते.",
    "ne": "बिरालाहरू सुन्दर घरपालुवा जनावर हुन् जसलाई घाममा सुत्न र केटाकेटीसँग खेल्न मन पर्छ।",
    "pa": "ਬਿੱਲੀਆਂ ਸੁੰਦਰ ਪਾਲਤੂ ਜਾਨਵਰ ਹਨ ਜੋ ਧੁੱਪ ਵਿੱਚ ਸੌਣਾ ਅਤੇ ਬੱਚਿਆਂ ਨਾਲ ਖੇਡਣਾ ਪਸੰਦ ਕਰਦੀਆਂ ਹਨ।",
    "pt": "Os gatos são lindos animais de estimação que adoram dormir ao sol e brincar com as crianças.",
    "ru": "Кошки — красивые домашние животные, которые любят спать на солнце и играть с детьми.",
    "sw": "Paka ni wanyama wazuri wa nyumbani ambao hupenda kulala juani na kucheza na watoto.",
    "ta": "பூனைகள் அழகான வீட்டு விலங்குகள், அவை வெயிலில் தூங்கவும் குழந்தைகளுடன் விளையாடவும் விரும்புகின்றன.",
    "te": "పిల్లులు అందమైన పెంపుడు జంతువులు, అవి ఎండలో నిద్రపోవడం మరియు పిల్లలతో ఆడుకోవడం ఇష్టపడతాయి.",
    "th": "แมวเป็นสัตว์เลี้ยงที่น่ารักซึ่งชอบนอนกลางแดดและเล่นกับเด็ก ๆ",
    "ur": "بلیاں خوبصورت پالتو جانور ہیں جو دھوپ میں سونا اور بچوں کے ساتھ کھیلنا پسند کرتی ہیں۔",
    "vi": "Mèo là những con vật nuôi xinh đẹp thích ngủ dưới ánh nắng và chơi đùa với trẻ em.",
}


def _count(kwargs: dict, number: str, relation: str = "relation") -> int:
    """A count that satisfies ``relation`` ('less than' / 'at least') against ``kwargs[number]``."""
    return kwargs[number] - 1 if kwargs[relation] == "less than" else kwargs[number]


def _paragraphs(count: int, separator: str, first_words: dict[int, str] | None = None) -> str:
    first_words = first_words or {}
    return separator.join(f"{first_words.get(n, 'Paragraph')} number {n} here." for n in range(1, count + 1))


# instruction id -> a response that follows that instruction with the given arguments
COMPLIANT: dict[str, Callable[[dict], str]] = {
    "punctuation:no_comma": lambda k: "A plain answer without that mark.",
    "length_constraints:number_words": lambda k: " ".join(["word"] * _count(k, "num_words")),
    "length_constraints:number_sentences": lambda k: " ".join(
        ["This is one sentence."] * _count(k, "num_sentences")
    ),
    "keywords:forbidden_words": lambda k: "Qqq.",
    "detectable_format:number_highlighted_sections": lambda k: "\n".join(
        f"*part {n}*" for n in range(k["num_highlights"])
    ),
    "keywords:frequency": lambda k: "Start. " + " ".join([k["keyword"]] * _count(k, "frequency")),
    "combination:repeat_prompt": lambda k: k["prompt_to_repeat"] + "\nMy answer follows.",
    "startend:quotation": lambda k: '"A quoted answer."',
    "change_case:english_lowercase": lambda k: (
        "this is a short answer written entirely in lowercase english."
    ),
    "keywords:existence": lambda k: "Here: " + " ".join(k["keywords"]) + ".",
    "detectable_format:title": lambda k: "<<A Good Title>>\nThe body.",
    "keywords:letter_frequency": lambda k: "1 " + k["letter"] * _count(k, "let_frequency", "let_relation"),
    "detectable_format:number_bullet_lists": lambda k: "\n".join(
        f"* item {n}" for n in range(k["num_bullets"])
    ),
    "language:response_language": lambda k: LANGUAGE_TEXT[k["language"]],
    "detectable_content:number_placeholders": lambda k: " ".join(
        f"[slot{n}]" for n in range(k["num_placeholders"])
    ),
    "length_constraints:number_paragraphs": lambda k: _paragraphs(k["num_paragraphs"], "\n***\n"),
    "startend:end_checker": lambda k: "Some text first. " + k["end_phrase"],
    "detectable_content:postscript": lambda k: f"The body.\n\n{k['postscript_marker']} A note at the end.",
    "change_case:english_capital": lambda k: (
        "THIS IS A SHORT ANSWER WRITTEN ENTIRELY IN CAPITAL ENGLISH LETTERS."
    ),
    "change_case:capital_word_frequency": lambda k: (
        "fine " + " ".join(["LOUD"] * _count(k, "capital_frequency", "capital_relation"))
    ),
    "combination:two_responses": lambda k: "The first answer.\n******\nThe second answer.",
    "detectable_format:json_format": lambda k: '```json\n{"answer": 42}\n```',
    "detectable_format:multiple_sections": lambda k: "\n".join(
        f"{k['section_spliter']} {n}\nContent of part {n}." for n in range(1, k["num_sections"] + 1)
    ),
    "length_constraints:nth_paragraph_first_word": lambda k: _paragraphs(
        k["num_paragraphs"], "\n\n", {k["nth_paragraph"]: k["first_word"].capitalize()}
    ),
    "detectable_format:constrained_response": lambda k: "My answer is yes.",
}

# (instruction id, arguments, a compliant response, a violating response)
PAIRS = [
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "one two three four five",
        "one two",
    ),
    (
        "length_constraints:number_words",
        {"relation": "less than", "num_words": 3},
        "one two",
        "one two three",
    ),
    ("keywords:existence", {"keywords": ["owl", "moon"]}, "The owl sees the moon.", "The owl sleeps."),
    ("keywords:forbidden_words", {"forbidden_words": ["rain"]}, "Sunny all day.", "It will RAIN today."),
    ("detectable_format:json_format", {}, '{"a": [1, 2]}', "a: 1, b: 2"),
    (
        "change_case:english_lowercase",
        {},
        "all of this is lowercase english text.",
        "Not All Lowercase Text.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "Only one."),
    (
        "length_constraints:number_sentences",
        {"relation": "less than", "num_sentences": 3},
        "One. Two.",
        "One. Two. Three.",
    ),
    ("punctuation:no_comma", {}, "No pause here.", "A pause, here."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a"),
]


def _sample(
    instruction_id: str, kwargs: dict, prompt: str = "Answer the request.", key: int = 1
) -> base.Sample:
    record = {"key": key, "prompt": prompt, "instruction_id_list": [instruction_id], "kwargs": [kwargs]}
    return ifeval._sample(record, "test")


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _record(key: int = 7, **changes) -> dict:
    record = {
        "key": key,
        "prompt": "Write without commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    }
    record.update(changes)
    return record


@pytest.fixture(scope="module")
def samples() -> list[base.Sample]:
    return ifeval.load("offline")


def test_offline_has_all_541_prompts_and_25_instructions(samples):
    assert len(samples) == 541
    assert len({sample.id for sample in samples}) == 541
    ids = Counter(i for sample in samples for i in sample.answer["instruction_id_list"])
    assert len(ids) == 25 and sum(ids.values()) == 834
    assert set(ids) == set(COMPLIANT)
    assert samples[0].question.startswith("Write a 300+ word summary")
    assert [sample.id for sample in ifeval.load("auto", limit=3)] == [sample.id for sample in samples[:3]]


def test_every_instruction_in_the_data_has_a_compliant_response(samples):
    """IFEval has no gold answers: instead every one of the 834 (instruction, arguments) pairs of the data
    is built by lm-eval's checker (at load) and followed by a constructed response, strictly."""
    checked = Counter()
    for sample in samples:
        for index, (instruction_id, kwargs) in enumerate(zip(*sample.answer.values(), strict=True)):
            if index in sample.meta["random_arguments"]:
                continue  # the checker tests a random letter instead (see the test below)
            single = _sample(instruction_id, kwargs, sample.question, sample.meta["key"])
            result = ifeval.score(single, COMPLIANT[instruction_id](kwargs))
            assert result.value == 1.0, (sample.id, instruction_id, kwargs, result.extracted)
            checked[instruction_id] += 1
    assert sum(checked.values()) == 832 and len(checked) == 25


def test_arguments_the_checker_replaces_are_flagged_and_seeded(samples):
    flagged = {sample.id: sample for sample in samples if sample.meta["random_arguments"]}
    assert sorted(flagged) == ["1122", "1129"]  # letter '#' and letter '!', refused by the letter checker
    sample = flagged["1122"]
    index = sample.meta["random_arguments"][0]
    assert sample.answer["instruction_id_list"][index] == "keywords:letter_frequency"
    completion = "some lowercase text " + "".join(chr(c) * 4 for c in range(ord("a"), ord("z") + 1))
    first, again = ifeval.score(sample, completion), ifeval.score(sample, completion)
    assert first == again and first.details["random_arguments"] == ["keywords:letter_frequency"]
    assert first.details["instructions"][index]["strict"]  # every letter appears 4 times: any draw passes
    assert not ifeval.score(sample, "no hash signs, only letters").details["instructions"][index]["loose"]


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), PAIRS, ids=[p[0] for p in PAIRS])
def test_following_scores_one_and_violating_scores_zero(instruction_id, kwargs, good, bad):
    sample = _sample(instruction_id, kwargs)
    followed, violated = ifeval.score(sample, good), ifeval.score(sample, bad)
    assert followed.value == 1.0 and set(followed.metrics.values()) == {1.0}
    assert violated.value == 0.0
    assert violated.metrics["prompt_level_loose_acc"] == violated.metrics["inst_level_strict_acc"] == 0.0
    assert violated.details["instructions"] == [{"id": instruction_id, "strict": False, "loose": False}]


@pytest.mark.parametrize(
    ("instruction_id", "kwargs", "response"),
    [
        ("startend:quotation", {}, 'Sure, here it is:\n"A quoted answer."'),  # loose drops the first line
        (
            "startend:end_checker",
            {"end_phrase": "Any other questions?"},
            "Done. **Any other questions?**",
        ),  # '*'
        ("detectable_format:json_format", {}, '{"a": 1}\nHope this helps!'),  # loose drops the last line
    ],
)
def test_loose_accepts_what_strict_rejects(instruction_id, kwargs, response):
    result = ifeval.score(_sample(instruction_id, kwargs), response)
    assert result.value == result.metrics["inst_level_strict_acc"] == 0.0
    assert result.metrics["prompt_level_loose_acc"] == result.metrics["inst_level_loose_acc"] == 1.0


def test_instruction_level_counts_and_micro_average():
    sample = ifeval._sample(
        {
            "key": 3,
            "prompt": "Two things.",
            "instruction_id_list": ["punctuation:no_comma", "keywords:existence", "detectable_format:title"],
            "kwargs": [{}, {"keywords": ["owl"]}, {}],
        },
        "test",
    )
    partial = ifeval.score(sample, "An owl, at night.")  # has the keyword, but a comma and no title
    assert partial.value == 0.0
    assert partial.metrics["inst_level_strict_acc"] == pytest.approx(1 / 3)
    assert (partial.metrics["instructions"], partial.metrics["instructions_followed_strict"]) == (3.0, 1.0)
    full = ifeval.score(_sample("punctuation:no_comma", {}), "No commas.")
    totals = ifeval.aggregate([partial, full])
    assert totals["prompt_level_strict_acc"] == 0.5
    assert totals["inst_level_strict_acc"] == pytest.approx(
        2 / 4
    )  # micro: (1 + 1) / (3 + 1), not (1/3 + 1) / 2


def test_reasoning_is_not_scored():
    sample = _sample("punctuation:no_comma", {})
    assert ifeval.score(sample, "<think>Hmm, commas, commas.</think>Plain answer.").value == 1.0
    assert ifeval.score(sample, "Thinking, still.</think>Plain answer.").extracted == "Plain answer."
    assert ifeval.score(sample, "<think>No end to this").value == 0.0  # unfinished: no response


def test_fallback_sentence_tokenizer_is_used_and_recorded(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("nltk tried to download")

    monkeypatch.setattr(nltk, "download", no_download)
    monkeypatch.setattr(ifeval, "punkt_tab_available", lambda: False)
    original = nltk.tokenize.sent_tokenize
    # Untrained Punkt keeps the decimal "3.5" but, knowing no abbreviations, ends a sentence at "Dr.":
    # three sentences (punkt_tab would count two).
    text = "Dr. Smith measured 3.5 litres. He was pleased."
    fewer = _sample("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3})
    more = _sample("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3})
    assert ifeval.score(fewer, text).value == 0.0
    assert ifeval.score(more, text).value == 1.0
    capitals = _sample(
        "change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2}
    )
    result = ifeval.score(capitals, "Read THIS. Then THAT.")  # word_tokenize splits sentences too
    assert result.value == 1.0
    assert result.details["sentence_tokenizer"] == ifeval.FALLBACK == "fallback-punkt-untrained"
    assert nltk.tokenize.sent_tokenize is original  # restored after scoring


def test_records_punkt_tab_when_installed(monkeypatch):
    if ifeval.punkt_tab_available():
        assert (
            ifeval.score(_sample("punctuation:no_comma", {}), "x").details["sentence_tokenizer"]
            == "punkt_tab"
        )
    else:  # the offline case: NLTK itself cannot split sentences, so the fallback is needed and named
        with pytest.raises(LookupError):
            nltk.sent_tokenize("One. Two.")
        assert (
            ifeval.score(_sample("punctuation:no_comma", {}), "x").details["sentence_tokenizer"]
            == ifeval.FALLBACK
        )


def test_importing_the_checkers_never_downloads():
    """lm-eval's instructions_util calls nltk.download("punkt_tab") on import when it is missing."""
    code = (
        "import nltk\n"
        "def refuse(*a, **k): raise SystemExit('nltk download attempted')\n"
        "nltk.download = refuse\n"
        "import infokv.eval.benchmarks.ifeval\n"
        "assert nltk.download is refuse\n"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert "Downloaded" not in process.stdout


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r":3: not valid JSON"),
        (
            json.dumps({"key": 9, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"]}),
            r":3: missing field 'kwargs'",
        ),
        (
            json.dumps(_record(instruction_id_list=["style:haiku"])),
            r":3: field 'instruction_id_list'\[0\]: unknown",
        ),
        (
            json.dumps(
                _record(instruction_id_list=["length_constraints:number_words"], kwargs=[{"num_words": 5}])
            ),
            r":3: field 'kwargs'\[0\] \(length_constraints:number_words\): missing or empty \['relation'\]",
        ),
        (
            json.dumps(
                _record(
                    instruction_id_list=["length_constraints:number_words"],
                    kwargs=[{"num_words": 5, "relation": "around"}],
                )
            ),
            r":3: field 'kwargs'\[0\] \(length_constraints:number_words\): rejected by the checker",
        ),
        (json.dumps(_record(kwargs=[{}, {}])), r":3: field 'kwargs': expected a list of 1 objects"),
    ],
    ids=["json", "missing-field", "unknown-instruction", "missing-argument", "bad-argument", "kwargs-length"],
)
def test_bad_data_is_one_line_naming_file_line_field(tmp_path, line, expected):
    path = _write_jsonl(tmp_path / "ifeval.jsonl", [json.dumps(_record(1)), "", line])  # line 2 is blank
    with pytest.raises(base.DataError, match=rf"^{path}{expected}") as error:
        ifeval.load(str(path))
    assert "\n" not in str(error.value)


def test_local_json_and_bad_arguments_to_load(tmp_path):
    path = tmp_path / "ifeval.json"
    path.write_text(json.dumps([_record(1), _record(2)]), encoding="utf-8")
    assert [sample.id for sample in ifeval.load(str(path))] == ["1", "2"]
    with pytest.raises(ValueError, match="unknown source 'ifeval.csv'"):
        ifeval.load("ifeval.csv")
    with pytest.raises(ValueError, match="limit 0 is not allowed"):
        ifeval.load("offline", limit=0)


def _hub_row(key: int, ids: list[str], **given) -> dict:
    """A row shaped like google/IFEval's: each kwargs struct has every argument name, None where unused."""
    names = (
        "num_words",
        "relation",
        "keywords",
        "language",
        "end_phrase",
        "num_highlights",
        "prompt_to_repeat",
    )
    return {
        "key": key,
        "prompt": f"Prompt {key}.",
        "instruction_id_list": ids,
        "kwargs": [{name: given.get(name) for name in names} for _ in ids],
    }


def test_hub_rows_map_to_samples(monkeypatch):
    rows = [
        _hub_row(1001, ["punctuation:no_comma"]),
        _hub_row(1002, ["length_constraints:number_words"], num_words=3, relation="at least"),
    ]
    calls = fake_hub(monkeypatch, {("google/IFEval", None, "train"): rows})
    loaded = ifeval.load("hub")
    assert calls == [("google/IFEval", None, "train")]
    assert [sample.id for sample in loaded] == ["1001", "1002"]
    assert loaded[1].answer["kwargs"] == [{"num_words": 3, "relation": "at least"}]
    assert ifeval.score(loaded[1], "one two three").value == 1.0

    rows.append(_hub_row(1003, ["length_constraints:number_words"], num_words=3))  # relation left None
    with pytest.raises(base.DataError, match=r"^google/IFEval:train row 3: field 'kwargs'\[0\]"):
        ifeval.load("hub")


def test_prompt_is_the_chat_turn_and_ignores_cot(samples):
    from transformers import AutoTokenizer

    from infokv.hf.models import ensure_embedded

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded("smollm2-135m"))
    rendered = ifeval.prompt(samples[0], cot=False, tokenizer=tokenizer)
    assert rendered == ifeval.prompt(samples[0], cot=True, tokenizer=tokenizer)
    assert rendered.question.startswith(samples[0].question)
    assert rendered.context.endswith("user\n") and rendered.text.rstrip().endswith("assistant")
