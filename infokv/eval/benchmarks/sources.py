"""Where benchmark samples come from: one dispatcher over a benchmark's sources, hub rows, local rows.

A benchmark names its built-in sources (``"offline"``, ``"hub"``, ``"builder"``, ...) in order of
preference; :func:`load_from` picks the first for ``source="auto"``, and a path ending in ``.json`` or
``.jsonl`` is read as local records. ``limit`` is passed to the loader so that builders and generators
make only the samples asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from infokv.eval.benchmarks.base import DataError, Sample, check_limit, check_samples, read_records, require

Loader = Callable[[int | None], list[Sample]]
LOCAL_SUFFIXES = (".json", ".jsonl")


def load_from(
    name: str,
    source: str,
    limit: int | None,
    loaders: Mapping[str, Loader],
    local: Callable[[Path, int | None], list[Sample]],
) -> list[Sample]:
    """Samples of benchmark ``name`` from ``source``: a key of ``loaders``, ``"auto"`` (the first key) or a
    local ``.json``/``.jsonl`` path; at most ``limit`` of them."""
    check_limit(name, limit)
    if source == "auto":
        source = next(iter(loaders))
    if source in loaders:
        samples = loaders[source](limit)
    elif str(source).endswith(LOCAL_SUFFIXES):
        samples = local(Path(source), limit)
    else:
        allowed = ", ".join(["auto", *loaders, "a .json/.jsonl path"])
        raise ValueError(f"{name}: unknown source {source!r}; allowed: {allowed}")
    return check_samples(samples[:limit], f"{name} source {source}")


def hub_rows(
    dataset: str, split: str, config: str | None = None, fields: tuple[str, ...] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a Hugging Face hub dataset split, each checked for ``fields``;
    ``where`` ("dataset[config]:split:row i") names the row in error messages."""
    import datasets

    label = f"{dataset}[{config}]" if config else dataset
    for index, row in enumerate(datasets.load_dataset(dataset, config, split=split)):
        where = f"{label}:{split}:row {index}"
        require(row, fields, where)
        yield where, dict(row)


def local_rows(path: Path, fields: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` per record of a local ``.json``/``.jsonl`` file, each checked for ``fields``."""
    records = read_records(path, fields)
    return [(f"{path}: record {index}", record) for index, record in enumerate(records, start=1)]


def field(record: Mapping[str, Any], name: str, where: str) -> str:
    """``record[name]`` (text, or a number read as text) as a non-empty string, else a one-line
    :class:`DataError` naming ``where``: a list or an object where text belongs is a wrong field type."""
    require(record, (name,), where)
    raw = record[name]
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise DataError(f"{where}: field {name!r} must be text, got {type(raw).__name__} {raw!r:.40}")
    value = str(raw).strip()
    if not value:
        raise DataError(f"{where}: field {name!r} is empty")
    return value
