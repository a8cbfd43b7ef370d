"""Which call of ``scripts/bench.py`` measured which rows of ``results/bench/gpu.csv``.

The committed CSV joins several calls (one session's device time does not fit every part), so each
row names its call (``Row.call``) and the sidecar ``calls.csv`` holds one line per call: its
command, the commit its code came from, the device and the software. A new call merges into the
committed CSV: its rows replace the rows with the same (method, budget, prompt_tokens, batch,
metric), the other rows stay, and calls no row names any more drop out of the sidecar.
"""

from __future__ import annotations

import csv
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bench_common import Row, read_rows, write_rows

OUTPUT_OPTIONS = ("--csv", "--calls", "--figure", "--readme", "--commit", "--call")
"""Options that say where results go or how the call is named, not what is measured: left out of the
recorded command."""
OUTPUT_FLAGS = ("--merge",)


@dataclass(frozen=True)
class Call:
    """One run of the benchmark script: its id (``Row.call``), code, command and machine."""

    call: str
    commit: str
    command: str
    device: str
    software: str


CALL_FIELDS = tuple(field.name for field in fields(Call))


def read_calls(path: Path) -> list[Call]:
    """The calls recorded in ``path``; none where it does not exist yet."""
    if not path.exists():
        return []
    with path.open() as handle:
        return [Call(**{name: record[name] for name in CALL_FIELDS}) for record in csv.DictReader(handle)]


def write_calls(path: Path, calls: Iterable[Call]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CALL_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(call) for call in calls)


def row_key(row: Row) -> tuple[str, str, int, int, str]:
    """What a row measures; two calls measuring the same thing give rows with the same key."""
    return row.method, row.budget, row.prompt_tokens, row.batch, row.metric


def merge_rows(old: Sequence[Row], new: Sequence[Row]) -> list[Row]:
    """``old`` less the rows that ``new`` measures again, then ``new``."""
    replaced = {row_key(row) for row in new}
    return [row for row in old if row_key(row) not in replaced] + list(new)


def merge_calls(old: Sequence[Call], new: Call, rows: Sequence[Row]) -> list[Call]:
    """``old`` and ``new`` (replacing a call of the same id), keeping only the calls that ``rows`` name."""
    named = {row.call for row in rows}
    kept = [call for call in old if call.call != new.call] + [new]
    return [call for call in kept if call.call in named]


def measuring_command(argv: Sequence[str], script: str = "scripts/bench.py") -> str:
    """The command line of a call without its output options: what it measured, copyable as it stands."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        option = token.split("=", 1)[0]
        if option in OUTPUT_FLAGS or (option in OUTPUT_OPTIONS and "=" in token):
            continue
        if option in OUTPUT_OPTIONS:
            skip = True
            continue
        kept.append(token)
    return shlex.join(["python", script, *kept])


@dataclass
class Ledger:
    """Where one call's rows go: ``csv`` and the calls' sidecar ``calls_path``, merged into what they held
    (``rows``, ``calls``; both empty when the call replaces them)."""

    csv: Path
    calls_path: Path
    call: Call
    rows: list[Row]
    calls: list[Call]

    @classmethod
    def open(cls, csv: Path, calls_path: Path, call: Call, merge: bool) -> Ledger:
        rows = read_rows([csv]) if merge and csv.exists() else []
        calls = read_calls(calls_path) if merge else []
        return cls(csv, calls_path, call, rows, calls)

    def write(self, new: Sequence[Row]) -> list[Row]:
        """Write the merged rows and the calls they name; return the merged rows."""
        rows = merge_rows(self.rows, new)
        write_rows(self.csv, rows)
        write_calls(self.calls_path, merge_calls(self.calls, self.call, rows))
        return rows


def current_commit(root: Path) -> str:
    """HEAD's short hash, with ``+`` where the working tree differs from it; ``unknown`` outside git."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(root), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")
