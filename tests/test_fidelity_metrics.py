"""Teacher-forced fidelity to the full cache: KL, argmax agreement and NLL of the full cache's answer."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from infokv import generate_sweep, methods
from infokv.engine import fidelity, sweep
from infokv.engine.capture import prefill
from infokv.engine.sampling import Sampler
from infokv.eval.configs import register_configs
from infokv.eval.runner import check_job, run_job
from infokv.eval.store import records_frame, unique_records
from infokv.eval.tables import accuracy, write_tables
from infokv.signals.divergence import kl_divergence, position_divergence

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs, said the sphinx. " * 2,
]
SPLIT = [(prompt[:70], prompt[70:]) for prompt in PROMPTS]
"""(context, question) pairs for ``compress="context_only"``."""
SETTINGS = [("full", 1.0), ("snapkv", 0.5), ("streamingllm", 16)]
CONF = Path(__file__).resolve().parent.parent / "infokv" / "conf"
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


# ---- settings compressed while decoding: a teacher-forced decode of the full cache's answer --------------

DECODE_TOKENS = 24
KEEPING = ("full", 1.0, "h2o", 1.0)
"""Compresses every 4 tokens (the cache is gathered again) but keeps every entry."""
EVICTING = ("full", 1.0, methods.get("h2o", window=4), 0.25)
"""Keeps a quarter of the generated entries (at least 4) from the second compression on."""
DECODING = [("full", 1.0), KEEPING, EVICTING]


def decode_sweep(model, tokenizer, settings=DECODING, prompts=PROMPTS, **options):
    options = {"compress_every": 4, "stop_at_eos": False} | options
    return generate_sweep(model, tokenizer, prompts, settings, DECODE_TOKENS, **options)


class Replaying(fidelity.ForcedSampler):
    """A forced sampler that keeps the (R, V) logits of every step."""

    steps: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        Replaying.steps.append(logits.float().clone())
        return super().__call__(logits)


@pytest.mark.parametrize("compress", ["prompt", "context_only"])
def test_a_decode_compression_keeping_everything_matches_the_full_cache_which_is_its_own_reference(
    llama, tokenizer, compress
):
    prompts = PROMPTS if compress == "prompt" else SPLIT
    full, keeping, _ = decode_sweep(llama, tokenizer, prompts=prompts, compress=compress)
    for reference, completion in zip(full, keeping, strict=True):
        assert (
            completion.stats["compression_events"] == DECODE_TOKENS // 4 - 1
        )  # the last step compresses none
        record, own = completion.fidelity, reference.fidelity
        assert own["kl_per_position"] == [0.0] * DECODE_TOKENS and own["argmax_agreement"] == 1.0
        assert record["kl_per_position"] == pytest.approx([0.0] * DECODE_TOKENS, abs=1e-6)
        assert record["argmax_agreement"] == 1.0 and record["reference_tokens"] == DECODE_TOKENS
        # the decode's NLL of the answer is the one the full setting's single forward gives it
        assert record["nll_sum"] == pytest.approx(own["nll_sum"], rel=1e-5)


def test_a_decode_compression_that_evicts_diverges_after_its_first_eviction(model, tokenizer):
    _, _, evicting = decode_sweep(model, tokenizer)
    for completion in evicting:
        record = completion.fidelity
        evicted = [step for step, before, after in completion.stats["compressions"] if after < before]
        assert evicted and evicted[0] == 8
        # Caches still hold the same entries: equal up to the order of float sums (threads, buffer widths).
        before = record["kl_per_position"][: evicted[0] + 1]
        assert max(before) < 1e-5
        assert record["kl_max"] == max(record["kl_per_position"]) > 1e-3 and record["kl_mean"] > 0
        assert 0.0 <= record["argmax_agreement"] <= 1.0 and math.isfinite(record["nll_sum"])
        assert record["reference_tokens"] == DECODE_TOKENS


def test_the_forced_decode_through_the_full_cache_reproduces_its_decoding_logits(
    llama, tokenizer, recorded, monkeypatch
):
    steps, _ = recorded
    Replaying.steps = []
    monkeypatch.setattr(sweep, "ForcedSampler", Replaying)
    decode_sweep(llama, tokenizer)
    rows = len(PROMPTS)  # the full setting's rows come first in both decodes
    assert len(Replaying.steps) == len(steps) == DECODE_TOKENS
    for decoded, forced in zip(steps, Replaying.steps, strict=True):
        assert torch.allclose(forced[:rows], decoded[:rows], atol=1e-5)


def test_forcing_a_compressed_row_its_own_sampled_answer_reproduces_its_decoding(
    llama, tokenizer, monkeypatch
):
    """The forced decode compresses at the same steps with the same signals as a real run: InfoKV's entropy
    of the producing distribution (the sampler's, at temperature 0.8) included."""
    tokens: list[torch.Tensor] = []

    class Keeping(RecordingSampler):
        def __call__(self, logits: torch.Tensor) -> torch.Tensor:
            token = super().__call__(logits)
            tokens.append(token)
            return token

    settings = [("full", 1.0, methods.get("infokv", window=4), 0.25)]
    options = {"temperature": 0.8, "seed": [3, 4], "fidelity": False}
    RecordingSampler.steps = []
    monkeypatch.setattr(sweep, "Sampler", Keeping)
    (sampled,) = decode_sweep(llama, tokenizer, settings, **options)
    answers = torch.stack(tokens, dim=1).tolist()
    Replaying.steps = []

    def replaying(temperature, top_p, seeds, device):
        return Replaying(temperature, top_p, answers, range(len(answers)), 0, device)

    monkeypatch.setattr(sweep, "Sampler", replaying)
    (replayed,) = decode_sweep(llama, tokenizer, settings, **options)
    assert [c.stats["compressions"] for c in replayed] == [c.stats["compressions"] for c in sampled]
    assert any(after < before for c in sampled for _, before, after in c.stats["compressions"])
    assert [c.token_ids for c in replayed] == [c.token_ids for c in sampled]
    for decoded, forced in zip(RecordingSampler.steps, Replaying.steps, strict=True):
        assert torch.allclose(forced, decoded, atol=1e-5)


def test_decode_fidelity_batched_equals_one_by_one(llama, tokenizer):
    batched = decode_sweep(llama, tokenizer, stop_at_eos=True)
    for index, prompt in enumerate(PROMPTS):
        alone = decode_sweep(llama, tokenizer, prompts=[prompt], stop_at_eos=True)
        for together, single in zip(batched, alone, strict=True):
            expected = scalars(together[index].fidelity)
            assert scalars(single[0].fidelity) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_rows_whose_answer_stops_early_leave_the_forced_decode_with_their_reference(
    llama, tokenizer, monkeypatch
):
    class Stopping(Sampler):
        """Greedy, but prompt 0's rows of every setting sample the stop token at step 6."""

        calls = 0

        def __call__(self, logits: torch.Tensor) -> torch.Tensor:
            token = super().__call__(logits)
            Stopping.calls += 1
            if Stopping.calls == 6:
                token[:: len(PROMPTS)] = tokenizer.eos_token_id
            return token

    monkeypatch.setattr(sweep, "Sampler", Stopping)
    stopped = decode_sweep(llama, tokenizer, stop_at_eos=True)
    monkeypatch.undo()
    alone = [decode_sweep(llama, tokenizer, prompts=[prompt], stop_at_eos=True) for prompt in PROMPTS]
    for index, (first, second) in enumerate(stopped):
        early, whole = first.fidelity, alone[0][index][0].fidelity
        assert early["reference_tokens"] == 6 and whole["reference_tokens"] == DECODE_TOKENS
        assert early["kl_per_position"] == pytest.approx(whole["kl_per_position"][:6], abs=1e-6)
        assert scalars(second.fidelity) == pytest.approx(
            scalars(alone[1][index][0].fidelity), rel=1e-4, abs=1e-6
        )


def test_fidelity_tokens_limits_the_forced_answer_to_its_first_tokens(llama, tokenizer):
    whole = decode_sweep(llama, tokenizer, [("snapkv", 0.5), *DECODING])
    limited = decode_sweep(llama, tokenizer, [("snapkv", 0.5), *DECODING], fidelity_tokens=5)
    for all_tokens, first in zip(whole, limited, strict=True):
        for a, b in zip(all_tokens, first, strict=True):
            assert a.token_ids == b.token_ids and b.fidelity["reference_tokens"] == 5
            assert b.fidelity["kl_per_position"] == pytest.approx(a.fidelity["kl_per_position"][:5], abs=1e-6)


def test_a_sweep_compressing_only_while_decoding_decodes_a_full_reference_and_does_not_return_it(
    llama, tokenizer
):
    with_full = decode_sweep(llama, tokenizer)
    (without,) = decode_sweep(llama, tokenizer, [EVICTING])
    assert [c.token_ids for c in without] == [c.token_ids for c in with_full[2]]
    for given, alone in zip(with_full[2], without, strict=True):
        assert scalars(alone.fidelity) == pytest.approx(scalars(given.fidelity), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_fidelity_tokens_must_be_a_positive_integer_or_none(llama, tokenizer, value):
    with pytest.raises(
        ValueError, match=f"fidelity_tokens {value!r} is not allowed; use an integer >= 1 or null"
    ):
        decode_sweep(llama, tokenizer, fidelity_tokens=value)


def test_the_decode_table_shows_the_kl_where_decode_records_have_it(tmp_path):
    rows = [
        {"scenario": "decode", "model": "m", "benchmark": "ifeval", "method": method, "budget": budget,
         "cot": False, "sample_id": f"s{sample}", "sample_index": 0, "score": 1.0, "completion": "yes",
         "fidelity.kl_mean": kl + 0.01 * sample}
        for method, budget, kl in (("full", "1", 0.0), ("rpc", "0.25", 0.2), ("infokv", "0.25", 0.1))
        for sample in range(4)
    ]  # fmt: skip
    write_tables(accuracy(pd.DataFrame(rows)), tmp_path, "small")
    table = (tmp_path / "small_decode.md").read_text()
    assert "Mean KL(full ‖ compressed) over the full cache's answer" in table
    assert "| m | rpc | 0.215 [" in table


def test_a_decode_job_records_the_fidelity_of_its_compressed_settings(tmp_path):
    register_configs()
    overrides = [
        "scenario=decode", "method=[full,rpc]", "budget=0.25", "benchmark.limit=1",
        "benchmark.options.tokens=300", "max_new_tokens=12", "scenario.compress_every=4",
        "scenario.fidelity_tokens=6", "scenario.temperature=0", f"output_dir={tmp_path}", "wandb=false",
        "progress=false",
    ]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    directory, table = run_job(cfg)
    records = {record["method"]: record["fidelity"] for record in unique_records(directory)}
    assert records["full"]["kl_mean"] == 0.0 and records["rpc"]["reference_tokens"] == 6
    assert len(records["rpc"]["kl_per_position"]) == 6 and records["rpc"]["argmax_agreement"] is not None
    assert "fidelity.kl_mean" in table and table["fidelity.kl_mean"].notna().all()


def test_the_decode_scenario_checks_fidelity_tokens_before_loading_anything():
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["scenario=decode", "method=rpc", "scenario.fidelity_tokens=0"])
    with pytest.raises(
        ValueError, match="scenario.fidelity_tokens 0 is not allowed; use an integer >= 1 or null"
    ):
        check_job(cfg)


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
