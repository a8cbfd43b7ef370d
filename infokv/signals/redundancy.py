"""Key redundancy (R-KV): how much a cached key repeats the other keys of its head, by cosine similarity.

For the unit keys k̂_i = k_i / (‖k_i‖ + ε) of one KV head (ε = 1e-8) over the N valid entries:

    C_ij = k̂_i · k̂_j  (i ≠ j),   C_ii = 0
    r(i) = the last entry j with C_ij > θ, or the first entry when there is none
    C̃_ij = 0 if j = r(i), else C_ij
    R_j  = softmax_j( (1/N) Σ_i C̃_ij )          over the valid entries j

A key similar to many others has a large mean similarity, so a large redundancy R_j; each entry's most
recent near-duplicate (``r(i)``) is spared its similarity to it, so among copies of one key the latest is
the least redundant. "Last" and "first" are in slot order, which is position order in a cache. The row
blocks of C are computed one at a time (as many rows as an attention query block), so no (N × N) tensor
exists.
"""

from __future__ import annotations

import torch

from infokv.kernels.blocks import queries_per_block

EPSILON = 1e-8


def unit_keys(keys: torch.Tensor) -> torch.Tensor:
    """fp32 k / (‖k‖ + ε) of (B, H, T, d) keys."""
    keys = keys.float()
    return keys / (keys.norm(dim=-1, keepdim=True) + EPSILON)


def _spared_similarity_block(
    units: torch.Tensor,
    valid: torch.Tensor,
    first_valid: torch.Tensor,
    start: int,
    stop: int,
    threshold: float,
) -> torch.Tensor:
    """C̃ (B, H, stop − start, T) for the rows ``start:stop``; invalid rows and columns are 0."""
    batch, heads, length, _ = units.shape
    similarity = torch.matmul(units[:, :, start:stop], units.transpose(-1, -2))
    rows = torch.arange(start, stop, device=units.device)
    columns = torch.arange(length, device=units.device, dtype=torch.int32)
    pairs = valid[:, None, None, :] & valid[:, None, start:stop, None] & (rows[:, None] != columns[None, :])
    similarity.masked_fill_(~pairs, 0.0)
    similar = (similarity > threshold) & pairs
    last = torch.where(similar, columns, -1).amax(dim=-1, keepdim=True).long()
    spared = torch.where(last >= 0, last, first_valid[:, None, None, None].expand_as(last))
    return similarity.scatter_(-1, spared, 0.0)


def key_redundancy(keys: torch.Tensor, valid: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """R (B, H, T) of the module docstring for (B, H, T, d) keys; 0 at invalid entries (``valid`` (B, T))."""
    batch, heads, length, _ = keys.shape
    if valid is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=keys.device)
    units = unit_keys(keys)
    first_valid = valid.int().argmax(dim=-1)
    block = queries_per_block(keys.device, batch, heads, heads, length)
    column_sums = torch.zeros(batch, heads, length, device=keys.device)
    for start in range(0, length, block):
        stop = min(length, start + block)
        column_sums += _spared_similarity_block(units, valid, first_valid, start, stop, threshold).sum(dim=2)
    count = valid.sum(dim=-1).clamp_min(1)[:, None, None]
    mean = (column_sums / count).masked_fill(~valid[:, None, :], float("-inf"))
    return mean.softmax(dim=-1).nan_to_num(0.0)
