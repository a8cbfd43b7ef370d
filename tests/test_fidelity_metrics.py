"""Teacher-forced fidelity to the full cache: KL, argmax agreement and NLL of the full cache's answer."""

from __future__ import annotations

import math

import pytest
import torch

from infokv import generate_sweep
from infokv.engine import fidelity, sweep
from infokv.engine.capture import prefill
from infokv.engine.sampling import Sampler
from infokv.eval.store import records_frame
from infokv.signals.divergence import kl_divergence, position_divergence

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs, said the sphinx. " * 2,
]
SPLIT = [(prompt[:70], prompt[70:]) for prompt in PROMPTS]
"""(context, question) pairs for ``compress="context_only"``."""
SETTINGS = [("full", 1.0), ("snapkv", 0.5), ("streamingllm", 16)]
NEW_TOKENS = 8


class RecordingSampler(Sampler):
    """A sampler that keeps the (R, V) logits of every decoding step."""

    steps: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        RecordingSampler.steps.append(logits.float().clone())
        return super().__call__(logits)


@pytest.fixture
def recorded(monkeypatch):
    """Decoding logits per step and teacher-forced (start, log-probabilities) chunks of the next sweep."""
    chunks: list[tuple[int, torch.Tensor]] = []
    original = fidelity.teacher_forced_log_probs

    def recording(*args):
        for start, log_probs in original(*args):
            chunks.append((start, log_probs.clone()))
            yield start, log_probs

    RecordingSampler.steps = []
    monkeypatch.setattr(sweep, "Sampler", RecordingSampler)
    monkeypatch.setattr(fidelity, "teacher_forced_log_probs", recording)
    return RecordingSampler.steps, chunks


def scalars(record: dict) -> dict:
    return {key: record[key] for key in fidelity.SCALAR_KEYS}


@pytest.mark.parametrize("compress", ["prompt", "context_only"])
def test_teacher_forcing_through_the_full_cache_reproduces_its_decoding_logits(
    model, tokenizer, recorded, compress
):
    prompts = PROMPTS if compress == "prompt" else SPLIT
    steps, chunks = recorded
    (completions,) = generate_sweep(
        model, tokenizer, prompts, [("full", 1.0)], NEW_TOKENS, compress=compress, stop_at_eos=False
    )
    decoded = torch.stack(steps, dim=1).log_softmax(dim=-1)  # (rows, steps, V)
    forced = torch.cat([log_probs for _, log_probs in chunks], dim=1)
    assert [start for start, _ in chunks][0] == 0 and forced.shape == decoded.shape
    assert torch.allclose(forced, decoded, atol=1e-4)
    assert [c.fidelity["reference_tokens"] for c in completions] == [NEW_TOKENS] * len(prompts)


def test_full_setting_has_zero_kl_full_agreement_and_the_nll_of_its_own_decoding(
    llama, tokenizer, recorded, monkeypatch
):
    steps, _ = recorded
    monkeypatch.setattr(fidelity, "FORWARD_TOKENS", 3)  # several forwards, and
    monkeypatch.setattr(fidelity, "LOG_PROB_ELEMENTS", 1)  # log-probabilities one position at a time
    (alone,) = generate_sweep(llama, tokenizer, PROMPTS, [("full", 1.0)], NEW_TOKENS, stop_at_eos=False)
    decoded = torch.stack(steps, dim=1).log_softmax(dim=-1)
    full, *_ = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS, NEW_TOKENS, stop_at_eos=False)
    for row, completion in enumerate(full):
        record = completion.fidelity
        assert record["kl_mean"] == 0.0 and record["kl_max"] == 0.0
        assert record["kl_per_position"] == [0.0] * NEW_TOKENS
        assert record["argmax_agreement"] == 1.0
        answer = torch.tensor(alone[row].token_ids)
        expected = -decoded[row, torch.arange(len(answer)), answer].double().sum()
        assert record["nll_sum"] == pytest.approx(float(expected), rel=1e-4)
        assert record["nll_mean"] == pytest.approx(record["nll_sum"] / NEW_TOKENS)


def test_a_cache_keeping_few_tokens_has_positive_kl(llama, tokenizer):
    full, _, streaming = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS, NEW_TOKENS, stop_at_eos=False)
    for reference, completion in zip(full, streaming, strict=True):
        record = completion.fidelity
        assert record["kl_mean"] > 0 and record["kl_max"] >= max(record["kl_per_position"]) > 0
        assert 0.0 <= record["argmax_agreement"] <= 1.0
        assert record["reference_tokens"] == len(reference.token_ids) == NEW_TOKENS
        assert math.isfinite(record["nll_sum"])


def test_a_corrupted_cache_diverges_where_the_same_cache_does_not(llama, tokenizer):
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    answer = tokenizer("lazy fox")["input_ids"][1:]
    with torch.inference_mode():
        state, captured, last_logits = prefill(llama, ids, torch.ones_like(ids, dtype=torch.bool), set(), 64)
        pair = state.select_rows(torch.tensor([0, 0]))
        for layer in range(pair.num_layers):
            values = pair.layer(layer)[1]
            values[1] += torch.randn(values[1].shape, generator=torch.Generator().manual_seed(layer))
        same, corrupted = fidelity.measure(
            llama,
            pair,
            last_logits.repeat(2, 1),
            [answer, answer],
            captured.lengths.repeat(2),
            torch.zeros(2).long(),
            0,
        )
    assert same["kl_per_position"] == [0.0] * len(answer) and same["argmax_agreement"] == 1.0
    assert corrupted["kl_per_position"][0] == 0.0  # a_0 is predicted before the cache is read again
    assert corrupted["kl_mean"] > 0 and corrupted["nll_sum"] != same["nll_sum"]


def test_batched_equals_one_by_one(llama, tokenizer):
    batched = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS, NEW_TOKENS)
    for index, prompt in enumerate(PROMPTS):
        alone = generate_sweep(llama, tokenizer, [prompt], SETTINGS, NEW_TOKENS)
        for together, single in zip(batched, alone, strict=True):
            expected = scalars(together[index].fidelity)
            assert scalars(single[0].fidelity) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_without_a_full_setting_one_is_decoded_for_reference_and_not_returned(llama, tokenizer):
    with_full = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS, NEW_TOKENS)
    without = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS[1:], NEW_TOKENS)
    assert len(without) == len(SETTINGS) - 1
    for given, added in zip(with_full[1:], without, strict=True):
        assert [c.token_ids for c in given] == [c.token_ids for c in added]
        for a, b in zip(given, added, strict=True):
            assert scalars(a.fidelity) == pytest.approx(scalars(b.fidelity), rel=1e-4, abs=1e-6)


def test_fidelity_off_leaves_records_empty_and_completions_unchanged(llama, tokenizer):
    measured = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS[1:], NEW_TOKENS)
    unmeasured = generate_sweep(llama, tokenizer, PROMPTS, SETTINGS[1:], NEW_TOKENS, fidelity=False)
    for on, off in zip(measured, unmeasured, strict=True):
        assert [c.token_ids for c in on] == [c.token_ids for c in off]
        assert all(c.fidelity == {} for c in off) and all(c.fidelity for c in on)


def test_settings_compressing_while_decoding_are_not_measured(llama, tokenizer):
    prefill_only, decoding = generate_sweep(
        llama,
        tokenizer,
        PROMPTS,
        [("snapkv", 0.5), ("full", 1.0, "h2o", 0.5)],
        NEW_TOKENS,
        compress_every=4,
    )
    assert all(c.fidelity["reference_tokens"] > 0 for c in prefill_only)
    assert all(c.fidelity == {} for c in decoding)


def test_fidelity_must_be_a_boolean(llama, tokenizer):
    with pytest.raises(ValueError, match="fidelity 'yes' is not allowed"):
        generate_sweep(llama, tokenizer, PROMPTS, SETTINGS, NEW_TOKENS, fidelity="yes")


def test_an_empty_answer_is_recorded_without_numbers(llama, tokenizer):
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    with torch.inference_mode():
        state, captured, last_logits = prefill(llama, ids, torch.ones_like(ids, dtype=torch.bool), set(), 64)
        pair = state.select_rows(torch.tensor([0, 0]))
        empty, answered = fidelity.measure(
            llama,
            pair,
            last_logits.repeat(2, 1),
            [[], [5, 7]],
            captured.lengths.repeat(2),
            torch.arange(2),
            0,
        )
    assert empty["reason"] == fidelity.EMPTY_ANSWER and empty["reference_tokens"] == 0
    assert all(empty[key] is None for key in fidelity.SCALAR_KEYS if key != "reference_tokens")
    assert answered["reference_tokens"] == 2 and answered["kl_mean"] == 0.0


def test_divergence_terms_match_their_definitions():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    reference, compared = logits[0].log_softmax(-1), logits[1:].log_softmax(-1)
    kl, agree, nll = position_divergence(reference.expand(2, -1), compared, torch.tensor([4, 1]))
    expected = (reference.exp() * (reference - compared)).sum(-1)
    assert torch.allclose(kl, expected)
    assert agree.tolist() == (compared.argmax(-1) == reference.argmax()).tolist()
    assert torch.allclose(nll, -compared[[0, 1], [4, 1]])
    zero = torch.tensor([0.0, float("-inf")])
    assert kl_divergence(zero, zero).item() == 0.0  # 0 · log 0 counts as 0, not NaN


def test_frame_spreads_fidelity_scalars_and_leaves_the_per_position_list_out():
    record = {
        "setting": "snapkv@0.5",
        "score": 1.0,
        "metrics": {},
        "fidelity": {"kl_mean": 0.5, "kl_per_position": [0.5]},
    }
    frame = records_frame([record, {"setting": "full@1", "score": 0.0, "metrics": {}, "fidelity": {}}])
    assert "fidelity.kl_per_position" not in frame and "fidelity" not in frame
    assert frame["fidelity.kl_mean"].iloc[0] == 0.5 and frame["fidelity.kl_mean"].isna().iloc[1]
