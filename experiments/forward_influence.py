"""Forward Influence experiment: python experiments/forward_influence.py [key=value ...].

Writes to ``output_dir`` (default ``results/forward_influence``):

* ``per_document.csv`` — mean KL per (document, criterion, 128-token chunk);
* ``influence.csv`` — mean KL per (criterion, distance) over documents, bootstrap CI;
* ``forward_influence.png`` — the figure (Forward Influence vs distance, one line per criterion);
* ``entropy_by_class.csv``, ``selection_by_class.csv`` — content vs function words;
* ``cost.csv`` — time and forwarded token-rows per document;
* ``config.yaml`` — the resolved configuration.

Logs the same to Weights & Biases (offline by default; ``wandb=false`` disables; never required).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from infokv import load_model
from infokv.analysis import summary
from infokv.analysis.forward_influence import Criterion, InfluenceConfig, analyse_document
from infokv.analysis.word_classes import class_ids, token_classes
from infokv.eval.benchmarks.documents import load_documents
from infokv.eval.tracking import Tracker

log = logging.getLogger("forward_influence")


def influence_config(cfg: DictConfig, document_index: int) -> InfluenceConfig:
    """The analysis settings of one document (the random criterion's seed varies per document)."""
    settings = OmegaConf.to_container(cfg.analysis, resolve=True)
    settings["seed"] = int(settings["seed"]) + document_index
    criteria = tuple(
        Criterion(name, spec.get("kind", "method"), spec.get("method"), dict(spec.get("params") or {}))
        for name, spec in OmegaConf.to_container(cfg.criteria, resolve=True).items()
    )
    return InfluenceConfig(**settings, criteria=criteria)


@hydra.main(config_path="../infokv/conf", config_name="forward_influence", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    output = Path(to_absolute_path(cfg.output_dir))
    output.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(
        cfg.wandb_mode if cfg.wandb else False,
        cfg.wandb_project,
        OmegaConf.to_container(cfg, resolve=True),
        Path(HydraConfig.get().runtime.output_dir),
        job_type="forward_influence",
    )
    model, tokenizer = load_model(cfg.model, dtype=getattr(torch, cfg.dtype), device=cfg.device)
    documents = load_documents(tokenizer, **OmegaConf.to_container(cfg.documents, resolve=True))
    influence_rows, token_tables, costs = [], [], []
    for index, document in enumerate(documents):
        config = influence_config(cfg, index)
        clock = time.perf_counter()
        result = analyse_document(model, document.ids, config)
        log.info("%s: %.1f s (%s)", document.name, time.perf_counter() - clock, result.cost)
        influence_rows += summary.influence_rows(document.name, result, config.prefix, config.chunk)
        classes = class_ids(token_classes(document.text, document.offsets))
        token_tables.append(summary.token_rows(document.name, result, classes, config.sink, config.window))
        costs.append({"document": document.name, **result.cost})
    per_document = pd.DataFrame(influence_rows)
    tokens = pd.concat(token_tables, ignore_index=True)
    tables = {
        "per_document": per_document,
        "influence": summary.summarise(per_document, **OmegaConf.to_container(cfg.bootstrap)),
        "entropy_by_class": summary.entropy_by_class(tokens),
        "selection_by_class": summary.selection_by_class(tokens, list(cfg.criteria)),
        "cost": pd.DataFrame(costs),
    }
    for name, table in tables.items():
        table.to_csv(output / f"{name}.csv", index=False, float_format="%.6g")
    (output / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    figure = output / "forward_influence.png"
    title = f"{cfg.model}, {len(documents)} {cfg.documents.source} documents, P={cfg.analysis.prefix}"
    summary.plot_influence(tables["influence"], figure, title)
    log.info("wrote %s", output)
    for name, table in tables.items():
        tracker.log_table(name, table)
    tracker.log_figure("forward_influence", figure)
    tracker.finish()


if __name__ == "__main__":
    main()
