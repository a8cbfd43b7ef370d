"""The GPU benchmark's README is written from the CSV rows (``scripts/bench_readme.py``): no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_readme  # noqa: E402
from bench_calls import Call  # noqa: E402
from bench_common import Row  # noqa: E402


def _rows(call: str) -> list[Row]:
    return [
        Row("plain_forward", "1", 4096, 1, "prefill_seconds", 0.5, "s", "", call),
        Row("plain_forward", "1", 4096, 1, "peak_memory_bytes", 3 * 2**30, "B", "", call),
        Row("full", "1", 4096, 1, "prefill_seconds", 0.6, "s", "", call),
        Row("full", "1", 4096, 1, "ratio_to_plain_forward", 1.2, "x", "", call),
        Row("plain_forward", "1", 8192, 1, "out_of_memory", 1.0, "count", "", call),
    ]


def test_the_plain_forward_table_reads_its_figures_and_out_of_memory_from_the_rows():
    text = bench_readme.render(
        _rows("c1"), [Call("c1", "abc1234", "python scripts/bench.py --parts plain", "", "")]
    )
    assert "| 4096 | 0.500 | 3.00 | 0.600 | 1.20 | – | c1 |" in text
    assert "| 8192 | out of memory |" in text
    assert "`python scripts/bench.py --parts plain`" in text
    assert "full prefill / plain forward at 32768: not measured" in text


def test_the_readme_changes_with_the_rows(tmp_path: Path):
    rows = _rows("c1")
    rows[0].value = 0.25
    assert "| 4096 | 0.250 |" in bench_readme.render(rows, [])
