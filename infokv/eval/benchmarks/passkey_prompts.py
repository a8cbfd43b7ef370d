"""Small offline tasks for demos and end-to-end tests (no downloads).

``passkey``: needle retrieval. A chat prompt of about ``tokens`` tokens holds deterministic filler
sentences (built from a small word list; they contain no digits) with one needle sentence
"The secret passkey is NNNNN." inserted at a seeded depth, and ends with the question
"What is the secret passkey?". What is measured: whether the model can still copy a five-digit number
from far back in its context — i.e. whether a compressed KV cache kept the needle's entries.
:func:`score` is 1 when the gold number appears in the completion, else 0.

SmolLM2-135M-Instruct with a full cache answers it under greedy decoding with 12 new tokens:
8/8 at 1024 tokens (seeds 0-7) and 5/5 at 2048 tokens (seeds 100-104), so accuracy lost under
compression is the compression's doing. The needle is stated twice in one sentence pair: with a single
statement, compressed caches lose it more often. Digits are single tokens in this tokenizer, so a
method that keeps only some of the needle's entries typically answers with a truncated number.
Every sample is a deterministic function of (tokenizer, seed, tokens, depth).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

INSTRUCTION = (
    "There is a secret passkey hidden inside the following text. Find it and remember it. "
    "I will ask you about the passkey afterwards."
)
QUESTION = "What is the secret passkey?"
NEEDLE = "The secret passkey is {answer}. Remember it: the secret passkey is {answer}."

_SUBJECTS = (
    "The old farmer",
    "A young girl",
    "The baker",
    "My neighbour",
    "The teacher",
    "A tired sailor",
    "The little dog",
    "Our cat",
    "The painter",
    "A quiet student",
    "The doctor",
    "His brother",
)
_VERBS = (
    "walked slowly to",
    "looked at",
    "talked about",
    "dreamed of",
    "cleaned",
    "painted",
    "waited near",
    "forgot about",
    "sang a song about",
    "carried a basket to",
    "smiled at",
    "read a book about",
)
_OBJECTS = (
    "the green hills",
    "the river",
    "the market in town",
    "a small wooden house",
    "the garden",
    "the blue sky",
    "the harbour",
    "an empty road",
    "the library",
    "the forest",
    "the kitchen table",
    "a field of flowers",
)
_ENDINGS = (
    "in the morning",
    "after lunch",
    "on a rainy day",
    "before sunset",
    "late at night",
    "during the summer",
    "with a cup of tea",
    "without a word",
)


@dataclass(frozen=True)
class Sample:
    """One task prompt: the whole chat prompt, the same text split for ``compress='context_only'``."""

    prompt: str  # context + question, chat-formatted, ready for generate(..., compress="prompt")
    context: str  # instruction + filler + needle (compressed under compress="context_only")
    question: str  # the question and the chat template's tail up to the assistant turn
    answer: str  # the gold passkey
    depth: float  # where the needle sits in the filler, 0 (start) to 1 (end)
    tokens: int  # length of ``prompt`` in tokens
    body: str  # the user turn before chat formatting, without the question

    def pair(self) -> tuple[str, str]:
        """``(context, question)`` for ``compress='context_only'``."""
        return self.context, self.question


def filler_sentence(rng: random.Random) -> str:
    """One natural-ish English sentence without digits."""
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}."


def _render(tokenizer: PreTrainedTokenizerBase, body: str) -> tuple[str, str]:
    """Chat-format ``body`` + question; return (context, question) with context + question == prompt."""
    marker = "\n\n" + QUESTION
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": body + marker}], add_generation_prompt=True, tokenize=False
    )
    cut = prompt.rindex(marker)
    return prompt[:cut], prompt[cut:]


def _count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def passkey(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, tokens: int = 1024, depth: float | None = None
) -> Sample:
    """One passkey sample of about ``tokens`` tokens (never more); needle ``depth`` seeded if None."""
    rng = random.Random(f"passkey-{seed}")
    answer = str(rng.randint(10000, 99999))
    depth = rng.uniform(0.05, 0.95) if depth is None else depth
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} must be in [0, 1]")
    needle = NEEDLE.format(answer=answer)
    context, question = _render(tokenizer, f"{INSTRUCTION} {needle}")
    room = tokens - _count(tokenizer, context + question)
    if room < 0:
        raise ValueError(f"tokens {tokens} is too small; the prompt without filler has {tokens - room}")
    sentences, used = [], 0
    while True:
        sentence = filler_sentence(rng)
        cost = _count(tokenizer, " " + sentence)
        if used + cost > room:
            break
        sentences.append(sentence)
        used += cost
    while True:
        at = round(depth * len(sentences))
        body = " ".join([INSTRUCTION, *sentences[:at], needle, *sentences[at:]])
        context, question = _render(tokenizer, body)
        length = _count(tokenizer, context + question)
        if length <= tokens or not sentences:
            break
        sentences.pop()
    return Sample(context + question, context, question, answer, depth, length, body)


def passkey_samples(
    tokenizer: PreTrainedTokenizerBase, count: int, tokens: int = 1024, seed: int = 0
) -> list[Sample]:
    """``count`` samples with seeds ``seed .. seed + count - 1``."""
    return [passkey(tokenizer, seed + index, tokens) for index in range(count)]


def score(completion: str, answer: str) -> float:
    """1.0 when the gold ``answer`` appears in the completion, else 0.0."""
    return float(answer in completion)
