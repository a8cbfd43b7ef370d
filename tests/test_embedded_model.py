"""End to end on the embedded default model (SmolLM2-135M-Instruct, converted from its GGUF)."""

from __future__ import annotations

import pytest
import torch

from infokv import generate, generate_sweep, load_model, methods

pytestmark = pytest.mark.slow

FACTS = (
    "Mira keeps three red boxes in the attic. The train to Oslo leaves at nine. "
    "The gardener planted tulips near the gate. The secret code for the vault is 7291. "
    "Paul painted the fence blue last summer. "
)


@pytest.fixture(scope="module")
def embedded():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def prompt(embedded) -> str:
    _, tokenizer = embedded
    messages = [{"role": "user", "content": FACTS * 4 + "What is the secret code for the vault?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_full_budget_matches_transformers_greedy(embedded, prompt):
    model, tokenizer = embedded
    input_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    expected = model.generate(input_ids, max_new_tokens=16, do_sample=False)[0, input_ids.shape[1] :].tolist()
    stop = tokenizer.eos_token_id
    expected = expected[: expected.index(stop)] if stop in expected else expected
    for name in ("full", "snapkv", "infokv"):
        completion = generate(model, tokenizer, [prompt], name, 1.0, max_new_tokens=16)[0]
        assert completion.token_ids == expected, name
    assert "7291" in tokenizer.decode(expected)


def test_sweep_of_every_method_runs_and_keeps_its_budget(embedded, prompt):
    model, tokenizer = embedded
    settings = [(name, 0.5) for name in methods.available("prefill")]
    results = generate_sweep(model, tokenizer, [prompt], settings, max_new_tokens=8)
    length = results[0][0].stats["prompt_tokens"]
    for (name, _), (completion,) in zip(settings, results, strict=True):
        assert completion.token_ids, name
        kept = completion.stats["kept_tokens"]
        assert len(kept) == model.config.num_hidden_layers
        if name == "full":
            assert kept == [length] * len(kept)
        elif name == "pyramidkv":  # at 50% kvpress caps the first layer at T - window, which leaves the
            assert kept[0] > kept[-1]  # last one exactly the window: its pyramid engages from T = 128 on
        else:
            assert kept == [length // 2] * len(kept)
