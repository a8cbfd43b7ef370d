"""Compression methods, one per file; :func:`get` builds one by name.

Each method declares the signals it needs (``requirements()``) and scores a layer from a
:class:`~infokv.methods.view.LayerView` (``score(view)``); :mod:`~infokv.methods.budget` and
:mod:`~infokv.methods.selection` turn scores into kept tokens. Methods import only :mod:`infokv.signals`
(and :mod:`infokv.kernels` beneath it): never the engine, transformers internals or evaluation.
"""

from __future__ import annotations

import dataclasses

from infokv.methods.adakv import AdaKV
from infokv.methods.base import Method
from infokv.methods.full import Full
from infokv.methods.rkv import RKV
from infokv.methods.rpc import RPC
from infokv.methods.scorers import SCORERS

_METHODS = (Full, *SCORERS.values(), RPC, RKV, AdaKV)
_REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in _METHODS}


def available(phase: str | None = None) -> list[str]:
    """Names of every method, or of those usable in ``phase`` ('prefill' or 'decode')."""
    return [name for name, cls in _REGISTRY.items() if phase is None or phase in cls.phases]


_PHASE_ACTIONS = {"prefill": "compress a prefill", "decode": "compress while decoding"}


def get_for_phase(name: str | Method, phase: str) -> Method:
    """:func:`get` for a method that must work in ``phase`` ('prefill' or 'decode'), or a one-line error."""
    method = get(name)
    if phase not in method.phases:
        raise ValueError(
            f"method {method.name!r} cannot {_PHASE_ACTIONS[phase]}; use one of {available(phase)}"
        )
    return method


def get(name: str | Method, **params: object) -> Method:
    """Build method ``name`` with ``params``; unknown names or parameters fail with one line."""
    if isinstance(name, Method):
        return dataclasses.replace(name, **params) if params else name
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    allowed = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {name!r} has no parameter {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return cls(**params)


__all__ = ["Method", "available", "get", "get_for_phase"]
