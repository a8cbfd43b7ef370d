"""Query blocks of blockwise attention, sized for the device's memory hierarchy.

On a CPU each block's fp32 logits per (row, KV head) are kept near the size of a core's L2 cache, so the
softmax and the sums read them from cache; the rows of a batch share each block's products, so larger
batches give the kernels more work per call. Elsewhere fewer, larger blocks for the whole batch win.
"""

from __future__ import annotations

import torch

CPU_ITEM_ELEMENTS = 1 << 18
"""fp32 logits per query block and (row, KV head) on CPU: 1 MiB each."""
DEVICE_BLOCK_ELEMENTS = 1 << 26
"""fp32 logits per query block for the whole batch elsewhere (256 MiB)."""


def queries_per_block(device: torch.device, batch: int, query_heads: int, kv_heads: int, keys: int) -> int:
    """Queries per block over ``keys`` keys: :data:`CPU_ITEM_ELEMENTS` logits per (row, KV head) on CPU,
    else :data:`DEVICE_BLOCK_ELEMENTS` for the whole batch; at least 1."""
    if device.type == "cpu":
        return max(1, CPU_ITEM_ELEMENTS // (query_heads // kv_heads * keys))
    return max(1, DEVICE_BLOCK_ELEMENTS // (batch * query_heads * keys))
