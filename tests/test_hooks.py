"""Decoding attention with the query heads grouped per KV head gives the masked per-head result."""

import pytest
import torch
import torch.nn.functional as F

from infokv.hf.hooks import _single_query_attention
from infokv.kernels import decode_attention


def front_filled(kept: list[int], keys: int) -> torch.Tensor:
    valid = torch.zeros(len(kept), keys, dtype=torch.bool)
    for row, count in enumerate(kept):
        valid[row, keys - count :] = True
    return valid


def test_grouped_single_query_attention_equals_attention_per_query_head():
    generator = torch.Generator().manual_seed(0)
    kept = [200, 190, 60, 55, 20, 200]
    rows, kv_heads, groups, keys, dim = len(kept), 2, 3, 200, 16
    query = torch.randn(rows, kv_heads * groups, 1, dim, generator=generator)
    key = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    value = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    valid = front_filled(kept, keys)
    valid[2, -30] = False  # a masked entry inside a row's span stays masked
    reference = F.scaled_dot_product_attention(
        query,
        key.repeat_interleave(groups, dim=1),
        value.repeat_interleave(groups, dim=1),
        attn_mask=valid[:, None, None],
        scale=0.25,
    )
    torch.testing.assert_close(_single_query_attention(query, key, value, valid, 0.25), reference)


def per_head_case(seed: int, shape: tuple[int, ...], dropped: float) -> tuple[torch.Tensor, ...]:
    """One decoding query per row and a per-KV-head mask hiding about ``dropped`` of the keys (never the
    last, the query's own); ``shape`` = (rows, KV heads, query heads per KV head, keys, head size)."""
    generator = torch.Generator().manual_seed(seed)
    rows, kv_heads, groups, keys, dim = shape
    query = torch.randn(rows, kv_heads * groups, 1, dim, generator=generator)
    key = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    value = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    valid = torch.rand(rows, kv_heads, keys, generator=generator) > dropped
    valid[..., -1] = True
    return query, key, value, valid


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masked_decode_attention_in_half_precision_matches_fp32_per_head_masks():
    query, key, value, valid = per_head_case(seed=1, shape=(3, 2, 4, 300, 64), dropped=0.5)
    half = [tensor.cuda().bfloat16() for tensor in (query, key, value)]
    output = decode_attention.masked_attention(*half, valid.cuda(), 0.125)
    reference = decode_attention.masked_attention(*(t.float() for t in half), valid.cuda(), 0.125)
    torch.testing.assert_close(output.float(), reference, atol=2e-2, rtol=2e-2)


def test_masked_decode_attention_equals_the_fused_kernel_under_per_head_masks():
    query, key, value, valid = per_head_case(seed=2, shape=(2, 3, 2, 120, 16), dropped=0.3)
    fused = _single_query_attention(query, key, value, valid, 0.25)  # on CPU: sdpa under the mask
    torch.testing.assert_close(decode_attention.masked_attention(query, key, value, valid, 0.25), fused)
