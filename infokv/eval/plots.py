"""Figures drawn from result tables (the long form written by :mod:`infokv.eval.tables`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import pandas as pd  # noqa: E402

FULL = "full"


def _points(part: pd.DataFrame) -> pd.DataFrame:
    """One point per (method, budget): mean accuracy over models, and its 95% interval where the point
    is one table row (means over several models have no interval in the table; their bar is left out)."""
    part = part.assign(
        low=part.get("accuracy_low", float("nan")), high=part.get("accuracy_high", float("nan"))
    )
    points = part.groupby(["method", "budget"], as_index=False).agg(
        accuracy=("accuracy", "mean"), low=("low", "first"), high=("high", "first"), rows=("accuracy", "size")
    )
    alone = points["rows"] == 1
    points["below"] = (points["accuracy"] - points["low"]).where(alone).fillna(0.0)
    points["above"] = (points["high"] - points["accuracy"]).where(alone).fillna(0.0)
    return points


def accuracy_vs_budget(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Accuracy against KV budget: one panel per (scenario, benchmark, style), one line per method with
    error bars from ``accuracy_low``/``accuracy_high`` where the table has them; the full cache is a
    dashed horizontal line in a band of its interval. ``table`` has columns scenario, benchmark, style,
    method, budget, accuracy (several models are averaged, and then drawn without bars)."""
    table = table.assign(budget=table["budget"].astype(float))
    panels = list(table.groupby(["scenario", "benchmark", "style"]))
    evicting = sorted(set(table["method"]) - {FULL})
    colours = {method: plt.get_cmap("tab10")(index % 10) for index, method in enumerate(evicting)}
    # Each method's points shift a little sideways (in budget points), so that error bars stay apart.
    dodge = {method: 0.4 * (index - (len(evicting) - 1) / 2) for index, method in enumerate(evicting)}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for axis, ((scenario, benchmark, style), part) in zip(axes.flat, panels, strict=False):
        for method, line in _points(part).groupby("method"):
            if method == FULL:
                level = line["accuracy"].mean()
                axis.axhline(level, color="black", linestyle="--", label="full cache")
                axis.axhspan(
                    level - line["below"].max(), level + line["above"].max(), color="black", alpha=0.08
                )
            else:
                line = line.sort_values("budget")
                axis.errorbar(
                    line["budget"] * 100 + dodge[method],
                    line["accuracy"],
                    yerr=[line["below"], line["above"]],
                    marker="o",
                    capsize=3,
                    color=colours[method],
                    label=method,
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
