"""The decoding-at-scale benchmark's pure parts (``scripts/bench_scale.py``): no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_scale  # noqa: E402
from bench_calls import Call  # noqa: E402
from bench_common import Row  # noqa: E402

from infokv import generate  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. "


@pytest.mark.parametrize("text", ["infokv@0.25", "rpc@0.125", "full"])
def test_trajectory_follows_the_engines_compressions(llama, tokenizer, text):
    config = bench_scale.Config.parse(text)
    completion = generate(
        llama,
        tokenizer,
        [PROMPT],
        "full",
        1.0,
        max_new_tokens=70,
        stop_at_eos=False,
        fidelity=False,
        **config.options(16),
    )[0]
    prompt = completion.stats["prompt_tokens"]
    entries = bench_scale.trajectory(config, prompt, 70, 16)
    assert len(entries) == 69 and max(entries) == completion.stats["peak_cache_entries"]
    for generated, before, after in completion.stats["compressions"]:
        assert entries[generated - 1] == before  # what step g attended, its own entry included
        assert entries[generated] == after + 1  # the next step attends the kept entries and its own


def test_readme_reads_every_figure_from_the_rows():
    rows = [
        Row("infokv", "0.25", 512, 64, "memory_ratio_to_largest_cache", 1.2, "x", "", "c1"),
        Row("infokv", "0.25", 512, 64, "memory_largest_cache", 2**31, "B", "", "c1"),
        Row("infokv", "0.25", 512, 64, "memory_peak_above_weights", 2.4 * 2**30, "B", 2.0**31, "c1"),
        Row("infokv", "0.25", 512, 64, "memory_run_new_tokens", 8192, "tokens", "", "c1"),
        Row("infokv", "0.25", 512, 64, "memory_run_tokens_per_second", 3000, "tokens/s", 9000.0, "c1"),
        Row("infokv", "0.25", 16384, 140, "scale_batch_that_fits", 140, "rows", "", "c1"),
        Row("infokv", "0.25", 16384, 140, "scale_tokens_per_second_estimate", 2600, "tokens/s", "", "c1"),
        Row("infokv", "0.25", 16384, 0, "scale_speedup_equal_memory_estimate", 2.6, "x", "", "c1"),
    ]
    text = bench_scale.render(rows, [Call("c1", "abc1234", "python scripts/bench_scale.py", "H200", "torch")])
    assert "| infokv | 0.25 | 64 | 8192 | 2.0 | 2.4 | 1.200 | 3000 | 9000 |" in text
    assert "| 16384 | infokv | 0.25 | 140 | – | 2600 | 2.60 | – | – |" in text
    assert "`python scripts/bench_scale.py`" in text
