"""The model's output head: final (normed) hidden states to logits, and the entropy of those logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from infokv.signals.entropy import chunked_entropy


@dataclass
class LogitHead:
    """``head(hidden)`` → logits (…, V), with the model's logit soft-capping if it has one."""

    module: nn.Module
    softcap: float | None = None

    @classmethod
    def of(cls, model: PreTrainedModel) -> LogitHead:
        softcap = getattr(model.config.get_text_config(decoder=True), "final_logit_softcapping", None)
        return cls(model.get_output_embeddings(), softcap or None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._cap(self.module(hidden))

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap:
            return torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def entropy(self, hidden: torch.Tensor, topk: int, rows: int) -> torch.Tensor:
        """Top-``topk`` entropy (B, T) of the logits at each of the (B, T, d) ``hidden`` states, from the
        logits of ``rows`` positions at a time."""
        return chunked_entropy(hidden, self, topk, rows)
