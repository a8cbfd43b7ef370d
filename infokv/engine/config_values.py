"""Typed reads of configuration values: a wrong value is one line naming the key, the value and what
is allowed.

Hydra parses each command-line override as YAML, so ``cot=maybe`` arrives as the string ``'maybe'``
(truthy), ``seed=abc`` as ``'abc'`` and ``batch_size=-1`` as a valid integer. These checks turn such
values into a :class:`ValueError` before any work, instead of a late ``TypeError`` or a silent run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn


def reject(key: str, value: object, allowed: str) -> NoReturn:
    """Raise the one-line error every check here gives: ``key value is not allowed; use allowed``."""
    raise ValueError(f"{key} {value!r} is not allowed; use {allowed}")


def boolean(key: str, value: object) -> bool:
    """A real boolean (YAML ``true``/``false``), not a string or a number that would read as one."""
    if not isinstance(value, bool):
        reject(key, value, "true or false")
    return value


def integer(key: str, value: object, minimum: int | None = None) -> int:
    """An integer (not a boolean), at least ``minimum`` when given."""
    allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        reject(key, value, allowed)
    return value


def optional_integer(key: str, value: object, minimum: int) -> int | None:
    """``None`` (null: no limit) or an integer at least ``minimum``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        reject(key, value, f"an integer >= {minimum} or null")
    return value


def number(key: str, value: object, low: float, high: float | None = None, low_open: bool = False) -> float:
    """A real number in ``[low, high]`` (``(low, high]`` with ``low_open``; no upper end without ``high``)."""
    if high is None:
        allowed = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        reject(key, value, allowed)
    above = value > low if low_open else value >= low
    if not above or (high is not None and value > high):
        reject(key, value, allowed)
    return float(value)


def choice(key: str, value: object, allowed: Sequence[str]) -> str:
    """One of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        reject(key, value, "one of " + ", ".join(allowed))
    return value


def text(key: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        reject(key, value, "a non-empty string")
    return value
