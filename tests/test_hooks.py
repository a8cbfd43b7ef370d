"""Decoding attention that skips the front filler of narrow rows gives the masked full-width result."""

import torch
import torch.nn.functional as F

from infokv.hf.hooks import _row_groups, _single_query_attention


def front_filled(kept: list[int], keys: int) -> torch.Tensor:
    valid = torch.zeros(len(kept), keys, dtype=torch.bool)
    for row, count in enumerate(kept):
        valid[row, keys - count :] = True
    return valid


def test_row_groups_join_similar_spans_and_start_at_the_widest():
    valid = front_filled([100, 90, 40, 38, 100], 120)
    assert _row_groups(valid) == [(slice(0, 2), 20), (slice(2, 4), 80), (slice(4, 5), 20)]


def test_grouped_single_query_attention_equals_full_width_masked_attention():
    generator = torch.Generator().manual_seed(0)
    kept = [200, 190, 60, 55, 20, 200]
    rows, kv_heads, groups, keys, dim = len(kept), 2, 3, 200, 16
    query = torch.randn(rows, kv_heads * groups, 1, dim, generator=generator)
    key = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    value = torch.randn(rows, kv_heads, keys, dim, generator=generator)
    valid = front_filled(kept, keys)
    valid[2, -30] = False  # a masked entry inside a row's span stays masked
    grouped = query.reshape(rows, kv_heads, groups, dim)
    reference = F.scaled_dot_product_attention(
        grouped, key, value, attn_mask=valid[:, None, None], scale=0.25
    )
    output = _single_query_attention(query, key, value, valid, 0.25)
    assert len(_row_groups(valid)) > 1
    torch.testing.assert_close(output, reference.reshape(rows, kv_heads * groups, 1, dim))
