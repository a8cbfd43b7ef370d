"""infokv: information-aware KV-cache compression for long reasoning, with its baselines."""

from infokv import methods
from infokv.budget import Budget
from infokv.engine import Completion, compress, generate, generate_sweep
from infokv.models import load_model

__all__ = ["Budget", "Completion", "compress", "generate", "generate_sweep", "load_model", "methods"]
