"""The Hydra entry point ``infokv-run`` (configs in ``infokv/conf/``, see ``infokv/conf/config.yaml``).

    infokv-run                                    # the default job: embedded model, passkey, snapkv
    infokv-run --cfg job                          # print the resolved configuration
    infokv-run -m method=snapkv,infokv budget=0.2,0.4 benchmark=passkey
    infokv-run -m launcher=slurm experiment=paper_prefill

Each job runs (or resumes) one run directory and prints its summary table; a multirun also prints
the summary of every job of the sweep when it ends (:class:`SweepSummary`). Bad input ends the run
with one line on stderr and exit status 1 (:func:`main`); ``verbose=true`` or ``HYDRA_FULL_ERROR=1``
shows the traceback instead. In a multirun the first such job stops the sweep, as any failed job does
under Hydra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from infokv.eval.configs import register_configs
from infokv.eval.host_memory import keep_freed_memory
from infokv.eval.runner import run_job, summarise
from infokv.eval.store import unique_records
from infokv.eval.tracking import Tracker

RUN_POINTER = "run_directory.txt"  # written into each job's Hydra output folder
# The package's conf/ as an absolute path: Hydra resolves a relative one against the module's package
# when the console script imports it, and would not find the folder beside the package.
CONF = Path(__file__).resolve().parent.parent / "conf"
register_configs()  # the method group, before Hydra composes the first job


def print_table(title: str, table: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
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


# What a user's input can cause: a bad value or data file (ValueError, including DataError), a file or
# disk problem (OSError: a corrupt weights file, a read-only or full disk), a config key that is missing
# or cannot be resolved (OmegaConf's errors). Anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, OmegaConfBaseException)


def one_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (OmegaConf adds ``full_key``/``object_type`` lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def verbose(cfg: DictConfig) -> bool:
    """Whether the user asked for tracebacks: ``verbose=true`` or Hydra's ``HYDRA_FULL_ERROR=1``."""
    return (
        OmegaConf.select(cfg, "verbose", default=False) is True or os.environ.get("HYDRA_FULL_ERROR") == "1"
    )


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run one job; bad input ends it with one line on stderr and exit status 1, no traceback."""
    try:
        run(cfg)
    except INPUT_ERRORS as error:
        if verbose(cfg):
            raise
        raise SystemExit(f"infokv-run: error: {one_line(error)}") from None


def run(cfg: DictConfig) -> None:
    """:func:`infokv.eval.runner.run_job`, then the run pointer for the sweep summary, W&B and the table."""
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
