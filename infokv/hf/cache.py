"""The only module that touches transformers' cache internals.

A :class:`KVState` is a transformers ``DynamicCache`` plus, per layer, a boolean mask of the
cached entries that queries may attend to. Entries are masked when they are left padding or
filler (rows of one batch keep different numbers of tokens, so shorter rows are padded with
masked entries). Layers may hold different numbers of entries (PyramidKV budgets). Sliding-window
layers (:func:`attention_windows`) keep every entry; their queries attend only the window.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from infokv.hf.shared_prefix import SharedPrefix, padded_length
from infokv.kernels.prefix import ValidPrefix, valid_prefix


def cache_argument_name(model: PreTrainedModel) -> str:
    """The cache argument of ``model.forward``: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    return _cache_argument_name(type(model))


@functools.cache
def _cache_argument_name(model_class: type) -> str:
    # Once per class: inspecting the signature at every decoding step would cost host time per step.
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


LAYER_TYPES = ("full_attention", "sliding_attention")
"""Layer types (``config.layer_types``) whose caches we hold and attend."""


def attention_windows(model: PreTrainedModel) -> list[int | None]:
    """Per decoder layer, the sliding window its queries attend (``None`` for full attention), or a one-line
    error naming a layer type we cannot attend (linear attention, Mamba, chunked attention, ...).

    With ``config.layer_types`` (Gemma-2/3, Qwen2/3, ...) ``sliding_attention`` layers use
    ``config.sliding_window``; without it (Llama, Mistral, Phi-3) ``config.sliding_window``, if set, applies
    to every layer, as those models pass it to every layer's attention."""
    config = model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return [window] * config.num_hidden_layers
    unsupported = sorted({kind for kind in layer_types if kind not in LAYER_TYPES})
    if unsupported:
        raise ValueError(f"model has layer types {unsupported}; supported layer types: {list(LAYER_TYPES)}")
    return [window if kind == "sliding_attention" else None for kind in layer_types]


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into spare capacity instead of concatenating.

    ``DynamicLayer.update`` copies the whole layer at every decoding step (O(cache) per token, and
    R times that for a sweep of R rows); here a step writes only the new entries, and the buffer
    grows by 1/8 (at least 256 entries) when full. ``keys``/``values`` are views of the buffer.
    """

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None
    _fixed: FixedWrite | None = None

    def _owns_keys(self) -> bool:
        buffer = self._key_buffer
        return (
            buffer is not None
            and self.keys.data_ptr() == buffer.data_ptr()
            and self.keys.shape[:2] == buffer.shape[:2]
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._fixed is not None:
            return self._fixed.write(self._key_buffer, self._value_buffer, key_states, value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[-2] if self.keys.ndim == 4 else 0
        new = old + key_states.shape[-2]
        self.reserve(new, key_states, value_states)
        self._key_buffer[:, :, old:new] = key_states
        self._value_buffer[:, :, old:new] = value_states
        self.keys, self.values = self._key_buffer[:, :, :new], self._value_buffer[:, :, :new]
        return self.keys, self.values

    def reserve(self, entries: int, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        """Own buffers with room for ``entries`` entries (shaped like ``like_keys``/``like_values``), keeping
        the entries held; a new buffer gets :func:`growth_capacity` slots, so growth is amortised."""
        if self._owns_keys() and self._key_buffer.shape[-2] >= entries:
            return
        held = self.keys.shape[-2] if self.keys.ndim == 4 else 0
        batch, heads = like_keys.shape[:2]
        capacity = growth_capacity(entries)
        keys = like_keys.new_empty(batch, heads, capacity, like_keys.shape[-1])
        values = like_values.new_empty(batch, heads, capacity, like_values.shape[-1])
        if held:
            keys[:, :, :held] = self.keys
            values[:, :, :held] = self.values
        self.adopt(keys, values, held)

    def adopt(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> None:
        """Hold the first ``length`` entries of buffers whose spare capacity later steps append into."""
        self._key_buffer, self._value_buffer = key_buffer, value_buffer
        self.keys, self.values = key_buffer[:, :, :length], value_buffer[:, :, :length]


@dataclass
class FixedWrite:
    """Fixed-shape appends for one layer: the step's entry goes to slot ``length + step`` (``step`` a device
    scalar), its validity bit is set, and attention sees the whole buffer. Nothing depends on host values,
    so a decoding step can be captured once as a CUDA graph and replayed."""

    length: int
    step: torch.Tensor
    valid: torch.Tensor
    """(R, length + steps), or (R, H_kv, length + steps) per KV head: the entries attention may see, growing
    by one slot per step."""
    prefix: ValidPrefix | None = None
    """How the first ``length`` entries can be attended without a mask, if they can."""

    def write(
        self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slot = (self.step + self.length).reshape(1)
        width = self.valid.shape[-1]
        key_buffer, value_buffer = key_buffer[:, :, :width], value_buffer[:, :, :width]
        key_buffer.index_copy_(2, slot, keys)
        value_buffer.index_copy_(2, slot, values)
        self.valid.index_fill_(-1, slot, True)
        return key_buffer, value_buffer


def growth_capacity(entries: int) -> int:
    """Entries a :class:`GrowingLayer` buffer holding ``entries`` gets room for: 1/8 more, at least 256."""
    return entries + max(256, entries // 8)


def _sparse_masks(
    valid: list[torch.Tensor], dense: list[bool] | None, devices: list[torch.device]
) -> list[torch.Tensor | None]:
    """Per-layer validity on each layer's device, None where every entry is valid (``dense[l]`` when the
    caller knows it on the host, else read from the device in one transfer for all layers)."""
    valid = [layer_valid.to(device) for layer_valid, device in zip(valid, devices, strict=True)]
    if dense is None:
        # One read of every layer's "all valid" flag: a read per layer would wait for the device each.
        dense = torch.stack([layer_valid.all() for layer_valid in valid]).tolist()
    return [None if whole else layer_valid for whole, layer_valid in zip(dense, valid, strict=True)]


def new_cache() -> DynamicCache:
    """An empty cache whose layers are :class:`GrowingLayer`."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def _entry_rows(states: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``states`` (B, H, T, d) as a (N, d) view of the same memory, and the row strides of its batch and
    head dimensions: entry (b, h, t) is row ``b · batch_stride + h · head_stride + t``. A view of a
    :class:`GrowingLayer` buffer qualifies as it is; anything else is made contiguous first."""
    dim = states.shape[-1]
    strides = states.stride()
    if strides[-1] != 1 or strides[-2] != dim or strides[0] % dim or strides[1] % dim:
        states = states.contiguous()
        strides = states.stride()
    last = sum((size - 1) * stride for size, stride in zip(states.shape[:3], strides[:3], strict=True))
    return states.as_strided((last // dim + 1, dim), (dim, 1)), strides[0] // dim, strides[1] // dim


def _gather_into_buffer(
    states: torch.Tensor, rows: torch.Tensor, entries: torch.Tensor, capacity: int
) -> torch.Tensor:
    """A (R, H, capacity, d) buffer whose first K slots of row r, head h hold entries ``entries[r, h]``
    (R, H, K) of source row ``rows[r]``; the spare slots hold copies of some entry (later steps
    overwrite them). One row-copying kernel, straight into the buffer: no temporary of the layer."""
    flat, batch_stride, head_stride = _entry_rows(states)
    heads = states.shape[1]
    index = entries.new_zeros(len(rows), heads, capacity)
    head_rows = torch.arange(heads, device=entries.device)[None, :, None] * head_stride
    index[:, :, : entries.shape[-1]] = rows[:, None, None] * batch_stride + head_rows + entries
    return flat.index_select(0, index.reshape(-1)).view(len(rows), heads, capacity, states.shape[-1])


def _copy_layer(
    cache: DynamicCache,
    index: int,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor,
    entries: torch.Tensor | None,
    room: int | None = None,
) -> None:
    """Make layer ``index`` of ``cache`` hold, for each new row r, source row ``rows[r]`` of the
    ``keys``/``values`` restricted to ``entries[r, h]`` per KV head (all entries when None), in buffers
    with room to grow (``room`` spare slots, else :func:`growth_capacity`'s), so the first decoding step
    appends instead of copying the layer again. A layer ``cache`` already has is replaced: its old buffers
    are freed here (unless referenced elsewhere), before the caller copies the next layer."""
    if entries is None:
        entries = torch.arange(keys.shape[2], device=keys.device).expand(len(rows), keys.shape[1], -1)
    length = entries.shape[-1]
    capacity = growth_capacity(length) if room is None else length + room
    key_buffer = _gather_into_buffer(keys, rows, entries, capacity)
    value_buffer = _gather_into_buffer(values, rows, entries, capacity)
    if index >= len(cache.layers):
        cache.update(keys[:1, :, :0], values[:1, :, :0], index)
    cache.layers[index].adopt(key_buffer, value_buffer, length)


def _per_row(counts: torch.Tensor) -> torch.Tensor:
    """Entry counts (B,) from counts per row (B,) or per (row, KV head) (B, H_kv), averaged over heads."""
    return counts if counts.ndim == 1 else torch.div(counts.sum(-1), counts.shape[-1], rounding_mode="floor")


@dataclass
class KVState:
    """A KV cache with per-layer validity masks.

    ``valid[l]`` is a (B, T_l) bool tensor (True = attendable) or ``None`` when every entry is valid; where
    the KV heads of a row keep different entries (head-wise budgets) it is (B, H_kv, T_l), and entries
    appended later are valid in every head.
    ``windows[l]`` is layer l's sliding window (``None``: full attention); a sliding layer holds every token
    fed, so the valid entries before a query are its predecessors in order (:func:`attention_windows`).
    With ``shared``, each row also attends its kept entries of a prompt cache shared by every row
    (:class:`infokv.hf.shared_prefix.SharedPrefix`); ``cache`` then holds only what the rows generated.
    """

    cache: DynamicCache
    valid: list[torch.Tensor | None] = field(default_factory=list)
    shared: SharedPrefix | None = None
    windows: list[int | None] | None = None

    def __post_init__(self) -> None:
        if self.windows is None:
            self.windows = [None] * len(self.valid)

    @classmethod
    def empty(cls, model: PreTrainedModel) -> KVState:
        windows = attention_windows(model)
        return cls(new_cache(), [None] * len(windows), windows=windows)

    @property
    def num_layers(self) -> int:
        return len(self.valid)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, each (B, H_kv, T_l, d)."""
        cache_layer = self.cache.layers[index]
        return cache_layer.keys, cache_layer.values

    def devices(self) -> list[torch.device]:
        """The device of each layer's entries."""
        return [self.layer(index)[0].device for index in range(self.num_layers)]

    def lengths(self) -> list[int]:
        return [self.layer(i)[0].shape[-2] for i in range(self.num_layers)]

    def extend_valid(self, new_valid: torch.Tensor | None, new_tokens: int, batch: int) -> None:
        """Record the validity of ``new_tokens`` entries about to be appended to every layer (layers with
        fixed-shape appends record it themselves, :class:`FixedWrite`)."""
        for index, current in enumerate(self.valid):
            if current is None and new_valid is None:
                continue
            if self._fixed_write(index) is not None:
                continue
            past = self.cache.layers[index].get_seq_length() if index < len(self.cache.layers) else 0
            device = new_valid.device if new_valid is not None else current.device
            if current is None:
                current = torch.ones(batch, past, dtype=torch.bool, device=device)
            if new_valid is None:
                new_valid = torch.ones(batch, new_tokens, dtype=torch.bool, device=device)
            appended = new_valid.to(device)
            if current.ndim == 3:
                appended = appended[:, None, :].expand(-1, current.shape[1], -1)
            self.valid[index] = torch.cat([current, appended], dim=-1)

    def gather(
        self,
        rows: torch.Tensor,
        keep: list[torch.Tensor],
        valid: list[torch.Tensor],
        dense: list[bool] | None = None,
    ) -> KVState:
        """A new state: row r holds, per layer and KV head, the entries ``keep[l][r, h]`` of row ``rows[r]``.

        ``keep[l]`` is (R, H_kv, K_l) with indices into this state's layer l; ``valid[l]`` is (R, K_l), or
        (R, H_kv, K_l) where the heads of a row keep different numbers of entries.
        ``dense[l]`` says whether ``valid[l]`` is all True, when the caller knows it on the host (else it is
        read from the device). This state is left unchanged, so one full cache can be compressed many ways.
        """
        cache = new_cache()
        for index in range(self.num_layers):
            keys, values = self.layer(index)
            _copy_layer(cache, index, keys, values, rows.to(keys.device), keep[index].to(keys.device))
        return KVState(cache, _sparse_masks(valid, dense, self.devices()), windows=self.windows)

    def compact(self, keep: list[torch.Tensor], valid: list[torch.Tensor], room: int) -> None:
        """Keep, in every row r, layer l and KV head h, only the entries ``keep[l][r, h]`` (R, H_kv, K_l),
        with validity ``valid[l]`` (R, K_l), and room for ``room`` appended entries before buffers grow.

        In place and one layer at a time: a layer's new buffers are filled from its old ones, which are
        freed before the next layer is copied, so the compressed cache never coexists with the whole
        uncompressed one, only with one of its layers (the caller must hold no other reference to them).
        """
        for index in range(self.num_layers):
            keys, values = self.layer(index)
            rows = torch.arange(keys.shape[0], device=keys.device)
            _copy_layer(self.cache, index, keys, values, rows, keep[index].to(keys.device), room)
            del keys, values
        self.valid = _sparse_masks(valid, None, self.devices())

    def select_rows(self, rows: torch.Tensor) -> KVState:
        """A new state holding only batch rows ``rows`` (1-D index tensor)."""
        cache = new_cache()
        for index in range(self.num_layers):
            keys, values = self.layer(index)
            _copy_layer(cache, index, keys, values, rows.to(keys.device), None)
        shared = None if self.shared is None else self.shared.select_rows(rows)
        valid = [None if valid is None else valid[rows] for valid in self.valid]
        return KVState(cache, valid, shared, self.windows)

    def share_prompt(self, rows: torch.Tensor, keep: list[torch.Tensor]) -> KVState:
        """A state of R rows that attend entries ``keep[l]`` (R, H_kv, T_l) of this state's rows ``rows``
        (R,) in place, and cache what they generate apart (:class:`infokv.hf.shared_prefix.SharedPrefix`).
        On CUDA this state's buffers are padded with zeros to what the split attention reads."""
        keys, values = [], []
        for index in range(self.num_layers):
            layer = self.cache.layers[index]
            length = layer.keys.shape[2]
            if layer.keys.is_cuda:
                padded = padded_length(length)
                layer.reserve(padded, layer.keys, layer.values)
                layer._key_buffer[:, :, length:padded].zero_()
                layer._value_buffer[:, :, length:padded].zero_()
            keys.append(layer.keys)
            values.append(layer.values)
        generated = new_cache()
        device = keys[0].device
        nothing = torch.zeros(len(rows), keys[0].shape[1], 0, dtype=torch.long, device=device)
        for index in range(self.num_layers):
            _copy_layer(generated, index, keys[index], values[index], rows.to(device), nothing)
        shared = SharedPrefix(keys, values, keep, rows.cpu())
        return KVState(generated, [None] * self.num_layers, shared, self.windows)

    def fix_shapes(self, steps: int, step: torch.Tensor) -> None:
        """Switch to fixed-shape appends (:class:`FixedWrite`) for up to ``steps`` steps, counted by the
        device scalar ``step``: buffers get room for them and ``valid[l]`` covers length + ``steps``."""
        for index in range(self.num_layers):
            layer = self.cache.layers[index]
            keys, values = layer.keys, layer.values
            batch, length = keys.shape[0], keys.shape[2]
            width = length + steps
            layer.reserve(width, keys, values)
            # Unwritten slots are attended under a False mask: zero them, as 0 · NaN would still be NaN.
            layer._key_buffer[:, :, length:width].zero_()
            layer._value_buffer[:, :, length:width].zero_()
            current = self.valid_mask(index)
            valid = torch.zeros(*current.shape[:-1], width, dtype=torch.bool, device=keys.device)
            valid[..., :length] = current
            # Per-head masks are attended under the mask, never as one valid run per row.
            prefix = None if current.ndim == 3 else valid_prefix(self.valid[index], batch, length)
            layer._fixed = FixedWrite(length, step, valid, prefix)
            self.valid[index] = valid

    def _fixed_write(self, index: int) -> FixedWrite | None:
        layers = self.cache.layers
        return getattr(layers[index], "_fixed", None) if index < len(layers) else None

    def rewind_fixed_steps(self) -> None:
        """Forget the fixed-shape steps written so far: their slots are no longer attended."""
        for index in range(self.num_layers):
            fixed = self._fixed_write(index)
            fixed.valid[..., fixed.length :] = False

    def valid_prefix(self, index: int) -> ValidPrefix | None:
        """In fixed-shape mode, how layer ``index``'s entries before the steps' slots can be attended
        without a mask (:class:`ValidPrefix`); None otherwise, or when they cannot."""
        fixed = self._fixed_write(index)
        return fixed.prefix if fixed is not None else None

    def unfix_shapes(self, steps: int) -> None:
        """Back to growing appends after ``steps`` fixed-shape steps."""
        for index in range(self.num_layers):
            layer = self.cache.layers[index]
            fixed, layer._fixed = layer._fixed, None
            length = fixed.length + steps
            layer.adopt(layer._key_buffer, layer._value_buffer, length)
            valid = fixed.valid[..., :length]
            self.valid[index] = None if bool(valid.all()) else valid

    def valid_mask(self, index: int) -> torch.Tensor:
        """(B, T_l) (or per head (B, H_kv, T_l)) validity of layer ``index``, all True where nothing is
        masked."""
        valid = self.valid[index]
        if valid is not None:
            return valid
        keys = self.layer(index)[0]
        return torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool, device=keys.device)

    def valid_counts(self) -> torch.Tensor:
        """(L, B) attendable entries per layer and row (per KV head, averaged over heads and rounded down
        where the heads keep different numbers)."""
        counts = torch.stack([_per_row(self.valid_mask(index).sum(-1)) for index in range(self.num_layers)])
        return counts if self.shared is None else counts + self.shared.counts().to(counts.device)

    def nbytes(self) -> int:
        """Bytes held by keys and values over all layers (and by a shared prompt cache and its masks)."""
        total = 0 if self.shared is None else self.shared.nbytes()
        for index in range(self.num_layers):
            keys, values = self.layer(index)
            total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
        return total
