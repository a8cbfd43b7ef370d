"""The logit head's entropy is the top-k entropy of its exact (soft-capped) logits, in any row chunks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infokv.hf.logit_head import LogitHead
from infokv.signals.entropy import topk_entropy

VOCABULARY, HIDDEN = 4096, 64


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("topk", [16, 0])
def test_entropy_is_that_of_the_capped_logits(softcap, topk):
    torch.manual_seed(3)
    module = nn.Linear(HIDDEN, VOCABULARY)
    nn.init.normal_(module.weight, std=0.5)  # logits spread over several units, like a trained head
    head = LogitHead(module, softcap)
    hidden = torch.randn(2, 45, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = module(hidden).double()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        expected = topk_entropy(logits, topk).float()
        torch.testing.assert_close(head.entropy(hidden, topk, rows=7), expected, atol=2e-5, rtol=0)
