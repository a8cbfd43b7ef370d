"""The physical floor of the CPU sweep benchmark (``scripts/bench_sweep.py``), on tiny models."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_common  # noqa: E402
import bench_sweep  # noqa: E402
from tiny import tiny_config  # noqa: E402


def _model(tied: bool = False):
    config = tiny_config("llama")
    config.tie_word_embeddings = tied
    return AutoModelForCausalLM.from_config(config).eval()


def test_a_tied_lm_head_still_counts_as_a_matrix_product():
    untied, tied = bench_common.parameter_count(_model()), bench_common.parameter_count(_model(tied=True))
    assert tied == untied
    config = tiny_config("llama")
    assert untied[0] > config.vocab_size * config.hidden_size  # the layers and the head, not the head alone


def test_the_entropy_adds_the_lm_head_at_every_prompt_position():
    model = _model(tied=True)
    ceilings = bench_common.Ceilings(matmul_flops=1e9, copy_bytes_per_second=1e9)
    rows, prompts = [(0, 40.0, 3), (1, 60.0, 3)], [50, 70]
    without = bench_sweep.generation_floor(model, ceilings, prompts, rows, entropy=False)
    with_entropy = bench_sweep.generation_floor(model, ceilings, prompts, rows, entropy=True)
    head = model.config.vocab_size * model.config.hidden_size
    assert with_entropy - without == pytest.approx(2.0 * head * sum(prompts) / 1e9)


def test_each_step_costs_the_slower_of_arithmetic_and_traffic_over_the_rows_still_decoding():
    model = _model()
    config = model.config
    matrix, weights = bench_common.parameter_count(model)
    entry = bench_common.kv_bytes_per_token(config, 4)
    rows = [(0, 10.0, 3), (0, 5.0, 1)]  # one prompt: three steps for the first row, one for the second
    prefill = bench_common.prefill_flops(model, 12)

    bound_by_traffic = bench_common.Ceilings(matmul_flops=1e30, copy_bytes_per_second=1e6)
    floor = bench_sweep.generation_floor(model, bound_by_traffic, [12], rows, entropy=False)
    # Step 0 reads the 12 prompt entries once, though the rows keep 15 between them; later steps add what
    # the one row still decoding has generated.
    read = [12, 10 + 1, 10 + 2]
    assert floor == pytest.approx(prefill / 1e30 + sum(weights + entry * count for count in read) / 1e6)

    bound_by_arithmetic = bench_common.Ceilings(matmul_flops=1e6, copy_bytes_per_second=1e30)
    floor = bench_sweep.generation_floor(model, bound_by_arithmetic, [12], rows, entropy=False)
    attended = [[10, 5], [11], [12]]  # every row scores its own entries
    flops = sum(
        2.0 * matrix + bench_common.attention_flops(config, 1, keys + 1) for step in attended for keys in step
    )
    assert floor == pytest.approx((prefill + flops) / 1e6)


def test_decoding_rows_count_equal_settings_once_and_every_sample():
    def completion(setting: str, kept: list[int], generated: int):
        return SimpleNamespace(stats={"setting": setting, "kept_tokens": kept, "generated_tokens": generated})

    results = [
        [completion("full@1", [8, 8], 4), completion("full@1", [9, 9], 5)],
        [completion("snapkv@0.5", [4, 2], 3), completion("snapkv@0.5", [5, 5], 1)],
        [completion("full@1", [8, 8], 4), completion("full@1", [9, 9], 5)],  # full at another budget
    ]
    assert sorted(bench_sweep.decoding_rows(results)) == [(0, 3.0, 2), (0, 8.0, 3), (1, 5.0, 0), (1, 9.0, 4)]
