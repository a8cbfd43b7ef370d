"""Result tables in the paper's layout, from the scored samples of many runs, with 95% intervals.

:func:`accuracy` reduces the per-sample frame (:func:`infokv.eval.store.load_frame`) to one row per
(scenario, model, benchmark, method, budget, style) with

* ``n`` = samples (a sample with several draws counts once, with the mean of its draws),
* ``accuracy`` = 100 · mean score over samples, with ``accuracy_low``/``accuracy_high`` its 95% interval
  (Wilson when every score is 0 or 1, percentile bootstrap over samples otherwise:
  :func:`infokv.eval.statistics.mean_interval`),
* ``n_for_5pt`` = samples per arm that a 5-point difference between two independent arms would need at
  this row's variance (:func:`infokv.eval.statistics.samples_needed`, unpaired),
* ``agreement`` = 100 · fraction of completions identical to the full cache's completion of the
  same sample and draw (fidelity to the uncompressed model; empty where no full-cache run exists), with
  ``agreement_low``/``agreement_high``,
* ``kl`` (where the runs recorded fidelity) = mean over samples of the teacher-forced KL(full ‖
  compressed) over the full cache's answer, with its bootstrap interval, and ``kl_vs_<r>`` its paired
  difference with each reference other than the full cache (nats, not ×100),
* for each reference method r of ``references`` (default: every method against ``full``, InfoKV against
  SnapKV), the paired comparison on the samples both scored at the same benchmark, budget and style
  (the full cache at any budget): ``vs_<r>`` = 100 · mean(score − score_r), ``vs_<r>_low``/``_high`` its
  paired bootstrap interval, ``vs_<r>_resolved`` (the interval excludes 0) and ``vs_<r>_n_for_5pt``
  (samples that a 5-point paired difference would need at the observed spread of the differences),
* for each reference other than the full cache, the same paired comparisons over every benchmark's
  samples together, in rows whose ``benchmark`` is ``all`` (:data:`POOLED`): a method compared with another
  at one budget on all the samples of a scenario, which is what a headline "A vs B at 20%" claims.

:func:`paper_layout` pivots it to methods × (benchmark, budget) with "CoT / direct" cells, the layout of
the paper's tables; :func:`write_tables` writes the long CSV and the wide Markdown and LaTeX tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from infokv.eval.statistics import describe, paired_difference, per_sample, samples_needed

GROUP = ["scenario", "model", "benchmark", "method", "budget", "style"]
FULL = "full"
DELTA = 0.05  # the "5 points" of n_for_5pt, on the 0-1 score scale
KL = "fidelity.kl_mean"  # the per-sample teacher-forced KL(full ‖ compressed) of infokv.engine.fidelity
# Paired comparisons: reference method -> the methods compared with it (None: every other method).
REFERENCES: dict[str, tuple[str, ...] | None] = {FULL: None, "snapkv": ("infokv",)}
POOLED = "all"
"""The ``benchmark`` of the rows that pool every benchmark's samples in a paired comparison."""


def pooled(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` as one benchmark, :data:`POOLED`, whose sample ids name their benchmark (so that ids of
    different benchmarks stay apart when samples are paired)."""
    ids = samples["benchmark"].astype(str) + ":" + samples["sample_id"].astype(str)
    return samples.assign(benchmark=POOLED, sample_id=ids)


def _with_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Add column ``agrees``: the completion equals the full-cache completion of the same draw."""
    keys = ["scenario", "model", "benchmark", "cot", "sample_id", "sample_index"]
    reference = frame[frame["method"] == FULL][keys + ["completion"]].drop_duplicates(keys)
    merged = frame.merge(reference, on=keys, how="left", suffixes=("", "_full"))
    merged["agrees"] = (merged["completion"] == merged["completion_full"]).where(
        merged["completion_full"].notna()
    )
    return merged.drop(columns="completion_full")


def paired(
    samples: pd.DataFrame,
    column: str,
    reference: str,
    methods: tuple[str, ...] | None,
    scale: float = 100.0,
    prefix: str = "",
) -> pd.DataFrame:
    """Per row of ``GROUP`` (``methods``, or every method but ``reference``): the paired difference of
    ``column`` with ``reference`` on the samples both scored (:func:`.statistics.paired_difference`).

    ``samples`` has one row per (``GROUP``, sample_id). The full cache does not depend on the budget,
    so a method at any budget is paired with it; any other reference is paired at the same budget.
    """
    keys = [k for k in GROUP if k != "method" and (k != "budget" or reference != FULL)] + ["sample_id"]
    chosen = samples["method"] != reference if methods is None else samples["method"].isin(methods)
    ours = samples[chosen & samples[column].notna()]
    theirs = samples[(samples["method"] == reference) & samples[column].notna()][keys + [column]]
    name = f"{prefix}vs_{reference}"
    names = [name, f"{name}_low", f"{name}_high", f"{name}_resolved", f"{name}_n_for_5pt"]
    rows = []
    for key, part in ours.merge(theirs, on=keys, suffixes=("", "_ref")).groupby(GROUP, sort=False):
        result = paired_difference(part[column], part[f"{column}_ref"], DELTA)
        values = [scale * result.difference, scale * result.low, scale * result.high, result.resolved]
        rows.append([*key, *values, result.n_for_delta])
    frame = pd.DataFrame(rows, columns=GROUP + names)
    return frame if scale == 100.0 else frame.drop(columns=names[-1])  # 5 points: of a 0-1 score


def accuracy(frame: pd.DataFrame, references: dict[str, tuple[str, ...] | None] = REFERENCES) -> pd.DataFrame:
    """Long-form table: one row per (scenario, model, benchmark, method, budget, style), with intervals
    and the paired comparisons with each reference method present in ``frame``."""
    frame = _with_agreement(frame)
    frame = frame.assign(
        style=frame["cot"].map({True: "cot", False: "direct"}),
        accuracy=frame["score"].astype(float),
        agreement=frame["agrees"].astype(float),
    )
    columns = ["accuracy", "agreement"]
    if KL in frame and frame[KL].notna().any():
        frame = frame.assign(kl=frame[KL].astype(float))
        columns.append("kl")
    table = describe(frame, GROUP, columns, proportions=("accuracy", "agreement"))
    for column in ("accuracy", "agreement"):
        table[[column, f"{column}_low", f"{column}_high"]] *= 100.0
    samples = per_sample(frame, GROUP, columns)
    spread = samples.groupby(GROUP)["accuracy"].std(ddof=1)
    needed = [samples_needed(sd, DELTA, paired=False) if pd.notna(sd) else float("nan") for sd in spread]
    needed = pd.Series(needed, index=spread.index, name="n_for_5pt").reset_index()
    table = table.merge(needed, on=GROUP)
    pooled_rows = []
    for reference, methods in references.items():
        if (samples["method"] == reference).any():
            table = table.merge(paired(samples, "accuracy", reference, methods), on=GROUP, how="left")
            if "kl" in columns and reference != FULL:  # against the full cache, KL is the row's own mean
                kl = paired(samples, "kl", reference, methods, scale=1.0, prefix="kl_")
                table = table.merge(kl, on=GROUP, how="left")
            if reference != FULL and samples["benchmark"].nunique() > 1:
                every = pooled(samples)
                together = paired(every, "accuracy", reference, methods)
                if "kl" in columns:
                    kl = paired(every, "kl", reference, methods, scale=1.0, prefix="kl_")
                    together = together.merge(kl, on=GROUP, how="outer")
                pooled_rows.append(together)
    if pooled_rows:
        table = pd.concat([table, *pooled_rows], ignore_index=True)
    whole = ["n"] + [column for column in table.columns if column.endswith("n_for_5pt")]
    flags = [column for column in table.columns if column.endswith("_resolved")]
    table = table.astype(dict.fromkeys(whole, "Int64") | dict.fromkeys(flags, "boolean"))
    return table.sort_values(GROUP, ignore_index=True)


def budget_name(budget: float) -> str:
    """0.4 -> "40%"; a token budget (> 1) -> "512 tok"."""
    return f"{100 * budget:g}%" if budget <= 1 else f"{budget:g} tok"


def _value(row: pd.Series, column: str) -> str:
    """``column`` of one table row as "75.0 [46, 91]" (with its interval where the table has one), and
    "*" after the value where ``<column>_resolved`` holds; "–" where it is missing."""
    if pd.isna(row[column]):
        return "–"
    places = 3 if column.startswith("kl") else 1
    text = f"{row[column]:.{places}f}"
    resolved = row.get(f"{column}_resolved")
    if pd.notna(resolved) and bool(resolved):
        text += "*"
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    places = 2 if column.startswith("kl") else 0
    return text if low is None or pd.isna(low) else f"{text} [{low:.{places}f}, {high:.{places}f}]"


def _cell(values: pd.DataFrame, column: str) -> str:
    by_style = {row["style"]: _value(row, column) for _, row in values.iterrows()}
    return " / ".join(by_style[style] for style in ("cot", "direct") if style in by_style)


def paper_layout(table: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    """Methods (rows, full cache first) × (benchmark, budget) columns; cells "CoT / direct" ``column``.

    The full cache does not depend on the budget: its row repeats its figure under every budget.
    """
    budgets = sorted({float(b) for b in table["budget"] if float(b) != 1.0}, reverse=True) or [1.0]
    rows: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    keys = ["model", "method", "benchmark", "budget"]
    for (model, method, benchmark, budget), values in table.groupby(keys):
        for shown in budgets if method == FULL else [float(budget)]:
            rows.setdefault((model, method), {})[(benchmark, budget_name(shown))] = _cell(values, column)
    wide = pd.DataFrame.from_dict(rows, orient="index")
    by_budget = {budget_name(budget): rank for rank, budget in enumerate(budgets)}
    pooled_last = sorted(wide.columns, key=lambda key: (key[0] == POOLED, key[0], by_budget.get(key[1], -1)))
    wide = wide[pooled_last]
    order = sorted(wide.index, key=lambda key: (key[0], key[1] != FULL, key[1]))
    wide = wide.loc[order]
    wide.index = pd.MultiIndex.from_tuples(wide.index, names=["model", "method"])
    wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["benchmark", "budget"])
    return wide.fillna("–")


def titles(table: pd.DataFrame) -> dict[str, str]:
    """The wide tables of ``table``: column -> title (accuracy, agreement, then one per paired comparison)."""
    shown = {
        "accuracy": "Accuracy (%) [95% interval: Wilson for 0/1 scores, bootstrap over samples otherwise]",
        "agreement": "Agreement with the full cache (% of completions identical to its completion) "
        "[95% interval]",
    }
    if "kl" in table.columns:
        shown["kl"] = (
            "Mean KL(full ‖ compressed) over the full cache's answer, teacher-forced (nats) [95% interval]"
        )
    for column in table.columns:
        if f"{column}_resolved" in table.columns:
            reference = column.removeprefix("kl_").removeprefix("vs_")
            unit = "nats of KL" if column.startswith("kl_") else "points"
            shown[column] = (
                f"Paired difference with {reference} ({unit}: method − {reference} on the same samples) "
                "[95% paired bootstrap interval; * = the interval excludes 0]"
            )
    return shown


def counts(table: pd.DataFrame) -> str:
    """One line: samples per cell, per benchmark ("passkey 12" or, where cells differ, "passkey 10–12")."""
    spans = table[table["benchmark"] != POOLED].groupby("benchmark")["n"].agg(["min", "max"])
    return "n (samples per cell): " + ", ".join(
        f"{benchmark} {low}" if low == high else f"{benchmark} {low}–{high}"
        for benchmark, (low, high) in spans.iterrows()
    )


def _markdown(wide: pd.DataFrame, title: str, styles: list[str]) -> str:
    header = ["model", "method"] + [f"{bench} {budget}" for bench, budget in wide.columns]
    lines = [
        f"{title}, {' / '.join('CoT' if s == 'cot' else 'direct' for s in styles)}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (model, method), row in wide.iterrows():
        lines.append("| " + " | ".join([model, method, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def write_tables(table: pd.DataFrame, directory: str | Path, name: str) -> list[Path]:
    """Write ``<name>.csv`` (long form) and, per scenario, ``<name>_<scenario>.md`` and ``.tex``: accuracy,
    agreement and each paired comparison (:func:`titles`) in the paper's layout, with n per benchmark."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{name}.csv"]
    table.to_csv(written[0], index=False, float_format="%.4f")
    for scenario, part in table.groupby("scenario"):
        styles = [s for s in ("cot", "direct") if s in set(part["style"])]
        wide = {
            column: (title, paper_layout(part[part[column].notna()], column))
            for column, title in titles(part).items()
            if part[column].notna().any()
        }
        markdown = [_markdown(layout, title, styles) for title, layout in wide.values()]
        markdown.insert(1, counts(part) + "\n")
        latex = [
            f"% {title}\n{layout.to_latex(multicolumn_format='c', escape=True)}"
            for title, layout in wide.values()
        ]
        latex.insert(1, f"% {counts(part)}\n")
        stem = directory / f"{name}_{scenario}"
        stem.with_suffix(".md").write_text("\n".join(markdown), encoding="utf-8")
        stem.with_suffix(".tex").write_text("\n".join(latex), encoding="utf-8")
        written += [stem.with_suffix(".md"), stem.with_suffix(".tex")]
    return written
