"""infokv: information-aware KV-cache compression for long reasoning, with its baselines.

The public API: :func:`load_model`, :func:`generate`, :func:`generate_sweep`, :func:`compress`, the
:class:`Budget` and :class:`Completion` they take and return, and :mod:`infokv.methods`. The layers
beneath, top to bottom: :mod:`infokv.analysis` and :mod:`infokv.eval` (benchmarks, runner, results),
:mod:`infokv.engine`, :mod:`infokv.hf` (transformers), :mod:`infokv.methods`, :mod:`infokv.signals`,
:mod:`infokv.kernels`; each imports only those below it (``tests/test_layers.py``).
"""

from infokv import methods
from infokv._version import __version__
from infokv.engine.sweep import Completion, compress, generate, generate_sweep
from infokv.hf.models import load_model
from infokv.methods.budget import Budget

__all__ = [
    "Budget",
    "Completion",
    "__version__",
    "compress",
    "generate",
    "generate_sweep",
    "load_model",
    "methods",
]
