"""Intervals for the result tables: Wilson, the bootstrap, paired differences, sample sizes, and the
columns they add to the tables, the summary and the figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from infokv.eval.plots import _points, accuracy_vs_budget
from infokv.eval.runner import summarise
from infokv.eval.statistics import (
    bootstrap_mean,
    describe,
    mean_interval,
    paired_difference,
    samples_needed,
    wilson,
)
from infokv.eval.tables import accuracy, write_tables


def wilson_by_hand(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)), (10, 10, (0.7225, 1.0)), (1, 1, (0.2065, 1.0))],
)
def test_wilson_known_values(k, n, expected):
    assert wilson(k, n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(3, 17), (40, 200), (199, 200)])
def test_wilson_matches_the_closed_form(k, n):
    assert wilson(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-6)


def test_wilson_without_trials_has_no_interval_and_bad_counts_are_refused():
    assert all(math.isnan(bound) for bound in wilson(0, 0))
    for k, n in ((3, 2), (-1, 5), (0.5, 2)):
        with pytest.raises(ValueError, match="successes"):
            wilson(k, n)
    with pytest.raises(ValueError, match="confidence 1.5"):
        wilson(1, 2, confidence=1.5)


def test_bootstrap_covers_the_mean_narrows_with_n_and_is_seeded():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        values = rng.normal(0.3, 0.2, n)
        low, high = bootstrap_mean(values)
        assert low < values.mean() < high
        # the normal-theory width 2 · 1.96 · s/√n, to within the bootstrap's own noise
        assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(n), rel=0.15)
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
    values = rng.random(30)
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert all(math.isnan(bound) for bound in bootstrap_mean([0.4]))
    assert bootstrap_mean([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([0.1, float("nan")])


def test_mean_interval_uses_wilson_for_0_1_scores_and_the_bootstrap_for_partial_scores():
    assert mean_interval([1, 0, 1, 1, 0, 1]) == wilson(4, 6)
    partial = [1.0, 0.5, 0.0, 0.75, 1.0, 0.25]
    assert mean_interval(partial) == bootstrap_mean(partial)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_samples():
    rng = np.random.default_rng(2)
    difficulty = rng.random(200)
    a = difficulty + rng.normal(0, 0.02, 200)
    b = difficulty - 0.03 + rng.normal(0, 0.02, 200)
    result = paired_difference(a, b)
    assert result.low < result.difference < result.high and result.resolved
    assert result.difference == pytest.approx((a - b).mean())
    a_low, a_high = bootstrap_mean(a)
    b_low, b_high = bootstrap_mean(b)
    unpaired_width = math.hypot(a_high - a_low, b_high - b_low)
    assert result.high - result.low < unpaired_width / 5
    assert a_low < b_high  # the two separate intervals overlap: on their own they resolve nothing
    assert result.n_for_delta == samples_needed((a - b).std(ddof=1), 0.05)
    assert not paired_difference([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]).resolved
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 0.0], [1.0])


def test_samples_needed_against_a_hand_computation():
    z = 1.959964 + 0.841621  # Φ⁻¹(0.975) + Φ⁻¹(0.8)
    assert samples_needed(0.3, 0.05) == math.ceil((z * 0.3 / 0.05) ** 2) == 283
    assert samples_needed(0.5, 0.05, paired=False) == math.ceil(2 * (z * 0.5 / 0.05) ** 2) == 1570
    assert samples_needed(0.0, 0.05) == 0
    with pytest.raises(ValueError, match="delta 0"):
        samples_needed(0.3, 0)
    with pytest.raises(ValueError, match="power 1"):
        samples_needed(0.3, 0.05, power=1)


def test_describe_averages_draws_per_sample_and_covers_any_numeric_column():
    frame = pd.DataFrame(
        {
            "method": ["m"] * 6,
            "sample_id": ["a", "a", "b", "b", "c", "c"],
            "score": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
            "fidelity.kl_mean": [0.1, 0.3, 0.2, 0.2, 0.5, 0.7],
        }
    )
    row = describe(frame, ["method"], ["score", "fidelity.kl_mean"]).iloc[0]
    assert row["n"] == 3 and row["score"] == pytest.approx(0.5)  # per-sample means 0.5, 1, 0
    assert (row["score_low"], row["score_high"]) == bootstrap_mean([0.5, 1.0, 0.0])
    assert (row["fidelity.kl_mean_low"], row["fidelity.kl_mean_high"]) == bootstrap_mean([0.2, 0.2, 0.6])


def records_frame_of(methods: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """A records frame: one 0/1 score per sample for each (method, budget), direct answers."""
    rows = []
    for (method, budget), scores in methods.items():
        for index, score in enumerate(scores):
            rows.append(
                {"scenario": "prefill", "model": "m", "benchmark": "b", "method": method, "budget": budget,
                 "cot": False, "sample_id": f"s{index}", "sample_index": 0, "score": score,
                 "completion": "right" if score else f"wrong {index}"}
            )  # fmt: skip
    return pd.DataFrame(rows)


SCORES = {
    ("full", "1"): [1.0] * 30,
    ("snapkv", "0.2"): [1.0] * 25 + [0.0] * 5,
    ("infokv", "0.2"): [1.0] * 28 + [0.0] * 2,
    ("h2o", "0.2"): [0.0] * 30,
}


def test_accuracy_table_has_intervals_and_paired_comparisons():
    table = accuracy(records_frame_of(SCORES)).set_index("method")
    assert table.loc["snapkv", "n"] == 30
    assert (table.loc["snapkv", ["accuracy_low", "accuracy_high"]] / 100).tolist() == pytest.approx(
        wilson(25, 30)
    )
    assert table.loc["snapkv", "agreement"] == pytest.approx(100 * 25 / 30)
    assert table.loc["snapkv", "agreement_low"] < table.loc["snapkv", "agreement"]
    # every method against the full cache, InfoKV also against SnapKV
    assert table.loc["h2o", "vs_full"] == -100 and table.loc["h2o", "vs_full_resolved"]
    assert table.loc["snapkv", "vs_full"] == pytest.approx(-100 * 5 / 30)
    assert table.loc["infokv", "vs_snapkv"] == pytest.approx(100 * 3 / 30)
    assert pd.isna(table.loc["snapkv", "vs_snapkv"]) and pd.isna(table.loc["full", "vs_full"])
    sd = np.std([1.0] * 25 + [0.0] * 5, ddof=1)
    assert table.loc["snapkv", "n_for_5pt"] == samples_needed(sd, 0.05, paired=False)
    assert table.loc["snapkv", "vs_full_n_for_5pt"] == samples_needed(sd, 0.05)


def test_written_tables_show_intervals_n_and_mark_resolved_differences(tmp_path):
    written = write_tables(accuracy(records_frame_of(SCORES)), tmp_path, "small")
    columns = pd.read_csv(written[0]).columns
    assert {"n", "accuracy_low", "accuracy_high", "agreement_low", "vs_full_resolved", "n_for_5pt"} <= set(
        columns
    )
    markdown = (tmp_path / "small_prefill.md").read_text()
    low, high = (100 * bound for bound in wilson(25, 30))
    assert f"| m | snapkv | {100 * 25 / 30:.1f} [{low:.0f}, {high:.0f}] |" in markdown
    assert "n (samples per cell): b 30" in markdown
    assert "| m | h2o | -100.0* [-100, -100] |" in markdown
    assert "Paired difference with snapkv" in markdown
    latex = (tmp_path / "small_prefill.tex").read_text()
    assert "20\\%" in latex and latex.count("\\begin{tabular}") == 4


def test_summary_table_gives_n_and_intervals_for_score_and_metrics():
    records = [
        {"benchmark": "b", "model": "m", "scenario": "prefill", "method": "snapkv", "budget": "0.4",
         "cot": False, "sample_id": f"s{i}", "sample_index": 0, "score": float(i % 2),
         "metrics": {"partial": i / 10}}
        for i in range(10)
    ]  # fmt: skip
    row = summarise(records).iloc[0]
    assert row["n"] == 10 and row["score"] == 0.5
    assert (row["score_low"], row["score_high"]) == pytest.approx(wilson(5, 10))
    partial = [i / 10 for i in range(10)]
    assert (row["metric.partial_low"], row["metric.partial_high"]) == bootstrap_mean(partial)


def test_figure_error_bars_come_from_the_table_intervals(tmp_path):
    table = accuracy(records_frame_of(SCORES))
    points = _points(table).set_index("method")
    snap = table.set_index("method").loc["snapkv"]
    assert points.loc["snapkv", "below"] == pytest.approx(snap["accuracy"] - snap["accuracy_low"])
    assert points.loc["snapkv", "above"] == pytest.approx(snap["accuracy_high"] - snap["accuracy"])
    two_models = pd.concat([table, table.assign(model="other")])
    assert (_points(two_models)["below"] == 0).all()  # a mean over models has no interval to draw
    without = table.drop(columns=["accuracy_low", "accuracy_high"])  # a table written before intervals
    for drawn in (table, without):
        assert accuracy_vs_budget(drawn, tmp_path / "figure.png").stat().st_size > 10_000


def test_tables_show_the_teacher_forced_kl_and_its_paired_difference_where_recorded(tmp_path):
    frame = records_frame_of(SCORES)
    kl = {"full": 0.0, "snapkv": 0.5, "infokv": 0.3, "h2o": 2.0}
    frame["fidelity.kl_mean"] = [
        kl[method] + 0.01 * (index % 3) for index, method in enumerate(frame["method"])
    ]
    table = accuracy(frame).set_index("method")
    assert (
        table.loc["full", "kl"] == pytest.approx(0.01)
        and table.loc["h2o", "kl_low"] <= table.loc["h2o", "kl"]
    )
    assert table.loc["infokv", "kl_vs_snapkv"] == pytest.approx(-0.2, abs=0.02)
    assert table.loc["infokv", "kl_vs_snapkv_resolved"] and "kl_vs_full" not in table.columns
    write_tables(accuracy(frame), tmp_path, "small")
    markdown = (tmp_path / "small_prefill.md").read_text()
    assert "Mean KL(full ‖ compressed)" in markdown and "nats of KL: method − snapkv" in markdown
    without = accuracy(records_frame_of(SCORES))
    assert "kl" not in without.columns


def test_a_continuous_measure_of_all_zeros_is_not_read_as_a_proportion():
    frame = pd.DataFrame({"method": ["full"] * 5, "sample_id": list("abcde"), "kl": [0.0] * 5})
    as_proportion = describe(frame, ["method"], ["kl"]).iloc[0]
    continuous = describe(frame, ["method"], ["kl"], proportions=()).iloc[0]
    assert as_proportion["kl_high"] > 0.4  # Wilson's upper bound for 0 of 5
    assert (continuous["kl_low"], continuous["kl_high"]) == (0.0, 0.0)


def test_comparisons_with_snapkv_are_also_pooled_over_benchmarks(tmp_path):
    scores = {("full", "1"): [1.0] * 8, ("snapkv", "0.2"): [1.0] * 8, ("infokv", "0.2"): [1.0] * 8}
    parts = []
    for benchmark, gap in (("b1", 0.05), ("b2", 0.15)):  # the same sample ids in both benchmarks
        frame = records_frame_of(scores).assign(benchmark=benchmark)
        noise = [0.1 * ((index * 7) % 5 - 2) for index in range(len(frame))]
        base = {"full": 0.0, "snapkv": 1.0, "infokv": 1.0 + gap}
        frame["fidelity.kl_mean"] = [base[m] + e for m, e in zip(frame["method"], noise, strict=True)]
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    table = accuracy(frame)
    together = table[(table["benchmark"] == "all") & (table["method"] == "infokv")].iloc[0]
    infokv = frame[frame["method"] == "infokv"].reset_index(drop=True)
    snapkv = frame[frame["method"] == "snapkv"].reset_index(drop=True)
    expected = (infokv["fidelity.kl_mean"] - snapkv["fidelity.kl_mean"]).mean()  # all 16 pairs
    assert together["kl_vs_snapkv"] == pytest.approx(expected)
    assert together["vs_snapkv"] == 0.0 and pd.isna(together["accuracy"])
    assert set(table[table["benchmark"] == "all"]["method"]) == {
        "infokv"
    }  # against the full cache: per benchmark
    write_tables(table, tmp_path, "small")
    markdown = (tmp_path / "small_prefill.md").read_text()
    assert "n (samples per cell): b1 8, b2 8\n" in markdown
    kl_table = markdown[markdown.index("nats of KL") :]
    assert kl_table.splitlines()[2].rstrip(" |").endswith("all 20%")  # the pooled column comes last
