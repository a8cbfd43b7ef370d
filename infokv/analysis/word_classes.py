"""Content words vs function words: which class each token belongs to.

Function words are the closed word classes of English: determiners and articles, pronouns,
prepositions, conjunctions, auxiliary and modal verbs, and a few particles (``not``, ``to``,
``there``, ...). The list below was written for this project from the closed-class categories of
standard English grammars (Quirk et al. 1985, *A Comprehensive Grammar of the English Language*,
§2.35–2.41; Biber et al. 1999, *Longman Grammar of Spoken and Written English*, ch. 2.4); it is
deliberately not an information-retrieval stop list, which mixes in frequent content words.

A token's class is the class of the word its characters fall in (words are maximal runs of
letters and apostrophes, lowercased): ``function`` if the word is in the list, ``content`` for any
other alphabetic word, ``other`` for tokens without letters (punctuation, digits, white space).
"""

from __future__ import annotations

import re

import torch

CLASSES = ("content", "function", "other")

_DETERMINERS = (
    "a an the this that these those my your his her its our their whose which what whatever whichever "
    "some any no every each either neither all both half several many much more most few fewer less "
    "least enough such another other"
)
_PRONOUNS = (
    "i me mine myself you yours yourself yourselves he him himself she hers herself it itself we us ours "
    "ourselves they them theirs themselves who whom whoever whomever one ones oneself someone somebody "
    "something anyone anybody anything everyone everybody everything nobody nothing none"
)
_PREPOSITIONS = (
    "about above across after against along amid among amongst around as at before behind below beneath "
    "beside besides between beyond but by concerning despite down during except for from in inside into "
    "like near of off on onto opposite out outside over past per regarding round since than through "
    "throughout till to toward towards under underneath unlike until up upon via with within without"
)
_CONJUNCTIONS = (
    "and or nor so yet because although though whereas while whilst if unless whether once lest "
    "whenever wherever when where why how then"
)
_AUXILIARIES = (
    "be am is are was were been being have has had having do does did done doing will would shall should "
    "can could may might must ought need dare"
)
_CONTRACTIONS = (
    "i'm you're he's she's it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd "
    "i'll you'll he'll she'll we'll they'll isn't aren't wasn't weren't hasn't haven't hadn't doesn't "
    "don't didn't won't wouldn't shan't shouldn't can't cannot couldn't mustn't mightn't needn't "
    "that's there's here's what's who's let's"
)
_PARTICLES = "not n't to there here just also only even too very"

FUNCTION_WORDS: frozenset[str] = frozenset(
    " ".join(
        (_DETERMINERS, _PRONOUNS, _PREPOSITIONS, _CONJUNCTIONS, _AUXILIARIES, _CONTRACTIONS, _PARTICLES)
    ).split()
)

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")


def word_class(word: str) -> str:
    """``function`` or ``content`` for an alphabetic word (case and curly apostrophes ignored)."""
    return "function" if word.lower().replace("’", "'") in FUNCTION_WORDS else "content"


def token_classes(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    """The class of each token, given its character ``offsets`` (start, stop) into ``text``."""
    owner = [""] * len(text)
    for match in _WORD.finditer(text):
        kind = word_class(match.group())
        for position in range(match.start(), match.end()):
            owner[position] = kind
    classes = []
    for start, stop in offsets:
        kinds = {owner[position] for position in range(start, min(stop, len(text)))} - {""}
        # A token that straddles a word boundary takes the first word's class.
        classes.append(owner[next(p for p in range(start, stop) if owner[p])] if kinds else "other")
    return classes


def class_ids(classes: list[str]) -> torch.Tensor:
    """(T,) long tensor of indices into :data:`CLASSES`."""
    return torch.tensor([CLASSES.index(kind) for kind in classes], dtype=torch.long)
