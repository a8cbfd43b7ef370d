"""The cost check's bookkeeping (``scripts/cost_check.py``): merged rows, comparisons, README; no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import cost_check  # noqa: E402

BASE = "experiment=paper_prefill model=random-llama-3.1-8b benchmark.options.tokens=16384"


def _row(overrides: str, methods: str, seconds: float, estimate: float, part: str = "prefill") -> dict:
    return {
        "part": part,
        "model": "random-llama-3.1-8b",
        "prompt_option": "16384",
        "samples": "2",
        "max_new_tokens": "1024",
        "methods": methods,
        "settings": "1",
        "prompt_tokens": "16378",
        "new_tokens": "2048",
        "build_seconds": "0.1",
        "prepare_seconds": "0.5",
        "seconds": str(seconds),
        "overrides": overrides,
        "commit": "abc1234",
        "device": "NVIDIA H200",
        "software": "torch 2.11",
        "estimate_seconds": str(estimate),
        "estimate_one_method_seconds": "",
        "measured_over_estimate": f"{seconds / estimate:.2f}",
    }


def test_later_row_of_a_configuration_replaces_the_earlier(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    cost_check.write_csv(first, [_row(BASE, "full snapkv", 10.0, 5.0)], cost_check.MEASURED)
    cost_check.write_csv(
        second, [_row(BASE, "full snapkv", 12.0, 5.0), _row(BASE + " method=[full]", "full", 7.0, 4.0)],
        cost_check.MEASURED,
    )  # fmt: skip
    rows = cost_check.read_csv([first, second])
    assert [(r["methods"], r["seconds"]) for r in rows] == [("full snapkv", "12.0"), ("full", "7.0")]


def test_shared_job_is_set_against_its_jobs_of_one_method() -> None:
    rows = [
        _row(BASE, "full snapkv infokv", 10.0, 8.0),
        _row(BASE + " method=[full]", "full", 6.0, 4.0),
        _row(BASE + " method=[snapkv]", "snapkv", 9.0, 8.0),
    ]
    [line] = cost_check.one_method_rows(rows)
    assert line[2] == "2 of 3: full snapkv"
    assert line[3:] == ["10.0", "15.0", "1.50", "8.0", "12.0", "1.50"]


def test_readme_corrects_the_projection_by_the_shared_jobs_ratio_alone() -> None:
    rows = [
        _row(BASE, "full snapkv", 30.0, 10.0),  # measured 3x the estimate
        _row(BASE + " method=[full]", "full", 50.0, 10.0),  # a job of one method: not in the correction
    ]
    projected = [
        {"preset": "paper_prefill", "job": "model=m", "samples": 794, "prompt_tokens": 1, "notes": "",
         "generated_tokens_at_most": 2, "gpu_hours": 2.0, "gpu_hours_one_method_per_job": 5.0},
    ]  # fmt: skip
    text = cost_check.readme(rows, projected, "python scripts/cost_check.py --estimate-only x.csv")
    assert "| prefill | 1 | 2.0 | 5.0 | 3.00 | 6.0 | 15.0 |" in text
    assert "`abc1234`, NVIDIA H200, torch 2.11" in text
    assert "| random-llama-3.1-8b | full | 16378 |" in text
