"""Shared fixtures: a character tokenizer and tiny random models of two architectures."""

from __future__ import annotations

import string
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))

from tiny import VOCAB, tiny_model  # noqa: E402

SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer whose ids fit the tiny models' vocabulary."""
    vocab = dict(SPECIALS)
    for char in string.ascii_letters + string.digits + " .,:;?!'-\n()":
        vocab[char] = len(vocab)
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")
