"""Analyses that are not run at compression time: Forward Influence and word classes."""

from infokv.analysis.forward_influence import (
    DEFAULT_CRITERIA,
    Criterion,
    DocumentResult,
    InfluenceConfig,
    analyse_document,
    influence,
    kl_divergence,
)

__all__ = [
    "DEFAULT_CRITERIA",
    "Criterion",
    "DocumentResult",
    "InfluenceConfig",
    "analyse_document",
    "influence",
    "kl_divergence",
]
