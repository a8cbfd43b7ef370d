"""Figures drawn from result tables (the long form written by :mod:`infokv.eval.tables`)."""

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
    evicting = sorted(set(table["method"]) - {FULL})
    colours = {method: plt.get_cmap("tab10")(index % 10) for index, method in enumerate(evicting)}
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
                axis.plot(
                    line["budget"] * 100, line["accuracy"], marker="o", color=colours[method], label=method
                )
        axis.set_title(f"{benchmark} ({style}, {scenario})", fontsize=10)
        axis.set_xlabel("KV budget (%)")
        axis.set_ylabel("accuracy (%)")
        axis.set_ylim(-3, 103)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    legend = {}
    for axis in axes.flat:
        legend.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    labels = sorted(legend, key=lambda label: (label != "full cache", label))
    handles = [legend[label] for label in labels]
    figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.16 if len(labels) > 6 else 0.1, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path
