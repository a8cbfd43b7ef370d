"""The Hydra entry point ``infokv-run`` (configs in ``conf/``, see ``conf/config.yaml``).

    infokv-run                                    # the default job: embedded model, passkey, snapkv
    infokv-run --cfg job                          # print the resolved configuration
    infokv-run -m method=snapkv,infokv budget=0.2,0.4 benchmark=passkey
    infokv-run -m launcher=slurm experiment=paper_prefill

Each job runs (or resumes) one run directory and prints its summary table; a multirun also prints
the summary of every job of the sweep when it ends (:class:`SweepSummary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from infokv.experiment import run_job, summarise
from infokv.host_memory import keep_freed_memory
from infokv.results import unique_records
from infokv.tracking import Tracker

RUN_POINTER = "run_directory.txt"  # written into each job's Hydra output folder
# The checkout's conf/ as an absolute path: Hydra resolves a relative one against the module's package
# when the console script imports it, and would not find the folder beside the package.
CONF = Path(__file__).resolve().parent.parent / "conf"


def print_table(title: str, table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(f"\n{title}\n{table.to_string(index=False) if not table.empty else '(no scored samples)'}")


def track(cfg: DictConfig, directory: Path, table: pd.DataFrame) -> None:
    """Log the run to W&B (offline by default; ``wandb=false`` skips it)."""
    tracker = Tracker(
        cfg.wandb,
        cfg.wandb_project,
        OmegaConf.to_container(cfg, resolve=True),
        directory,
        name=directory.name,
    )
    if not tracker.active:
        return
    records = unique_records(directory)
    tracker.log_table(
        "samples",
        [
            {k: r[k] for k in ("sample_id", "sample_index", "setting", "score", "extracted", "completion")}
            for r in records
        ],
    )
    tracker.log_table("summary", table)
    if not table.empty:
        tracker.log_metrics({f"{row.method}@{row.budget}/score": row.score for row in table.itertuples()})
    tracker.finish()


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    directory, table = run_job(cfg)
    try:
        (Path(HydraConfig.get().runtime.output_dir) / RUN_POINTER).write_text(str(directory.resolve()) + "\n")
    except ValueError:  # called without Hydra (tests calling the function directly)
        pass
    track(cfg, directory, table)
    print_table(f"run {directory}", table)


class SweepSummary(Callback):
    """At the end of a multirun, the summary table over every job of the sweep."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        directories = sorted({Path(p.read_text().strip()) for p in sweep.glob(f"*/{RUN_POINTER}")})
        records = [record for directory in directories for record in unique_records(directory)]
        print_table(f"sweep {sweep}: {len(directories)} run(s)", summarise(records))


if __name__ == "__main__":
    main()
