"""Two-stage entropy (bfloat16 candidates, exact logits) equals the entropy of the exact logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infokv.hf import logit_head
from infokv.hf.logit_head import LogitHead
from infokv.signals.entropy import candidate_columns, chunked_entropy, topk_entropy, two_stage_entropy

VOCABULARY, HIDDEN = 4096, 64


def _head(bias: bool) -> nn.Linear:
    torch.manual_seed(3)
    head = nn.Linear(HIDDEN, VOCABULARY, bias=bias)
    nn.init.normal_(head.weight, std=0.5)  # logits spread over several units, like a trained head
    return head


def _hidden(batch: int = 2, length: int = 45) -> torch.Tensor:
    return torch.randn(batch, length, HIDDEN, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("width", [60, 500, 4099])
def test_candidate_columns_hold_each_rows_largest(width):
    approximate = torch.randn(6, width, generator=torch.Generator().manual_seed(5))
    approximate[2, -2] = 10.0  # among the columns past the last whole group
    columns = candidate_columns(approximate, 20)
    expected = approximate.topk(20, dim=-1).indices.unique()
    assert torch.equal(columns, columns.unique())  # ascending, once each
    assert torch.isin(expected, columns).all()
    # Beyond the rows' top 20, only values at or above a row's bound on its 20th largest are added.
    assert len(columns) <= 1.5 * len(expected)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_two_stage_entropy_matches_exact_logits(bias, softcap):
    head, hidden = _head(bias), _hidden()

    def transform(logits: torch.Tensor) -> torch.Tensor:
        return logits if softcap is None else torch.tanh(logits / softcap) * softcap

    with torch.no_grad():
        expected = topk_entropy(transform(head(hidden)).double(), 16).float()
        # Blocks of 16 rows: the candidates of a block serve rows whose own top k they may not all hold.
        got = two_stage_entropy(hidden, head.weight, head.bias, 16, transform, rows=16)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("faster", [False, True])
def test_logit_head_entropy_is_the_same_on_either_path(monkeypatch, faster):
    monkeypatch.setattr(logit_head, "bfloat16_is_faster", lambda device: faster)
    head, hidden = LogitHead(_head(False)), _hidden()
    assert head.two_stages(hidden, 16) is faster
    assert not head.two_stages(hidden, 0)  # the full vocabulary has no candidates to choose
    assert not head.two_stages(hidden, VOCABULARY // 4)  # too many candidates for the first stage to pay
    with torch.no_grad():
        expected = chunked_entropy(hidden, head, 16, rows=7)
        torch.testing.assert_close(head.entropy(hidden, 16, rows=7), expected, atol=2e-5, rtol=0)
