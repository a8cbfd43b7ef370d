"""Benchmarks, one module each (see :mod:`infokv.eval.benchmarks.base` for what a module provides).

A benchmark loads samples, builds prompts and grades completions; it knows nothing of the engine.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module under infokv.eval.benchmarks
_MODULES: dict[str, str] = {
    "aime": "aime",
    "gsm8k": "gsm8k",
    "humaneval": "humaneval",
    "ifeval": "ifeval",
    "livecodebench": "livecodebench",
    "longreason": "longreason",
    "math500": "math500",
    "passkey": "passkey",
    "ruler_niah": "ruler_niah",
    "ruler_vt": "ruler_vt",
}


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_MODULES)


def get(name: str) -> ModuleType:
    """The benchmark module called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in _MODULES:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"infokv.eval.benchmarks.{_MODULES[name]}")
