"""Figures drawn from result tables (the long form written by :mod:`infokv.tables`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import pandas as pd  # noqa: E402

FULL = "full"


def accuracy_vs_budget(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Accuracy against KV budget: one panel per (scenario, benchmark, style), one line per method;
    the full cache is a dashed horizontal line. ``table`` has columns scenario, benchmark, style,
    method, budget, accuracy (several models are averaged)."""
    table = table.assign(budget=table["budget"].astype(float))
    panels = list(table.groupby(["scenario", "benchmark", "style"]))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for axis, ((scenario, benchmark, style), part) in zip(axes.flat, panels, strict=False):
        means = part.groupby(["method", "budget"], as_index=False)["accuracy"].mean()
        for method, line in means.groupby("method"):
            if method == FULL:
                axis.axhline(line["accuracy"].mean(), color="black", linestyle="--", label="full cache")
            else:
                line = line.sort_values("budget")
                axis.plot(line["budget"] * 100, line["accuracy"], marker="o", label=method)
        axis.set_title(f"{benchmark} ({style}, {scenario})", fontsize=10)
        axis.set_xlabel("KV budget (%)")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path
