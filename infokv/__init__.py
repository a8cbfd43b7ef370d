"""infokv: information-aware KV-cache compression for long reasoning, with its baselines."""

from importlib.metadata import PackageNotFoundError, version

from infokv import methods
from infokv.budget import Budget
from infokv.engine import Completion, compress, generate, generate_sweep
from infokv.models import load_model

try:
    __version__ = version("infokv")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["Budget", "Completion", "compress", "generate", "generate_sweep", "load_model", "methods"]
