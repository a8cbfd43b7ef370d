"""Result tables in the paper's layout, from the scored samples of many runs.

:func:`accuracy` reduces the per-sample frame (:func:`infokv.eval.store.load_frame`) to one row per
(scenario, model, benchmark, method, budget, style) with

* ``accuracy`` = 100 · mean score over samples (and draws),
* ``agreement`` = 100 · fraction of completions identical to the full cache's completion of the
  same sample and draw (fidelity to the uncompressed model; empty where no full-cache run exists),
* ``n`` = scored completions.

:func:`paper_layout` pivots it to methods × (benchmark, budget) with "CoT / direct" cells, the layout of
the paper's tables; :func:`write_tables` writes the long CSV and the wide Markdown and LaTeX tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

GROUP = ["scenario", "model", "benchmark", "method", "budget", "style"]
FULL = "full"


def _with_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Add column ``agrees``: the completion equals the full-cache completion of the same draw."""
    keys = ["scenario", "model", "benchmark", "cot", "sample_id", "sample_index"]
    reference = frame[frame["method"] == FULL][keys + ["completion"]].drop_duplicates(keys)
    merged = frame.merge(reference, on=keys, how="left", suffixes=("", "_full"))
    merged["agrees"] = (merged["completion"] == merged["completion_full"]).where(
        merged["completion_full"].notna()
    )
    return merged.drop(columns="completion_full")


def accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Long-form table: one row per (scenario, model, benchmark, method, budget, style)."""
    frame = _with_agreement(frame)
    frame["style"] = frame["cot"].map({True: "cot", False: "direct"})
    grouped = frame.groupby(GROUP, sort=True)
    table = pd.DataFrame(
        {
            "accuracy": 100.0 * grouped["score"].mean(),
            "agreement": 100.0 * grouped["agrees"].mean(),
            "n": grouped.size(),
        }
    ).reset_index()
    return table


def budget_name(budget: float) -> str:
    """0.4 -> "40%"; a token budget (> 1) -> "512 tok"."""
    return f"{100 * budget:g}%" if budget <= 1 else f"{budget:g} tok"


def _cell(values: pd.DataFrame, column: str) -> str:
    by_style = dict(zip(values["style"], values[column], strict=True))
    return " / ".join(
        "–" if pd.isna(by_style[style]) else f"{by_style[style]:.2f}"
        for style in ("cot", "direct")
        if style in by_style
    )


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
    wide = wide[sorted(wide.columns, key=lambda key: (key[0], by_budget.get(key[1], -1)))]
    order = sorted(wide.index, key=lambda key: (key[0], key[1] != FULL, key[1]))
    wide = wide.loc[order]
    wide.index = pd.MultiIndex.from_tuples(wide.index, names=["model", "method"])
    wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["benchmark", "budget"])
    return wide.fillna("–")


TITLES = {
    "accuracy": "Accuracy (%)",
    "agreement": "Agreement with the full cache (% of completions identical to its completion)",
}


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
    """Write ``<name>.csv`` (long form) and, per scenario, ``<name>_<scenario>.md`` (accuracy and
    agreement in the paper's layout) and ``<name>_<scenario>.tex`` (accuracy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{name}.csv"]
    table.to_csv(written[0], index=False, float_format="%.4f")
    for scenario, part in table.groupby("scenario"):
        styles = [s for s in ("cot", "direct") if s in set(part["style"])]
        stem = directory / f"{name}_{scenario}"
        markdown = "\n".join(
            _markdown(paper_layout(part, column), title, styles) for column, title in TITLES.items()
        )
        stem.with_suffix(".md").write_text(markdown, encoding="utf-8")
        latex = paper_layout(part).to_latex(multicolumn_format="c")
        stem.with_suffix(".tex").write_text(latex, encoding="utf-8")
        written += [stem.with_suffix(".md"), stem.with_suffix(".tex")]
    return written
