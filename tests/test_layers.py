"""Imports point one way: every module imports only its own layer or those beneath it, with no cycles.

The walk reads every ``import`` statement of the package with :mod:`ast` (module level, inside
functions and inside ``if TYPE_CHECKING:`` blocks alike), so a cycle cannot hide behind a lazy or a
typing-only import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "infokv"

LAYERS = (
    "infokv",  # the public API: the package root
    "infokv.analysis",
    "infokv.eval",
    "infokv.engine",
    "infokv.hf",
    "infokv.methods",
    "infokv.signals",
    "infokv.kernels",
    "infokv._version",
)
"""Top to bottom: a module may import modules of its own layer or of any layer after it."""


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (read from ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {target for target in found if target in modules and target != name}


def layer(name: str) -> int:
    """Index in :data:`LAYERS` of the deepest layer that contains ``name``."""
    return max(index for index, prefix in enumerate(LAYERS) if f"{name}.".startswith(f"{prefix}."))


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports(path, name, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    assert all(name == "infokv" or layer(name) > 0 for name in module_names())


def test_imports_point_down():
    upward = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if layer(target) < layer(name)
    )
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}
    cycles: list[str] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_lazy_and_typing_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from infokv.engine.views import PrefillView\n"
        "def f():\n    from infokv import methods\n"
    )
    found = imports(source, "infokv.signals.probe", module_names())
    assert found == {"infokv.engine.views", "infokv.methods"}
