"""Which rows of a fixed-shape layer can be attended without a mask: the valid entries of each row
are one run ending at the layer's width (left padding, the front filler of compressed rows), so a
kernel can slice instead of masking."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ValidPrefix:
    """How a fixed-shape layer's first ``length`` entries can be attended without a mask: the rows of
    each group (a contiguous slice) see entries ``start`` … ``length − 1``, all valid, and no earlier one."""

    length: int
    groups: tuple[tuple[slice, int], ...]


MAX_PREFIX_GROUPS = 16
"""Beyond this many row groups a layer is attended over its whole width under a mask instead."""


def valid_prefix(valid: torch.Tensor | None, batch: int, length: int) -> ValidPrefix | None:
    """The :class:`ValidPrefix` of entries with validity ``valid`` (B, length) (None: all valid), or None
    when a row's valid entries are not one run ending at ``length`` (a hole), a row has none, or the
    runs start at more than :data:`MAX_PREFIX_GROUPS` places. Left padding and the front filler of
    compressed rows (:func:`infokv.methods.selection.combine_groups`) leave one such run per row, and rows of
    equal budget start theirs at the same entry."""
    if valid is None:
        return ValidPrefix(length, ((slice(0, batch), 0),))
    starts = length - valid.sum(dim=-1)
    index = torch.arange(length, device=valid.device)
    one_run = torch.equal(valid, index[None, :] >= starts[:, None])
    starts = starts.tolist()
    if not one_run or max(starts) >= length:
        return None
    groups, first = [], 0
    for row in range(1, batch + 1):
        if row == batch or starts[row] != starts[first]:
            groups.append((slice(first, row), starts[first]))
            first = row
    return ValidPrefix(length, tuple(groups)) if len(groups) <= MAX_PREFIX_GROUPS else None
