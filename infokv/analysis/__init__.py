"""Analyses that are not run at compression time: Forward Influence and word classes.

The top layer beside the command line: it uses the engine, hf, methods and the benchmarks' documents;
nothing else in infokv imports it.
"""

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
