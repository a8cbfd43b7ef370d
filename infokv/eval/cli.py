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

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from infokv.engine.fidelity import SCALAR_KEYS
from infokv.eval.configs import register_configs
from infokv.eval.cost import job_cost
from infokv.eval.runner import model_label, run_job, summarise
from infokv.eval.store import unique_records
from infokv.eval.tracking import Tracker

RUN_POINTER = "run_directory.txt"  # written into each job's Hydra output folder
COST_FILE = "cost.json"  # a dry run's workload and estimate, in each job's Hydra output folder
# The package's conf/ as an absolute path: Hydra resolves a relative one against the module's package
# when the console script imports it, and would not find the folder beside the package.
CONF = Path(__file__).resolve().parent.parent / "conf"
register_configs()  # the schemas and the method group, before Hydra composes the first job


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
            | {f"fidelity.{key}": (r.get("fidelity") or {}).get(key) for key in SCALAR_KEYS}
            for r in records
        ],
    )
    tracker.log_table("summary", table)
    if not table.empty:
        means = ["score"] + [f"fidelity.{key}" for key in SCALAR_KEYS if f"fidelity.{key}" in table]
        tracker.log_metrics(
            {
                f"{row['method']}@{row['budget']}/{key}": row[key]
                for _, row in table.iterrows()
                for key in means
            }
        )
    tracker.finish()


# What a user's input can cause: a bad value or data file (ValueError, including DataError), a file or
# disk problem (OSError: a corrupt weights file, a read-only or full disk), a config key that is missing,
# of the wrong type or cannot be resolved (OmegaConf's errors), a config Hydra cannot compose. Anything
# else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, OmegaConfBaseException, HydraException)
# OmegaConf's words for the type a value could not be converted to, and what to tell the user instead
KINDS = {"bool": "true or false", "Integer": "an integer", "Float": "a number", "str": "text"}
ERROR_LINE = "infokv-run: error: {}"
VERBOSE = re.compile(r"\+?verbose=(true|yes|on|1)", re.IGNORECASE)
TRACEBACK = False  # the user asked for tracebacks (main() decides, before it lets Hydra re-raise)


def error_line(error: BaseException) -> str:
    """One line for a user's error: a value of the wrong type names its key, the value and the kind
    wanted, as :func:`infokv.engine.config_values.reject` does; other errors give their first line, and
    the options Hydra lists for a config it could not find."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ValidationError) and cause.full_key and cause.value is not None:
            wanted = next((kind for word, kind in KINDS.items() if f" {word}" in str(cause)), None)
            if wanted:
                return f"{cause.full_key} {cause.value!r} is not allowed; use {wanted}"
        if isinstance(cause, MissingMandatoryValue) and cause.full_key:
            return f"{cause.full_key} has no value; give one, e.g. {cause.full_key}=<value>"
        if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
            return f"{cause.full_key} is not a configuration key (`infokv-run --cfg job` lists them)"
        cause = cause.__cause__ or cause.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if isinstance(error, MissingConfigException) and error.options:
        return f"{lines[0]}; available: {', '.join(error.options)}"
    return lines[0]


def asked_for_traceback(arguments: list[str]) -> bool:
    """Whether the user asked for tracebacks: ``verbose=true`` or Hydra's ``HYDRA_FULL_ERROR=1``."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or any(VERBOSE.fullmatch(arg) for arg in arguments)


def main() -> None:
    """The console script ``infokv-run``: Hydra composes the configuration and runs the job
    (:func:`hydra_main`); bad input, in the configuration or found by the job, ends it with one line on
    stderr and exit status 1, unless the user asked for the traceback."""
    global TRACEBACK
    TRACEBACK = asked_for_traceback(sys.argv[1:])
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises what it would print; this function reports it
    try:
        hydra_main()
    except INPUT_ERRORS as error:
        if TRACEBACK:
            raise
        raise SystemExit(ERROR_LINE.format(error_line(error))) from None
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    """Run one job of the composed configuration; bad input ends it here, in one line, so that Hydra
    does not log the failed job (a multirun stops at it)."""
    try:
        run(cfg)
    except INPUT_ERRORS as error:
        if cfg.verbose or TRACEBACK:
            raise
        raise SystemExit(ERROR_LINE.format(error_line(error))) from None


def job_output(name: str) -> Path | None:
    """``name`` in this job's Hydra output folder (``None`` when called without Hydra, as tests do)."""
    try:
        return Path(HydraConfig.get().runtime.output_dir) / name
    except ValueError:
        return None


def run(cfg: DictConfig) -> None:
    """:func:`infokv.eval.runner.run_job`, then the run pointer for the sweep summary, W&B and the table;
    with ``dry_run=true``, the job's workload and estimated GPU time instead (:mod:`infokv.eval.cost`)."""
    if cfg.dry_run:
        row = {"job": job_name(cfg), **job_cost(cfg).summary()}
        if (path := job_output(COST_FILE)) is not None:
            path.write_text(json.dumps(row) + "\n")
        print_table("dry run: nothing is loaded or computed", pd.DataFrame([row]))
        return
    directory, table = run_job(cfg)
    if (path := job_output(RUN_POINTER)) is not None:
        path.write_text(str(directory.resolve()) + "\n")
    track(cfg, directory, table)
    print_table(f"run {directory}", table)


def job_name(cfg: DictConfig) -> str:
    """A dry run's name for a job: model, benchmark, scenario and style."""
    style = "cot" if cfg.cot else "direct"
    return f"{model_label(cfg.model)}/{cfg.benchmark.name}/{cfg.scenario.name}/{style}"


class SweepSummary(Callback):
    """At the end of a multirun, the summary table over every job of the sweep (of a dry run: every
    job's workload and the sweep's estimated GPU-hours, all methods per job and one method per job)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        costs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{COST_FILE}"))]
        if costs:
            frame = pd.DataFrame(costs)
            total = frame.drop(columns=["job", "notes"]).sum(numeric_only=True, min_count=1)
            print_table(f"dry run of {len(costs)} job(s), total", total.to_frame().T)
            return
        directories = sorted({Path(p.read_text().strip()) for p in sweep.glob(f"*/{RUN_POINTER}")})
        records = [record for directory in directories for record in unique_records(directory)]
        print_table(f"sweep {sweep}: {len(directories)} run(s)", summarise(records))


if __name__ == "__main__":
    main()
