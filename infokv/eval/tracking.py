"""Weights & Biases logging that is never required: offline by default, ``false`` turns it off.

``mode`` is ``"offline"`` (the default: files under the run directory, ``wandb sync`` uploads them
later), ``"online"`` (only when the user asks) or ``"disabled"``/``False``. Any W&B failure — the
package missing, no credentials, a network error — is logged and the experiment goes on without it.

Offline means no network at all. ``mode="offline"`` given to ``wandb.init`` alone covers only that
run: wandb's process-wide settings stay online, and its telemetry (an OpenTelemetry exporter thread
in the Python process, Sentry in the ``wandb-core`` service) still resolves and contacts W&B hosts.
So offline mode first sets, for this process and every process it starts, ``WANDB_MODE=offline``
(the process-wide settings) and ``WANDB_ERROR_REPORTING=false`` (no telemetry: the Python recorder
stays off and ``wandb-core`` starts with ``--no-observability``), turns the telemetry exporter off
and puts a wandb setup created earlier in the process offline. Nothing is restored afterwards: a
later online run in the same process still streams (``wandb.init``'s mode overrides the process
settings), without telemetry.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
OFFLINE_ENVIRONMENT = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"}


def check_mode(mode: object) -> str:
    """``False``/``None`` (or ``"false"``, as a text field of the job's config holds it) → ``"disabled"``;
    anything but :data:`MODES` is a one-line error."""
    if mode is False or mode is None or mode in ("false", "False"):
        return "disabled"
    if mode not in MODES:
        raise ValueError(f"wandb mode {mode!r} is not allowed; use one of {MODES} or false")
    return str(mode)


def go_offline() -> None:
    """Put W&B offline for this whole process and its children (see the module docstring)."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    import wandb

    with contextlib.suppress(ImportError):  # its OpenTelemetry exporter (absent from older wandb)
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()
    wandb.setup(settings=wandb.Settings(mode="offline"))


class Tracker:
    """One W&B run, or a no-op when disabled or unavailable."""

    def __init__(
        self,
        mode: object,
        project: str,
        config: Mapping[str, Any],
        directory: Path,
        name: str | None = None,
        job_type: str = "evaluation",
    ) -> None:
        self.run = None
        mode = check_mode(mode)
        if mode == "disabled":
            return
        try:
            if mode == "offline":
                go_offline()
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=project,
                mode=mode,
                dir=str(directory),
                name=name,
                job_type=job_type,
                config=dict(config),
                reinit="finish_previous",
            )
        except Exception as error:  # noqa: BLE001 - logging must never stop the experiment
            log.warning("W&B disabled: %s", error)

    @property
    def active(self) -> bool:
        return self.run is not None

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]] | Any) -> None:
        """Log a table from a list of flat dicts or a pandas DataFrame. Missing values (NaN, pandas' NA of
        nullable columns) become None, and a column may hold None above numbers: W&B would otherwise type
        a column from its first rows and refuse the rest."""
        if self.run is None:
            return
        import pandas as pd
        import wandb

        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        frame = frame.astype(object).where(frame.notna(), None)
        self.run.log({name: wandb.Table(dataframe=frame, allow_mixed_types=True)})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(metrics))

    def log_figure(self, name: str, path: Path) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
