"""The results store: append-only JSON-lines records that survive a kill, in one directory per run.

Each record is one line, written with a single ``write`` and flushed to disk before the call
returns, so a completed record is never lost. A kill in the middle of a write can leave at most
one partial last line; readers skip it and the next append cuts it off before writing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def _drop_partial_tail(path: Path) -> None:
    """Truncate an unfinished last line left by a killed writer."""
    with path.open("rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        data = path.read_bytes()
        handle.truncate(data.rfind(b"\n") + 1)


def append_records(path: str | Path, records: Iterable[dict]) -> None:
    """Append ``records`` to ``path``, one JSON object per line, durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _drop_partial_tail(path)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_records(path: str | Path) -> list[dict]:
    """Every complete record of ``path`` (none if it does not exist); a partial last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON record ({error.msg})") from None
    return records


# --------------------------------------------------------------------------------------------------
# Run directories: one per job configuration, resumable, shardable
# --------------------------------------------------------------------------------------------------

CONFIG_NAME = "config.yaml"
ENVIRONMENT_NAME = "environment.json"
RECORDS_GLOB = "samples*.jsonl"
KEY_FIELDS = ("sample_id", "setting", "sample_index")


def record_key(record: dict) -> tuple:
    """What identifies a scored sample within a run: the sample, the setting, the draw."""
    return tuple(record[name] for name in KEY_FIELDS)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader never sees a half-written file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class RunStore:
    """The directory of one run: ``config.yaml`` (the resolved configuration), ``environment.json``
    (package versions, git commit, host) and ``samples.jsonl`` — one line per scored sample, written
    as soon as it is scored. Shard ``i`` of ``n`` appends to ``samples.shard-i-of-n.jsonl`` instead,
    so shards of one run never write the same file; reading merges every ``samples*.jsonl``.

    A rerun of the same configuration opens the same directory and skips the keys already there.
    """

    def __init__(self, directory: str | Path, shard: int = 0, shards: int = 1) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} must be in [0, {shards}) (shard index of shard count {shards})")
        self.directory = Path(directory)
        name = "samples.jsonl" if shards == 1 else f"samples.shard-{shard}-of-{shards}.jsonl"
        self.path = self.directory / name

    def open(self, config_yaml: str, environment: dict) -> None:
        """Create the directory and write its configuration and environment (atomically)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.directory / CONFIG_NAME, config_yaml)
        _write_atomically(self.directory / ENVIRONMENT_NAME, json.dumps(environment, indent=2) + "\n")

    def records(self) -> list[dict]:
        """Every scored sample of the run, all shards merged; a key recorded twice counts once."""
        return unique_records(self.directory)

    def done(self) -> set[tuple]:
        return {record_key(record) for record in self.records()}

    def append(self, records: Iterable[dict]) -> None:
        append_records(self.path, records)


def unique_records(directory: str | Path) -> list[dict]:
    """The records of every ``samples*.jsonl`` in ``directory``, first occurrence of each key kept."""
    seen: set[tuple] = set()
    merged = []
    for path in sorted(Path(directory).glob(RECORDS_GLOB)):
        for record in read_records(path):
            key = record_key(record)
            if key not in seen:
                seen.add(key)
                merged.append(record)
    return merged


def run_directories(root: str | Path) -> list[Path]:
    """Every run directory below ``root`` (a directory holding a ``config.yaml``)."""
    return sorted(path.parent for path in Path(root).rglob(CONFIG_NAME))


def records_frame(records: Iterable[dict]):
    """Records as a pandas DataFrame, one row each: ``metrics`` spread into ``metric.<name>`` columns,
    ``details`` and ``stats`` left out."""
    import pandas as pd

    rows = []
    for record in records:
        row = {key: value for key, value in record.items() if key not in ("metrics", "details", "stats")}
        row.update({f"metric.{name}": value for name, value in record.get("metrics", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def load_frame(root: str | Path | Sequence[str | Path]):
    """One row per scored sample of every run below ``root`` (or of the listed run directories), as a
    pandas DataFrame (:func:`records_frame`) with the run's directory in column ``run``."""
    directories = run_directories(root) if isinstance(root, str | Path) else [Path(p) for p in root]
    return records_frame(
        {**record, "run": str(directory)} for directory in directories for record in unique_records(directory)
    )
