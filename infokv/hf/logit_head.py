"""The model's output head: final (normed) hidden states to logits, and the entropy of those logits.

Entropy needs the logits of every prompt position, the largest product of a prefill after the model's own
(T · d · V multiply-adds). When the head is a linear layer in a dtype slower than bfloat16 on its device,
the entropy is computed in two stages (:func:`infokv.signals.entropy.two_stage_entropy`): bfloat16 logits
choose the candidates, exact logits of the candidates give the value, to within near-ties at rank k.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from infokv.signals.entropy import CANDIDATE_SLACK, chunked_entropy, two_stage_entropy

MAX_CANDIDATE_SHARE = 1 / 8
"""Two stages are used only when a row's topk + slack candidates are at most 1/8 of the vocabulary: with
more, the exact product over the candidates of a block would approach the full one."""


@functools.cache
def bfloat16_is_faster(device: torch.device) -> bool:
    """Whether bfloat16 products run well ahead of fp32 on ``device``: a GPU with bfloat16, or a CPU
    with AVX512-BF16 or AMX (elsewhere bfloat16 is emulated on the CPU, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


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
        """Top-``topk`` entropy (B, T) of the logits at each of the (B, T, d) ``hidden`` states; the
        one-stage path makes logits for ``rows`` positions at a time."""
        if self.two_stages(hidden, topk):
            return two_stage_entropy(hidden, self.module.weight, self.module.bias, topk, self._cap)
        return chunked_entropy(hidden, self, topk, rows)

    def two_stages(self, hidden: torch.Tensor, topk: int) -> bool:
        """Whether :meth:`entropy` takes two stages for ``hidden`` and ``topk``."""
        if not isinstance(self.module, nn.Linear) or hidden.dtype not in (torch.float32, torch.float16):
            return False
        vocabulary = self.module.weight.shape[0]
        if not (0 < topk and topk + CANDIDATE_SLACK <= MAX_CANDIDATE_SHARE * vocabulary):
            return False
        return bfloat16_is_faster(hidden.device)
