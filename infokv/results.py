"""Append-only JSON-lines records that survive a kill.

Each record is one line, written with a single ``write`` and flushed to disk before the call
returns, so a completed record is never lost. A kill in the middle of a write can leave at most
one partial last line; readers skip it and the next append cuts it off before writing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
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
            handle.write(json.dumps(record, sort_keys=True) + "\n")
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
