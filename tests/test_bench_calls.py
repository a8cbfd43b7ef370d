"""How the GPU benchmark joins calls into one CSV and relates prefills to the plain forward
(``scripts/bench_calls.py``, ``scripts/bench.py``): pure logic, no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench  # noqa: E402
import bench_calls  # noqa: E402
from bench_common import Row  # noqa: E402


def _row(method: str, metric: str, value: float, call: str, tokens: int = 4096, budget: str = "0.2") -> Row:
    return Row(method, budget, tokens, 1, metric, value, "s", "", call)


def _call(name: str) -> bench_calls.Call:
    return bench_calls.Call(name, "abc1234", "python scripts/bench.py", "GPU", "torch")


def test_a_new_call_replaces_only_the_rows_it_measures_again():
    old = [
        _row("snapkv", "prefill_seconds", 1.0, "a"),
        _row("snapkv", "prefill_seconds", 2.0, "a", tokens=8192),
    ]
    new = [_row("snapkv", "prefill_seconds", 1.5, "b")]
    merged = bench_calls.merge_rows(old, new)
    assert sorted((r.prompt_tokens, r.value, r.call) for r in merged) == [(4096, 1.5, "b"), (8192, 2.0, "a")]


def test_calls_no_row_names_drop_out_and_a_rerun_call_replaces_its_record():
    rows = [_row("full", "prefill_seconds", 1.0, "b"), _row("full", "prefill_seconds", 1.0, "c", tokens=1)]
    merged = bench_calls.merge_calls([_call("a"), _call("b"), _call("c")], _call("c"), rows)
    assert [call.call for call in merged] == ["b", "c"]


def test_the_ledger_round_trips_rows_and_calls(tmp_path: Path):
    csv, calls = tmp_path / "gpu.csv", tmp_path / "calls.csv"
    first = bench_calls.Ledger.open(csv, calls, _call("a"), merge=True)
    first.write([_row("full", "prefill_seconds", 1.0, "a"), _row("h2o", "prefill_seconds", 3.0, "a")])
    second = bench_calls.Ledger.open(csv, calls, _call("b"), merge=True)
    rows = second.write([_row("full", "prefill_seconds", 0.9, "b")])
    assert {(r.method, r.call, r.value) for r in rows} == {("h2o", "a", 3.0), ("full", "b", 0.9)}
    assert [call.call for call in bench_calls.read_calls(calls)] == ["a", "b"]
    replaced = bench_calls.Ledger.open(csv, calls, _call("c"), merge=False)
    replaced.write([_row("full", "prefill_seconds", 0.8, "c")])
    assert [call.call for call in bench_calls.read_calls(calls)] == ["c"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--parts", "plain", "--csv", "/tmp/x.csv", "--merge"], "python scripts/bench.py --parts plain"),
        (["--commit=abc", "--lengths", "8192", "--calls", "c.csv"], "python scripts/bench.py --lengths 8192"),
    ],
)
def test_the_recorded_command_leaves_out_where_results_go(argv: list[str], expected: str):
    assert bench_calls.measuring_command(argv) == expected


def test_every_prefill_and_peak_is_divided_by_the_plain_forward_of_its_own_call_and_length():
    rows = [
        _row(bench.PLAIN, "prefill_seconds", 2.0, "a", budget="1"),
        _row(bench.PLAIN, "peak_memory_bytes", 100.0, "a", budget="1"),
        _row("snapkv", "prefill_compress_seconds", 2.2, "a"),
        _row("snapkv", "peak_memory_bytes", 80.0, "a"),
        _row("snapkv", "prefill_compress_seconds", 9.0, "a", tokens=8192),  # no plain forward at 8192
        _row("infokv", "prefill_compress_seconds", 9.0, "b"),  # another call
    ]
    ratios = {(r.method, r.metric): r.value for r in bench.plain_forward_ratios(rows)}
    assert ratios == {
        ("snapkv", "ratio_to_plain_forward"): pytest.approx(1.1),
        ("snapkv", "peak_memory_ratio_to_plain_forward"): pytest.approx(0.8),
    }
