"""A sweep's compressed prompt caches as masks over the one full prompt cache they were selected from.

Every setting of a sweep keeps a subset of the same prefilled entries, at their original positions,
so attending a row's compressed cache is attending the full cache with the evicted entries masked.
Gathering each setting's entries into a cache of its own writes, and every decoding step then
reads, the prompt's keys and values once per setting (4.6 times the full cache for 7 methods at
budgets 0.2 and 0.4); here each step reads them once for all rows. Decoding row r attends prompt
row ``prompt_rows[r]`` under its mask ``keep[l][r, h]`` and, separately, the entries it generated
(a cache of its own); the two parts are merged by their log-normalisers:

    lse = log(e^{l₁} + e^{l₂}),    o = e^{l₁ − lse} · o₁ + e^{l₂ − lse} · o₂

The query heads of every row sharing a prompt row become queries of one attention over it, with the
masks as an additive bias, built once per layer. On CPU the flash kernel takes it. On CUDA,
memory-efficient attention does; it parallelises over (batch, head, 64 queries), so the prompt's keys
are split into :data:`SPLITS` parts, attended as a batch and merged the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPLITS = 16
"""Key parts of the prompt attended in parallel on CUDA (8 KV heads × 16 parts fill an H200's SMs)."""


@dataclass
class SharedPrefix:
    """Per layer: the full prompt cache (B, H_kv, T, d) and each decoding row's kept entries (R, H_kv, T).

    On CUDA every layer's buffers must hold :func:`padded_length` (T) finite entries (zeros past T).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    keep: list[torch.Tensor]
    prompt_rows: torch.Tensor
    """(R,) the prompt row each decoding row attends, on the host."""
    members: list[tuple[int, torch.Tensor]] = field(init=False)
    """(prompt row, the decoding rows attending it), read once here: never while a graph is captured."""
    _bias: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        device = self.keys[0].device
        rows = self.prompt_rows.unique().tolist()
        self.members = [(row, (self.prompt_rows == row).nonzero()[:, 0].to(device)) for row in rows]

    def counts(self) -> torch.Tensor:
        """(L, R) kept prompt entries per layer and row, per KV head (averaged over heads, rounded down)."""
        return torch.stack(
            [torch.div(keep.sum(dim=(1, 2)), keep.shape[1], rounding_mode="floor") for keep in self.keep]
        )

    def select_rows(self, rows: torch.Tensor) -> SharedPrefix:
        """The same prompt cache for decoding rows ``rows`` only."""
        keep = [layer_keep[rows] for layer_keep in self.keep]
        return SharedPrefix(self.keys, self.values, keep, self.prompt_rows[rows.cpu()])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *self.keep))

    def attend(self, layer: int, query: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 output (R, H_kv, g, d) and log-normaliser (R, H_kv, g) of one query per row (R, H_q, 1, d)
        over its kept prompt entries of ``layer``."""
        rows, query_heads, _, dim = query.shape
        kv_heads = self.keys[layer].shape[1]
        groups = query_heads // kv_heads
        output = query.new_empty(rows, kv_heads, groups, dim, dtype=torch.float32)
        lse = query.new_empty(rows, kv_heads, groups, dtype=torch.float32)
        for index, (prompt_row, members) in enumerate(self.members):
            count = len(members)
            # (n, H_q, 1, d) -> (1, H_kv, n·g, d): the rows' query heads become queries of their KV head.
            folded = query[members].reshape(count, kv_heads, groups, dim).transpose(0, 1)
            folded = folded.reshape(1, kv_heads, count * groups, dim)
            keys = self.keys[layer][prompt_row : prompt_row + 1]
            values = self.values[layer][prompt_row : prompt_row + 1]
            bias = self._bias.get((layer, index))
            if bias is None:
                bias = self._bias[(layer, index)] = _bias(self._mask(layer, members, groups), query)
            if query.is_cuda:
                part, part_lse = _split_attention(folded, keys, values, bias, scaling)
            else:
                part, part_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    folded, keys, values, 0.0, False, attn_mask=bias[0], scale=scaling
                )
            output[members] = part.reshape(kv_heads, count, groups, dim).transpose(0, 1)
            lse[members] = part_lse.reshape(kv_heads, count, groups).transpose(0, 1)
        return output, lse

    def _mask(self, layer: int, members: torch.Tensor, groups: int) -> torch.Tensor:
        """(1, H_kv, n·g, T) kept entries of the member rows, one row per folded query."""
        keep = self.keep[layer][members]  # (n, H_kv, T)
        expanded = keep.transpose(0, 1)[:, :, None].expand(-1, -1, groups, -1)
        return expanded.reshape(1, keep.shape[1], len(members) * groups, keep.shape[-1])


def _split_length(length: int) -> int:
    """Keys per part: ⌈length / SPLITS⌉ rounded up to 16 (the kernel's bias alignment)."""
    return -(-length // (SPLITS * 16)) * 16


def _bias(mask: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The additive bias of ``mask`` (1, H, M, T) for the device's kernel, and which parts keep anything:
    split on CUDA (:func:`_split_bias`); on CPU, for the flash kernel, 0 where kept and −inf elsewhere
    (every query keeps some entry, so no row is all −inf) in one part."""
    if query.is_cuda:
        return _split_bias(mask, query.dtype)
    return torch.zeros(mask.shape, dtype=query.dtype).masked_fill_(~mask, float("-inf")), None


def _split_bias(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(SPLITS, H, M, part) additive bias, 0 where kept and the dtype's lowest value elsewhere (finite, so a
    part with nothing kept gives finite outputs), and (SPLITS, H, M) whether a query keeps anything in a part:
    the kernel's log-normaliser of a part with nothing kept is not meaningful, so it is given no weight."""
    _, heads, queries, length = mask.shape
    part = _split_length(length)
    lowest = torch.finfo(dtype).min
    bias = torch.full((heads, queries, SPLITS * part), lowest, dtype=dtype, device=mask.device)
    bias[..., :length].masked_fill_(mask[0], 0.0)
    bias = bias.view(heads, queries, SPLITS, part).permute(2, 0, 1, 3).contiguous()
    return bias, (bias == 0).any(dim=-1)


def _split_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: tuple[torch.Tensor, torch.Tensor],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory-efficient attention of (1, H, M, d) queries over (1, H, ≥ SPLITS·part, d) keys in SPLITS
    parts at once (``bias`` from :func:`_split_bias`), merged: fp32 output (1, H, M, d) and log-normaliser
    (1, H, M)."""
    bias, kept = bias
    splits, heads, queries, part = bias.shape
    dim = keys.shape[-1]

    def parts(states: torch.Tensor) -> torch.Tensor:
        # (1, H, T', d) -> (SPLITS, H, part, d) without a copy: part s starts at entry s·part.
        return states.as_strided(
            (splits, heads, part, dim), (part * states.stride(2), states.stride(1), states.stride(2), 1)
        )

    output, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        query.expand(splits, -1, -1, -1), parts(keys), parts(values), bias, True, scale=scaling
    )[:2]
    lse = lse[..., :queries].masked_fill(~kept, float("-inf"))
    total = torch.logsumexp(lse, dim=0)
    weights = (lse - total).exp()[..., None]
    return (output.float() * weights).sum(dim=0, keepdim=True), total[None]


def padded_length(length: int) -> int:
    """Entries a prompt cache of ``length`` entries must hold (finite) for CUDA's split attention."""
    return SPLITS * _split_length(length)
