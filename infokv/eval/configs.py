"""Hydra's ``method`` config group, generated from the method dataclasses.

Each method's defaults exist once, in its dataclass (:mod:`infokv.methods`); ``method=<name>`` selects
``{name, params}`` with ``params`` its dataclass fields and defaults, in field order. A method that
evicts nothing (``full``) has no parameters that change its result, so its ``params`` stay empty and
its run directories keep the same identity. Overrides (``method.params.alpha=0.8``) are checked by
:func:`infokv.eval.runner.check_job` against these defaults: one line naming the key, the value and
what is allowed.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from infokv import methods


def method_node(name: str) -> dict:
    """``{"name": name, "params": {field: default}}`` of method ``name``."""
    method = methods.get(name)
    return {"name": name, "params": method.params() if method.evicts else {}}


def register_configs() -> None:
    """Store every method's node in Hydra's config store, group ``method`` (idempotent)."""
    store = ConfigStore.instance()
    for name in methods.available():
        store.store(group="method", name=name, node=method_node(name))
