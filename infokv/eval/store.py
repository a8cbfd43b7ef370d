"""The results store: append-only JSON-lines records that survive kills and concurrent writers, in one
directory per run.

Appending takes an exclusive ``flock`` on the file, cuts an unfinished last line a killed writer may
have left, writes each record as one line with a single ``write`` and calls ``fsync`` before
releasing the lock, so any number of processes can append to one file: no record is lost, torn or
interleaved, whatever its size. Readers take a shared lock, so they never see a tail while it is
being cut, and ignore a partial last line. The kernel drops a killed process's locks, so a kill
never blocks the others. The locks are advisory: every writer must go through
:func:`append_records`. On NFS, ``flock`` is mapped to the server's byte-range locks; a cluster file
system must have locking enabled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

TAIL_CHUNK = 1 << 16  # bytes read at a time while looking back for the last newline


def _drop_partial_tail(fd: int) -> None:
    """Truncate an unfinished last line left by a killed writer (the caller holds the write lock)."""
    end = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` of ``data``; only a short write (a full disk, a signal) makes a second one."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_records(path: str | Path, records: Iterable[dict]) -> None:
    """Append ``records`` to ``path``, one JSON object per line, durably and safely beside other writers."""
    path = Path(path)
    lines = [(json.dumps(record, sort_keys=True, default=str) + "\n").encode() for record in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _drop_partial_tail(fd)
        for line in lines:
            _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # and with it the lock


def read_records_from(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """The complete records of ``path`` from byte ``offset`` on, and the offset just after the last
    of them (where the next call starts); a partial last line is left for later."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return [], offset
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    records = []
    start = 0
    while start < end:
        stop = data.index(b"\n", start)
        try:
            records.append(json.loads(data[start:stop]))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: line at byte {offset + start}: not a JSON record ({error.msg})"
            ) from None
        start = stop + 1
    return records, offset + end


def read_records(path: str | Path) -> list[dict]:
    """Every complete record of ``path`` (none if it does not exist); a partial last line is ignored."""
    return read_records_from(path)[0]


# --------------------------------------------------------------------------------------------------
# Claims: which process computes which sample
# --------------------------------------------------------------------------------------------------


class Claim:
    """An exclusive ``flock`` on a sample's lock file, held while one process computes the sample.

    The kernel releases it when the holder exits or is killed, so a killed job's samples are free to
    the next run at once, on any host sharing the file system (given working ``flock`` there): no
    pid to check for liveness.
    Releasing removes the file; a claimer that locked a file just removed sees its inode gone from
    the path and opens the new one instead, so two processes never hold one sample.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def take(cls, path: Path, wait: bool) -> Claim | None:
        """The claim on ``path``; ``None`` if another process holds it and ``wait`` is false."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                held = os.fstat(fd)
                current = os.stat(path)
                if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


# --------------------------------------------------------------------------------------------------
# Run directories: one per job configuration, resumable, shardable, shared by concurrent jobs
# --------------------------------------------------------------------------------------------------

CONFIG_NAME = "config.yaml"
ENVIRONMENT_NAME = "environment.json"
RECORDS_GLOB = "samples*.jsonl"
CLAIMS_NAME = ".claims"
KEY_FIELDS = ("sample_id", "setting", "sample_index")
SPREAD_OR_LEFT_OUT = ("metrics", "details", "stats", "fidelity")
"""Record fields that :func:`records_frame` spreads into columns of their own or leaves out."""


class HasId(Protocol):
    id: str


S = TypeVar("S", bound=HasId)


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
    Jobs of one run that overlap in time (a rerun started while the first is alive, shards given
    twice) share the work through :meth:`claim_batches`: each sample is computed by one of them.
    """

    def __init__(self, directory: str | Path, shard: int = 0, shards: int = 1) -> None:
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} must be in [0, {shards}) (shard index of shard count {shards})")
        self.directory = Path(directory)
        name = "samples.jsonl" if shards == 1 else f"samples.shard-{shard}-of-{shards}.jsonl"
        self.path = self.directory / name
        self._read_up_to: dict[Path, int] = {}
        self._done: set[tuple] = set()

    def open(self, config_yaml: str, environment: dict) -> None:
        """Create the directory and write its configuration and environment (atomically)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.directory / CONFIG_NAME, config_yaml)
        _write_atomically(self.directory / ENVIRONMENT_NAME, json.dumps(environment, indent=2) + "\n")

    def records(self) -> list[dict]:
        """Every scored sample of the run, all shards merged; a key recorded twice counts once."""
        return unique_records(self.directory)

    def done(self) -> frozenset[tuple]:
        """The keys recorded so far by any process; each call reads only what was appended since."""
        for path in sorted(self.directory.glob(RECORDS_GLOB)):
            records, self._read_up_to[path] = read_records_from(path, self._read_up_to.get(path, 0))
            self._done.update(record_key(record) for record in records)
        return frozenset(self._done)

    def append(self, records: Iterable[dict]) -> None:
        """Append the records whose key is not recorded yet."""
        done = self.done()
        append_records(self.path, (record for record in records if record_key(record) not in done))

    def claim_batches(
        self, samples: Sequence[S], size: int, settings: Sequence[str], draws: int
    ) -> Iterator[list[S]]:
        """Batches of up to ``size`` of ``samples`` for this process to compute, each claimed
        (:class:`Claim`) until the next batch is asked for; the caller appends a batch's records
        before asking. A sample is finished once every (setting, draw) is recorded.

        Each batch is re-checked after it is claimed, so a sample that another process finished in
        the meantime is skipped, never recomputed. Samples other processes are computing are left
        to them; when only such samples remain, this waits for one of them to be released, then
        skips it if finished or takes it if its holder died.
        """
        claims = self.directory / CLAIMS_NAME
        claims.mkdir(parents=True, exist_ok=True)

        def claim_path(sample: S) -> Path:
            return claims / f"{hashlib.sha256(str(sample.id).encode()).hexdigest()[:32]}.lock"

        def unfinished(batch: Iterable[S]) -> list[S]:
            done = self.done()
            keys = [(setting, draw) for setting in settings for draw in range(draws)]
            return [sample for sample in batch if any((sample.id, *key) not in done for key in keys)]

        remaining = unfinished(samples)
        while remaining:
            held: list[tuple[S, Claim]] = []
            for sample in remaining:
                if len(held) == size:
                    break
                if (claim := Claim.take(claim_path(sample), wait=False)) is not None:
                    held.append((sample, claim))
            if not held:  # all are being computed elsewhere: wait for the first to be released
                Claim.take(claim_path(remaining[0]), wait=True).release()
                remaining = unfinished(remaining)
                continue
            try:
                if batch := unfinished(sample for sample, _ in held):
                    yield batch
            finally:
                for _, claim in held:
                    claim.release()
            taken = {id(sample) for sample, _ in held}
            remaining = unfinished(sample for sample in remaining if id(sample) not in taken)


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
    """Records as a pandas DataFrame, one row each: ``metrics`` spread into ``metric.<name>`` columns, the
    scalars of ``fidelity`` into ``fidelity.<name>`` columns (its per-position list stays in the JSONL),
    ``details`` and ``stats`` left out."""
    import pandas as pd

    rows = []
    for record in records:
        row = {key: value for key, value in record.items() if key not in SPREAD_OR_LEFT_OUT}
        row.update({f"metric.{name}": value for name, value in record.get("metrics", {}).items()})
        row.update(
            {
                f"fidelity.{name}": value
                for name, value in (record.get("fidelity") or {}).items()
                if not isinstance(value, list)
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def load_frame(root: str | Path | Sequence[str | Path]):
    """One row per scored sample of every run below ``root`` (or of the listed run directories), as a
    pandas DataFrame (:func:`records_frame`) with the run's directory in column ``run``."""
    directories = run_directories(root) if isinstance(root, str | Path) else [Path(p) for p in root]
    return records_frame(
        {**record, "run": str(directory)} for directory in directories for record in unique_records(directory)
    )
