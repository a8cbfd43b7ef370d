"""KVState copies: compressed and row-selected caches hold the right entries and have room to grow."""

from __future__ import annotations

import torch

from infokv.hf.cache import KVState, new_cache


def filled_state(batch: int = 2, heads: int = 3, length: int = 40, dim: int = 8, layers: int = 2) -> KVState:
    cache = new_cache()
    generator = torch.Generator().manual_seed(0)
    for index in range(layers):
        keys = torch.randn(batch, heads, length, dim, generator=generator)
        cache.update(keys, -keys, index)
    return KVState(cache, [None] * layers)


def test_gather_takes_the_chosen_entries_per_row_and_head():
    state = filled_state()
    rows = torch.tensor([1, 0, 1])
    keep = [torch.randint(0, 40, (3, 3, 11)) for _ in range(2)]
    valid = [torch.ones(3, 11, dtype=torch.bool) for _ in range(2)]
    gathered = state.gather(rows, keep, valid)
    for layer in range(2):
        source, _ = state.layer(layer)
        keys, values = gathered.layer(layer)
        for row, source_row in enumerate(rows.tolist()):
            for head in range(3):
                assert torch.equal(keys[row, head], source[source_row, head, keep[layer][row, head]])
        assert torch.equal(values, -keys)


def test_copied_caches_append_in_place_at_the_next_step():
    state = filled_state()
    copies = [
        state.gather(
            torch.tensor([0, 1]),
            [torch.arange(20).expand(2, 3, 20)] * 2,
            [torch.ones(2, 20).bool()] * 2,
        ),
        state.select_rows(torch.tensor([1])),
    ]
    for copy in copies:
        before = copy.layer(0)[0]
        new = torch.ones(before.shape[0], 3, 1, 8)
        copy.cache.update(new, new, 0)
        after = copy.layer(0)[0]
        assert after.data_ptr() == before.data_ptr(), "the first appended step reallocated the layer"
        assert torch.equal(after[:, :, :-1], before) and torch.equal(after[:, :, -1:], new)
