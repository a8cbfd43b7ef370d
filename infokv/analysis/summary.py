"""Tables and the figure of the Forward Influence analysis, from per-document results.

Confidence intervals are percentile bootstrap intervals over documents (the independent unit):
resample the documents with replacement, take the mean of their chunk means, repeat
(:func:`infokv.eval.statistics.bootstrap_mean`; one document gives no interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from infokv.analysis.forward_influence import DocumentResult, candidate_mask
from infokv.analysis.word_classes import CLASSES
from infokv.eval.statistics import bootstrap_mean


def influence_rows(document: str, result: DocumentResult, prefix: int, chunk: int) -> list[dict]:
    """One row per (criterion, chunk): the document's mean KL over that chunk."""
    rows = []
    for criterion, means in result.influence.items():
        for start, value in zip(result.chunk_starts, means, strict=True):
            rows.append(
                {
                    "document": document,
                    "criterion": criterion,
                    "chunk_start": start,
                    "chunk_end": min(start + chunk, int(result.cost["tokens"])),
                    "distance": start - prefix,
                    "kl": value,
                }
            )
    return rows


def summarise(per_document: pd.DataFrame, confidence: float = 0.95, resamples: int = 2000, seed: int = 0):
    """Mean KL per (criterion, distance) over documents, with its bootstrap confidence interval."""
    rows = []
    for (criterion, distance), group in per_document.groupby(["criterion", "distance"], sort=True):
        low, high = bootstrap_mean(group["kl"].to_numpy(), confidence, resamples, seed)
        rows.append(
            {
                "criterion": criterion,
                "distance": int(distance),
                "mean_kl": float(group["kl"].mean()),
                "std_kl": float(group["kl"].std(ddof=1)) if len(group) > 1 else 0.0,
                "ci_low": low,
                "ci_high": high,
                "documents": len(group),
            }
        )
    return pd.DataFrame(rows)


def token_rows(
    document: str, result: DocumentResult, classes: torch.Tensor, sink: int, window: int
) -> pd.DataFrame:
    """Per candidate prefix token: its word class, entropy H_i and whether each criterion evicts it."""
    prefix = result.entropy.shape[0]
    candidates = candidate_mask(prefix, sink, window)
    table = {
        "document": document,
        "position": torch.arange(prefix)[candidates].numpy(),
        "word_class": [CLASSES[int(index)] for index in classes[:prefix][candidates]],
        "entropy": result.entropy[candidates].numpy(),
    }
    for criterion, positions in result.selected.items():
        chosen = torch.zeros(prefix, dtype=torch.bool)
        chosen[positions.cpu()] = True
        table[f"selected_{criterion}"] = chosen[candidates].numpy()
    return pd.DataFrame(table)


def entropy_by_class(tokens: pd.DataFrame) -> pd.DataFrame:
    """Distribution of H_i per word class: count, mean, std and quantiles."""
    quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
    grouped = tokens.groupby("word_class")["entropy"]
    table = grouped.agg(["count", "mean", "std"])
    for q in quantiles:
        table[f"q{int(q * 100)}"] = grouped.quantile(q)
    return table.reset_index()


def selection_by_class(tokens: pd.DataFrame, criteria: Sequence[str]) -> pd.DataFrame:
    """Per criterion and word class: tokens, tokens evicted, rate = evicted / tokens, share of evicted."""
    rows = []
    for criterion in criteria:
        column = f"selected_{criterion}"
        selected_total = int(tokens[column].sum())
        for word_class, group in tokens.groupby("word_class"):
            selected = int(group[column].sum())
            rows.append(
                {
                    "criterion": criterion,
                    "word_class": word_class,
                    "tokens": len(group),
                    "token_share": len(group) / len(tokens),
                    "selected": selected,
                    "selection_rate": selected / len(group),
                    "share_of_selected": selected / max(1, selected_total),
                }
            )
    return pd.DataFrame(rows)


def plot_influence(summary: pd.DataFrame, path: Path, title: str = "") -> None:
    """Forward Influence (mean KL, log scale) against distance, one line and CI band per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for criterion, group in summary.groupby("criterion", sort=False):
        group = group.sort_values("distance")
        axis.plot(group["distance"], group["mean_kl"], marker="o", markersize=3, label=criterion)
        axis.fill_between(group["distance"], group["ci_low"], group["ci_high"], alpha=0.2)
    axis.set_yscale("log")
    axis.set_xlabel("distance of the KL chunk from the evicted region (tokens)")
    axis.set_ylabel("mean KL(p_full ‖ p_evicted)")
    axis.set_title(title or "Forward Influence")
    axis.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
