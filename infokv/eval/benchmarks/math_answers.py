"""Final answers of math completions: extraction and equivalence, shared by every math-style benchmark.

Extraction (:func:`extract_answer`) reads the *last* stated answer of a completion, trying in turn

1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched;
2. the last "the (final) answer is ..." phrase, up to the end of its line or sentence;
3. the last GSM8K-style ``#### ...`` line;
4. a completion that is one short line of mathematics (a direct answer such as ``\\frac{1}{2}``, no
   words) is itself the answer;
5. the last number (commas between digit groups allowed).

Equivalence (:func:`equivalent`) is decided by Hugging Face's ``math-verify`` (``parse`` turns LaTeX or
plain expressions into SymPy, ``verify`` compares them symbolically and numerically), so ``0.5`` equals
``\\frac{1}{2}``, ``1,000`` equals ``1000`` and ``(3, \\pi/2)`` equals
``\\left( 3, \\frac{\\pi}{2} \\right)``.
Where ``math-verify`` cannot parse either side, the normalised strings are compared.

The accuracy of one completion is ``1`` if its extracted answer is equivalent to the gold answer, else
``0``; a benchmark's accuracy is the mean over samples.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

from infokv.eval.benchmarks.base import Score

METRIC = "accuracy"
_TIMEOUT_S = 5
_SHORT_ANSWER_CHARS = 60

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_WORD = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")  # a word that is not a LaTeX command


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces matched), or None."""
    starts = [match.end() for match in _BOX.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                return text[start:index].strip()
    return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` with thousands separators removed, or None."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def gsm8k_final(solution: str) -> str:
    """The final answer of a GSM8K reference solution (the text after ``####``), commas removed."""
    found = _HASHES.findall(solution)
    if not found:
        raise ValueError(f"GSM8K solution has no '####' line: {solution[-80:]!r}")
    return found[-1].replace(",", "").strip()


def extract_answer(completion: str) -> str | None:
    """The final answer stated in ``completion`` (see the module docstring for the order), or None."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    for pattern in (_ANSWER_IS, _HASHES):
        found = pattern.findall(completion)
        if found:
            return _tidy(found[-1])
    stripped = completion.strip().strip("$").strip()
    one_line = stripped and "\n" not in stripped and len(stripped) <= _SHORT_ANSWER_CHARS
    if one_line and not _WORD.search(stripped):
        return stripped
    return last_number(completion)


def _tidy(phrase: str) -> str:
    """A stated answer without ``$`` delimiters; "18 vacuum cleaners" (words around a number) -> "18"."""
    phrase = phrase.strip().strip("$").strip()
    number = last_number(phrase)
    return number if number is not None and _WORD.search(phrase) else phrase


def _as_latex(answer: str) -> str:
    """``answer`` wrapped in ``$...$`` so that math-verify reads it as one LaTeX expression."""
    return f"${answer.strip().strip('$')}$"


def _normalised(answer: str) -> str:
    return re.sub(r"\s+|\$|\\[,!;: ]", "", answer).rstrip(".").lower()


def equivalent(gold: str, answer: str) -> bool:
    """Whether ``answer`` is mathematically equal to ``gold`` (math-verify; string match as fallback)."""
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout)
    answer_parsed = parse(_as_latex(answer), parsing_timeout=timeout)
    if gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=timeout):
        return True
    return _normalised(gold) == _normalised(answer)


def score_math(gold: str, completion: str) -> Score:
    """Accuracy (0 or 1) of ``completion`` against the gold final answer, with the extracted answer."""
    extracted = extract_answer(completion)
    correct = extracted is not None and equivalent(gold, extracted)
    value = float(correct)
    return Score(value, {METRIC: value}, extracted, {"gold": gold})
