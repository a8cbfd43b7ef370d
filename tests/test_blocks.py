"""Blockwise attention gives the same output and column sums whatever the device's query blocks."""

from __future__ import annotations

import torch

from infokv.kernels import blocks
from infokv.signals.attention import blockwise_attention


def test_cpu_blocks_hold_a_set_number_of_logits_and_leave_results_unchanged(monkeypatch):
    generator = torch.Generator().manual_seed(7)
    query = torch.randn(2, 4, 40, 8, generator=generator)
    key, value = (torch.randn(2, 2, 40, 8, generator=generator) for _ in range(2))
    valid = torch.arange(40)[None, :] >= torch.tensor([[0], [9]])
    whole = blockwise_attention(query, key, value, valid, 0.3)
    monkeypatch.setattr(blocks, "CPU_ITEM_ELEMENTS", 2 * 40 * 7)  # 2 query heads per KV head, 40 keys
    assert blocks.queries_per_block(torch.device("cpu"), 2, 4, 2, 40) == 7
    in_blocks = blockwise_attention(query, key, value, valid, 0.3)
    torch.testing.assert_close(in_blocks, whole)
