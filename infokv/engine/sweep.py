"""Prefill once, compress many ways, decode with true positions.

``generate_sweep`` is the workhorse: one chunked prefill per batch captures every signal the
requested methods need; each (method, budget) setting then selects its kept tokens from the same
full cache, and all settings decode together as one batch whose rows keep different numbers of
tokens (shorter rows are filled with masked entries). A sweep therefore costs one prefill per
sample plus one batched decode, not one prefill and decode per setting. With ``fidelity`` every
setting is also compared with the full cache by teacher forcing the full cache's answer
(:mod:`infokv.engine.fidelity`): through its cache when compressed at prefill, through a second, forced
decode when compressed while decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from infokv import methods
from infokv.engine.capture import Captured, prefill
from infokv.engine.config_values import boolean, integer, optional_integer
from infokv.engine.decode_signals import DecodeTracker, entries_from_prefill
from infokv.engine.decoding import DecodeBatch, DecodeCompression, decode
from infokv.engine.fidelity import ForcedSampler, measure
from infokv.engine.sampling import Sampler
from infokv.engine.views import PrefillView
from infokv.hf.cache import KVState
from infokv.hf.forward import forward_hidden
from infokv.hf.hooks import check_attention_implementation, check_attention_layers
from infokv.hf.logit_head import LogitHead
from infokv.methods.base import Method
from infokv.methods.budget import Budget
from infokv.methods.selection import Selection, combine_groups, forced_mask, rank, take_top

Prompt = str | tuple[str, str]
COMPRESS_MODES = ("prompt", "context_only")


@dataclass(frozen=True)
class Setting:
    """One configuration of a sweep: a prefill (method, budget) and an optional decoding compression."""

    method: Method
    budget: Budget
    decode: DecodeCompression | None = None

    @classmethod
    def build(
        cls,
        method: str | Method,
        budget: float | int | str | Budget,
        decode_method: str | Method | None = None,
        decode_ratio: float = 0.25,
        compress_every: int = 1024,
        compress_prompt: bool = False,
    ) -> Setting:
        resolved = methods.get_for_phase(method, "prefill")
        parsed = Budget.parse(budget)
        if resolved.evicts:
            parsed.check_floor(resolved.floor)
        else:
            parsed = Budget(ratio=1.0)  # the full cache is the same at every budget
        decode = None
        if decode_method is not None:
            decode = DecodeCompression.build(decode_method, decode_ratio, compress_every, compress_prompt)
            decode = decode if decode.method.evicts else None
        return cls(resolved, parsed, decode)

    def label(self) -> str:
        prefill = f"{self.method.label()}@{self.budget.label()}"
        return prefill if self.decode is None else f"{prefill}+{self.decode.label()}"


@dataclass
class Completion:
    """A generated continuation and how it was produced."""

    text: str
    token_ids: list[int]
    method: str
    budget: str
    stats: dict[str, object] = field(default_factory=dict)
    fidelity: dict[str, object] = field(default_factory=dict)
    """Teacher-forced fidelity to the full cache (:mod:`infokv.engine.fidelity`); empty when not measured."""


@dataclass
class Tokenized:
    """Token ids of the compressed part (context) and of the part fed after compression (question)."""

    context: list[int]
    question: list[int]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, first: bool) -> list[int]:
    """Token ids; special tokens are added to the first part unless it already starts with BOS."""
    bos = tokenizer.bos_token
    special = first and not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], compress: str) -> list[Tokenized]:
    """Split and tokenize prompts: ``prompt`` compresses everything, ``context_only`` the first element."""
    if compress not in COMPRESS_MODES:
        raise ValueError(f"compress {compress!r} is not one of {COMPRESS_MODES}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings or (context, question) pairs")
    tokenized = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if compress == "context_only":
                raise ValueError(
                    f"prompt {index} is a string; compress='context_only' needs (context, question)"
                )
            tokenized.append(Tokenized(_encode(tokenizer, prompt, True), []))
        elif isinstance(prompt, tuple) and len(prompt) == 2 and all(isinstance(part, str) for part in prompt):
            context, question = prompt
            if compress == "context_only" and not context:
                raise ValueError(
                    f"prompt {index} has an empty context; compress='context_only' compresses the context, "
                    "so give it text or use compress='prompt'"
                )
            if compress == "prompt":
                tokenized.append(Tokenized(_encode(tokenizer, context + question, True), []))
            else:
                tokenized.append(
                    Tokenized(_encode(tokenizer, context, True), _encode(tokenizer, question, False))
                )
        else:
            raise ValueError(
                f"prompt {index} is a {type(prompt).__name__}; use a string or (context, question)"
            )
    return tokenized


def context_limit(model: PreTrainedModel) -> int:
    text_config = model.config.get_text_config(decoder=True)
    return int(getattr(text_config, "max_position_embeddings", 0) or 0)


def check_lengths(model: PreTrainedModel, tokenized: Sequence[Tokenized], max_new_tokens: int) -> None:
    """One-line error if a prompt plus its generation would exceed the model's context, or if the
    tokenizer gives ids the model has no embedding for (a tokenizer of another model)."""
    integer("max_new_tokens", max_new_tokens, 1)
    limit = context_limit(model)
    vocabulary = model.get_input_embeddings().num_embeddings
    for index, item in enumerate(tokenized):
        length = len(item.context) + len(item.question)
        if length == 0:
            raise ValueError(f"prompt {index} is empty after tokenization")
        if max(item.context + item.question) >= vocabulary:
            raise ValueError(
                f"prompt {index} has token id {max(item.context + item.question)} but the model embeds "
                f"{vocabulary} ids; use the model's own tokenizer"
            )
        if limit and length + max_new_tokens > limit:
            raise ValueError(
                f"prompt {index} has {length} tokens + max_new_tokens {max_new_tokens}"
                f" > the model's context {limit}"
            )


def check_model(model: PreTrainedModel) -> None:
    """A transformers causal LM whose attention and layers we can compress, else a one-line error."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"model is a {type(model).__name__}; expected a transformers model (infokv.load_model)"
        )
    check_attention_layers(model)
    check_attention_implementation(model)


def check_input_ids(model: PreTrainedModel, input_ids: torch.Tensor) -> None:
    """(batch, tokens) integer ids, at least one token, each an id the model embeds: else one line."""
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)}; expected (batch, tokens) with tokens >= 1"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids has dtype {input_ids.dtype}; expected integer token ids (torch.long)")
    vocabulary = model.get_input_embeddings().num_embeddings
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocabulary:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids holds token id {bad}; the model embeds ids 0..{vocabulary - 1}")


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and validity mask, left-padded."""
    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            valid[row, width - len(sequence) :] = True
    return ids.to(device), valid.to(device)


def layer_ranking(view: PrefillView, method: Method) -> torch.Tensor:
    """Entry indices (B, H_kv, T) of one layer from best to worst by ``method``'s scores. Scores do not
    depend on the budget, so one ranking serves every budget of a method."""

    def ranking() -> torch.Tensor:
        forced = view.across_layers(
            ("forced", method.sink, method.window),
            lambda: forced_mask(view.valid, method.sink, method.window),
        )
        return rank(method.score(view), view.valid, forced)

    return view.memoised(("ranking", method), ranking)


def whole_layer_ranking(view: PrefillView) -> torch.Tensor:
    """Entry indices (B, H_kv, T) with every valid entry first, in order: a layer that keeps them all."""
    return view.across_layers(
        ("whole layer",),
        lambda: rank(view.keys.new_zeros(view.keys.shape[:3]), view.valid, torch.zeros_like(view.valid)),
    )


def compress_settings(
    state: KVState, captured: Captured, settings: Sequence[Setting], share: bool = False
) -> tuple[KVState, list[list[Selection]]]:
    """Compress the full cache once per setting; rows of the result are setting-major (r = c·B + b).

    Each layer's kept entries of every setting come from one selection over the settings' stacked
    rankings, as wide as the widest setting there (narrower rows get masked filler in front), so
    a sweep costs one selection per layer, not one per setting. The rows' caches are gathered copies,
    or with ``share`` masks over ``state`` itself (:meth:`KVState.share_prompt`), which is cheaper when
    the settings together keep more entries than the full cache holds (:func:`shares_prompt`).

    Sliding-window layers (``state.windows``) are not compressed: every setting keeps all their entries,
    as their window already bounds what queries attend, and their attention under the window mask is then
    exactly the model's; only full-attention layers are scored and cut to the budget. Their rows never
    share the prompt cache, whose fixed masks cannot follow a window that moves with each new token.
    With a head-wise setting (:attr:`Method.head_wise`) the counts are per (row, KV head)
    (:meth:`Method.head_keeps`), each layer's width is read from the device, and validity is per head.
    """
    layers = state.num_layers
    batch = captured.valid.shape[0]
    # Keep counts are computed on the host and sent to the device in one copy: reading a selection's
    # width from device counts, or copying counts one at a time, would each wait for the device's queue.
    # Nothing here waits for the device, so on a GPU the compression is queued while the prefill runs.
    keeps = torch.stack(
        [
            torch.stack(setting.method.keep_counts(setting.budget, captured.host_lengths, layers))
            for setting in settings
        ]
    )
    sliding = [window is not None for window in state.windows]
    keeps[:, torch.tensor(sliding)] = captured.host_lengths
    share = share and not any(sliding)
    widest = keeps.amax(dim=(0, 2))
    widths = widest.tolist()
    dense = (keeps == widest[None, :, None]).all(dim=2).all(dim=0).tolist()  # every row keeps the width
    device_keeps = keeps.to(captured.valid.device)
    per_setting: list[list[Selection]] = [[] for _ in settings]
    indices, valid = [], []
    shared: dict = {}
    head_wise = any(setting.method.head_wise for setting in settings)
    for layer in range(layers):
        view = PrefillView(state, captured, layer, memo={}, shared=shared)
        if sliding[layer]:
            rankings = whole_layer_ranking(view).repeat(len(settings), 1, 1)
        else:
            rankings = torch.cat([layer_ranking(view, setting.method) for setting in settings])
        keep, width = device_keeps[:, layer].reshape(-1), widths[layer]
        if head_wise and not sliding[layer]:  # the widest head's count is known on the device only
            per_setting_keeps = zip(settings, device_keeps[:, layer], strict=True)
            keep = torch.cat([setting.method.head_keeps(view, k) for setting, k in per_setting_keeps])
            widest_head = keep.max()
            width, all_valid = torch.stack([widest_head, (keep == widest_head).all()]).tolist()
            dense[layer] = bool(all_valid)
        selected = take_top(rankings, keep, width)
        indices.append(selected.indices)
        valid.append(selected.valid)
        for index, selections in enumerate(per_setting):
            rows = slice(index * batch, (index + 1) * batch)
            selections.append(Selection(selected.indices[rows], selected.valid[rows]))
    rows = torch.arange(batch, device=captured.valid.device).repeat(len(settings))
    if share:
        return state.share_prompt(rows, kept_masks(indices, valid, state.lengths())), per_setting
    return state.gather(rows, indices, valid, dense), per_setting


def kept_masks(
    indices: list[torch.Tensor], valid: list[torch.Tensor], lengths: list[int]
) -> list[torch.Tensor]:
    """Per layer, (R, H_kv, T_l) True at the kept entries ``indices[l]`` (R, H_kv, K) where ``valid[l]``
    (R, K) or (R, H_kv, K)."""
    masks = []
    for layer_indices, layer_valid, length in zip(indices, valid, lengths, strict=True):
        rows, heads, _ = layer_indices.shape
        mask = torch.zeros(rows, heads, length + 1, dtype=torch.bool, device=layer_indices.device)
        # Filler slots are sent to the extra column, which is dropped.
        per_head = layer_valid if layer_valid.ndim == 3 else layer_valid[:, None, :]
        target = torch.where(per_head, layer_indices, length)
        masks.append(mask.scatter_(2, target, True)[..., :length])
    return masks


def kept_entries(settings: Sequence[Setting], lengths: torch.Tensor, layers: int) -> list[int]:
    """Entries each setting keeps over all layers and rows of prompts of ``lengths`` (host) tokens."""
    return [
        sum(int(counts.sum()) for counts in setting.method.keep_counts(setting.budget, lengths, layers))
        for setting in settings
    ]


def shares_prompt(kept: Sequence[int], lengths: torch.Tensor, layers: int) -> bool:
    """Whether settings keeping ``kept`` entries each (:func:`kept_entries`) should attend masks over one
    prompt cache (:mod:`infokv.hf.shared_prefix`): when they keep more entries together than it holds, so
    decoding reads less from it than from copies, and compressing writes no copies."""
    return sum(kept) > int(lengths.sum()) * layers


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(value) for value in source)
    return sorted(ids)


def forward_tokens(
    model: PreTrainedModel,
    state: KVState,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append (R, q) tokens at explicit ``positions`` to the cache; logits (R, V) at the last one."""
    hidden = forward_hidden(model, state, input_ids, positions, valid)
    return LogitHead.of(model)(hidden[:, -1]).float()


def _trim(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:index]
    return tokens


def _seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One seed per prompt: ``seed`` for all, or a sequence of one integer per prompt."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [seed] * count
    if isinstance(seed, str | bytes) or not isinstance(seed, Sequence):
        raise TypeError(f"seed {seed!r} is not allowed; use an integer or a list of one integer per prompt")
    seeds = [integer("seed", value) for value in seed]
    if len(seeds) != count:
        raise ValueError(f"seed has {len(seeds)} values for {count} prompts; give one int or one per prompt")
    return seeds


REASONING_PROTOCOL = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768}
"""Sampling protocol of the long-decoding scenario (reasoning models)."""

SettingSpec = tuple | Setting


def build_settings(
    settings: Sequence[SettingSpec], compress_every: int = 1024, compress_prompt: bool = False
) -> list[Setting]:
    """Settings from ``(method, budget)`` or ``(method, budget, decode_method, decode_ratio)`` tuples."""
    if isinstance(settings, str | tuple) or not settings:
        raise ValueError(
            "settings must be a non-empty list of (method, budget[, decode_method, decode_ratio])"
        )
    built: list[Setting] = []
    for spec in settings:
        if isinstance(spec, Setting):
            built.append(spec)
        elif isinstance(spec, tuple | list) and len(spec) in (2, 4):
            built.append(Setting.build(*spec, compress_every=compress_every, compress_prompt=compress_prompt))
        else:
            raise ValueError(
                f"setting {spec!r} is not (method, budget) or (method, budget, decode_method, ratio)"
            )
    head_wise = [setting.label() for setting in built if setting.method.head_wise]
    decoding = [setting.label() for setting in built if setting.decode is not None]
    if head_wise and decoding:
        raise ValueError(
            f"settings {head_wise} keep different entries per KV head, which compression while decoding "
            f"({decoding}) does not support; run them in separate sweeps"
        )
    return built


def generate_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: Sequence[SettingSpec],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    compress: str = "prompt",
    batch_size: int | None = None,
    prefill_chunk: int = 4096,
    samples: int = 1,
    compress_every: int = 1024,
    compress_prompt: bool = False,
    stop_at_eos: bool = True,
    cuda_graphs: bool = True,
    fidelity: bool = True,
    fidelity_tokens: int | None = None,
) -> list[list[Completion]]:
    """Completions for every setting and prompt: ``result[setting][prompt · samples + sample]``.

    Each batch of prompts is prefilled once; every setting compresses the same full cache and all
    settings decode together. ``samples`` > 1 draws that many completions per prompt, sample i
    with seed ``seed + i`` (or ``seed[prompt] + i``). ``cuda_graphs`` lets decoding steps replay a captured
    CUDA graph between compressions (:mod:`infokv.engine.graphed_decode`; no effect off CUDA).

    ``fidelity`` fills :attr:`Completion.fidelity` of every setting without decoding compression: the full
    cache's answer (same prompt and draw) is teacher-forced through the setting's compressed cache
    (:mod:`infokv.engine.fidelity`). The reference is the sweep's full setting; without one, a full setting
    (:func:`reference_setting`) is decoded as well and its completions are not returned. Settings that
    compress while decoding change their caches along the generation: they and the full setting are decoded
    again from their compressed prompt caches, every row fed the full cache's answer
    (:class:`infokv.engine.fidelity.ForcedSampler`), compressing at the same steps as a real run.
    ``fidelity_tokens`` limits the teacher-forced answer to its first tokens (None: all of it).
    Cost: one forward of the answer tokens for the rows compressed at prefill, and one more decode of up to
    ``fidelity_tokens`` steps for the rows compressed while decoding and the full rows; the batch's full
    prompt cache is kept while decoding (it is anyway when rows share it, :func:`shares_prompt`), and the
    measured rows' caches are gathered from it again afterwards, after which it is freed.
    """
    resolved = build_settings(settings, compress_every, compress_prompt)
    tokenized = tokenize(tokenizer, prompts, compress)
    check_lengths(model, tokenized, max_new_tokens)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples {samples!r} must be an integer >= 1")
    seeds = [base + index for base in _seeds(seed, len(tokenized)) for index in range(samples)]
    tokenized = [item for item in tokenized for _ in range(samples)]
    Sampler(temperature, top_p, [], torch.device("cpu"))
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk {prefill_chunk} must be >= 1")
    if not isinstance(cuda_graphs, bool):
        raise ValueError(f"cuda_graphs {cuda_graphs!r} must be true or false")
    boolean("stop_at_eos", stop_at_eos)
    boolean("fidelity", fidelity)
    optional_integer("fidelity_tokens", fidelity_tokens, 1)
    check_model(model)
    if batch_size is not None:
        integer("batch_size", batch_size, 1)
    unique = list(dict.fromkeys(resolved))  # equal settings (e.g. full at two budgets) are decoded once
    if fidelity and not any(is_reference(setting) for setting in unique):
        unique.append(reference_setting())  # decoded for the reference answer, never returned
    step = batch_size or len(tokenized)
    options = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "prefill_chunk": prefill_chunk,
        "stop_at_eos": stop_at_eos,
        "cuda_graphs": cuda_graphs,
        "fidelity": fidelity,
        "fidelity_tokens": fidelity_tokens,
    }
    results: list[list[Completion]] = [[] for _ in unique]
    for start in range(0, len(tokenized), step):
        batch = tokenized[start : start + step]
        outputs = _run_batch(model, tokenizer, batch, unique, seeds[start : start + step], **options)
        for index, completions in enumerate(outputs):
            results[index].extend(completions)
    return [results[unique.index(setting)] for setting in resolved]


def is_reference(setting: Setting) -> bool:
    """Whether ``setting`` keeps the full cache throughout: the fidelity reference."""
    return not setting.method.evicts and setting.decode is None


def reference_setting() -> Setting:
    """The full cache, added to a sweep that measures fidelity but has no full setting of its own."""
    return Setting.build("full", 1.0)


def _measured(settings: Sequence[Setting]) -> list[int]:
    """Indices of the settings whose fidelity is measured through their prompt caches: those compressed at
    prefill only."""
    return [index for index, setting in enumerate(settings) if setting.decode is None]


def _decode_measured(settings: Sequence[Setting]) -> list[int]:
    """Indices of the settings whose fidelity is measured by a teacher-forced decode: those compressed
    while decoding."""
    return [index for index, setting in enumerate(settings) if setting.decode is not None]


def _requirements(settings: Sequence[Setting]) -> tuple[set, set]:
    """Signals to capture at prefill, and while decoding."""
    prefill_needs = set().union(*(setting.method.requirements() for setting in settings))
    decode_needs = set().union(*(s.decode.method.requirements() for s in settings if s.decode is not None))
    if any(s.decode is not None and s.decode.compress_prompt for s in settings):
        prefill_needs |= decode_needs
    return prefill_needs, decode_needs


def _run_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Tokenized],
    settings: Sequence[Setting],
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    prefill_chunk: int,
    stop_at_eos: bool,
    cuda_graphs: bool,
    fidelity: bool,
    fidelity_tokens: int | None,
) -> list[list[Completion]]:
    """One batch through every setting: prefill once, compress per setting, decode all rows together, then
    with ``fidelity`` teacher-force the full setting's answers (their first ``fidelity_tokens``) through the
    measured settings' caches, decoding again those compressed while decoding.

    Settings run widest first (:func:`widest_first`) and their completions come back in the given order."""
    device = model.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefill_needs, decode_needs = _requirements(settings)
    input_ids, valid = left_pad([item.context for item in batch], pad_id, device)
    clock = time.perf_counter()
    state, captured, last_logits = prefill(model, input_ids, valid, prefill_needs, prefill_chunk)
    prefill_seconds = time.perf_counter() - clock
    order, share = _row_plan(settings, batch, captured, state.num_layers)
    settings = [settings[index] for index in order]
    compressions = [setting.decode for setting in settings]
    rows = torch.arange(len(batch), device=device).repeat(len(settings))
    clock = time.perf_counter()
    caches = _compress_copies(model, state, captured, settings, share, rows, decode_needs)
    selections = caches.selections
    measured = _measured(settings) if fidelity else []
    decode_measured = _decode_measured(settings) if fidelity else []
    prompt_state = state if measured or decode_measured else None  # measured caches are rebuilt from it
    del state
    compress_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    stop_ids = stop_token_ids(model, tokenizer)
    decoding = DecodeOptions(max_new_tokens, temperature, top_p, stop_ids, stop_at_eos, cuda_graphs)
    tokens, row_stats = _decode_rows(
        model,
        caches,
        decode_needs,
        captured,
        batch,
        last_logits,
        compressions,
        seeds,
        decoding,
        pad_id,
    )
    decode_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    fidelities: dict[int, list[dict[str, object]]] = {}
    if decode_measured:
        fidelities = _decode_fidelity(
            model,
            prompt_state,
            captured,
            batch,
            settings,
            tokens,
            seeds,
            last_logits,
            decoding,
            decode_needs,
            pad_id,
            fidelity_tokens,
        )
    if measured:
        forced_state = _measured_rows(prompt_state, selections, measured, len(batch))
        del prompt_state
        fidelities |= _fidelity(
            model,
            forced_state,
            batch,
            settings,
            measured,
            tokens,
            captured,
            last_logits,
            pad_id,
            fidelity_tokens,
        )
    shared = {
        "batch_size": len(batch),
        "settings": len(settings),
        "prefill_seconds": prefill_seconds,
        "compress_seconds": compress_seconds,
        "decode_seconds": decode_seconds,
        "fidelity_seconds": time.perf_counter() - clock,
    }
    results = [
        _completions(
            tokenizer,
            batch,
            setting,
            selections[index],
            tokens,
            row_stats,
            index,
            seeds,
            stop_ids,
            shared,
            fidelities.get(index),
        )
        for index, setting in enumerate(settings)
    ]
    return [results[order.index(index)] for index in range(len(order))]


def _row_plan(
    settings: Sequence[Setting], batch: Sequence[Tokenized], captured: Captured, layers: int
) -> tuple[list[int], bool]:
    """The order of the settings' rows (widest first) and whether they can share the prompt cache: rows
    compressed while decoding need caches of their own, and question tokens need more than one query."""
    kept = kept_entries(settings, captured.host_lengths, layers)
    share = (
        all(setting.decode is None for setting in settings)
        and not any(item.question for item in batch)
        and shares_prompt(kept, captured.host_lengths, layers)
    )
    return widest_first(kept), share


@dataclass(frozen=True)
class DecodeOptions:
    """How every row of a batch decodes."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop_ids: Sequence[int]
    stop_at_eos: bool
    cuda_graphs: bool


def _decode_rows(
    model: PreTrainedModel,
    caches: RowCaches,
    decode_needs: set,
    captured: Captured,
    batch: Sequence[Tokenized],
    last_logits: torch.Tensor,
    compressions: Sequence[DecodeCompression | None],
    seeds: Sequence[int],
    options: DecodeOptions,
    pad_id: int,
    sampler: Sampler | None = None,
) -> tuple[list[list[int]], list]:
    """Every (setting, prompt) row from its compressed cache: the question tokens where there are any,
    then all rows decode together, each setting's rows compressed while decoding by its own method. The
    tokens come from ``sampler`` (by default one of ``options`` and ``seeds``).

    The rows' caches are taken from ``caches``: from then on only the decoding batch holds them, so a
    cache the decoding replaces (rows leaving, compression) is freed at once."""
    copies = len(compressions)
    device = model.device
    tracker = DecodeTracker(decode_needs, caches.layers, captured.scaling)
    rows_state = caches.take_state()
    with torch.inference_mode():
        logits, positions, prompt_lengths = _read_questions(
            model, rows_state, tracker, batch, captured.lengths.repeat(copies), last_logits, copies, pad_id
        )
        if sampler is None:
            sampler = Sampler(options.temperature, options.top_p, list(seeds) * copies, device)
        groups = torch.arange(copies, device=device).repeat_interleave(len(batch))
        rows = list(range(copies * len(batch)))
        decode_batch = DecodeBatch(rows_state, caches.layers, positions, prompt_lengths, groups, rows)
        del rows_state
        return decode(
            model,
            decode_batch,
            tracker,
            compressions,
            logits,
            options.max_new_tokens,
            sampler,
            options.stop_ids,
            options.stop_at_eos,
            options.cuda_graphs,
        )


@dataclass
class RowCaches:
    """The compressed cache of every (setting, prompt) row, each setting's selections, and the per-entry
    signals of rows compressed while decoding (empty when none is)."""

    state: KVState | None
    selections: list[list[Selection]]
    layers: list

    def take_state(self) -> KVState:
        """The rows' cache, no longer held here: whoever takes it decides how long it lives."""
        state, self.state = self.state, None
        return state


def _compress_copies(
    model: PreTrainedModel,
    state: KVState,
    captured: Captured,
    settings: Sequence[Setting],
    share: bool,
    rows: torch.Tensor,
    decode_needs: set,
) -> RowCaches:
    """One cache row per (setting, prompt), and the per-entry signals of rows compressed while decoding."""
    with torch.inference_mode():
        rows_state, selections = compress_settings(state, captured, settings, share)
        layers = []
        if any(setting.decode is not None for setting in settings):  # entries are tracked
            indices = combine_groups(selections)[0]
            query_heads = model.config.get_text_config(decoder=True).num_attention_heads
            layers = entries_from_prefill(captured, rows, indices, decode_needs, query_heads)
    return RowCaches(rows_state, selections, layers)


def _measured_rows(
    state: KVState, selections: Sequence[list[Selection]], measured: Sequence[int], batch: int
) -> KVState:
    """Gathered copies of the compressed prompt caches of settings ``measured``, rows setting-major."""
    indices, valid = combine_groups([selections[index] for index in measured])
    rows = torch.arange(batch, device=indices[0].device).repeat(len(measured))
    with torch.inference_mode():
        return state.gather(rows, indices, valid)


def _fidelity(
    model: PreTrainedModel,
    state: KVState,
    batch: Sequence[Tokenized],
    settings: Sequence[Setting],
    measured: Sequence[int],
    tokens: Sequence[list[int]],
    captured: Captured,
    last_logits: torch.Tensor,
    pad_id: int,
    limit: int | None,
) -> dict[int, list[dict[str, object]]]:
    """Fidelity records of the measured settings (index → one per prompt) from their caches ``state``
    (:func:`_measured_rows`): questions are fed as before decoding, then the full setting's answers (their
    first ``limit`` tokens; None: all)."""
    size, copies = len(batch), len(measured)
    reference = next(index for index in measured if is_reference(settings[index]))
    answers = [tokens[reference * size + row][:limit] for row in range(size)] * copies
    reference_rows = torch.arange(size).repeat(copies) + measured.index(reference) * size
    tracker = DecodeTracker(set(), [], captured.scaling)  # nothing is tracked here
    with torch.inference_mode():
        first_logits, positions, _ = _read_questions(
            model, state, tracker, batch, captured.lengths.repeat(copies), last_logits, copies, pad_id
        )
        records = measure(model, state, first_logits, answers, positions, reference_rows, pad_id)
    return {index: records[copy * size : (copy + 1) * size] for copy, index in enumerate(measured)}


def _decode_fidelity(
    model: PreTrainedModel,
    state: KVState,
    captured: Captured,
    batch: Sequence[Tokenized],
    settings: Sequence[Setting],
    tokens: Sequence[list[int]],
    seeds: Sequence[int],
    last_logits: torch.Tensor,
    decoding: DecodeOptions,
    decode_needs: set,
    pad_id: int,
    limit: int | None,
) -> dict[int, list[dict[str, object]]]:
    """Fidelity records of the settings compressed while decoding (index → one per prompt). Their rows and
    the full setting's are compressed again from the prompt cache ``state`` as before decoding, then decoded
    together with every row fed its prompt's full-cache answer (its first ``limit`` tokens; None: all) by a
    :class:`ForcedSampler`, which compares each row's distributions with the full row's of the same prompt."""
    size = len(batch)
    reference = next(index for index, setting in enumerate(settings) if is_reference(setting))
    forced = [reference, *_decode_measured(settings)]
    chosen = [settings[index] for index in forced]
    answers = [tokens[reference * size + row][:limit] for row in range(size)] * len(forced)
    rows = torch.arange(size, device=model.device).repeat(len(forced))
    caches = _compress_copies(model, state, captured, chosen, False, rows, decode_needs)
    sampler = ForcedSampler(
        decoding.temperature, decoding.top_p, answers, list(range(size)) * len(forced), pad_id, model.device
    )
    options = replace(decoding, max_new_tokens=sampler.length)
    compressions = [setting.decode for setting in chosen]
    _decode_rows(
        model,
        caches,
        decode_needs,
        captured,
        batch,
        last_logits,
        compressions,
        seeds,
        options,
        pad_id,
        sampler,
    )
    records = sampler.records()
    return {index: records[copy * size : (copy + 1) * size] for copy, index in enumerate(forced) if copy}


def _read_questions(
    model: PreTrainedModel,
    rows_state: KVState,
    tracker: DecodeTracker,
    batch: Sequence[Tokenized],
    positions: torch.Tensor,
    last_logits: torch.Tensor,
    copies: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first decoding logits, next positions and prompt lengths of every row.

    Without questions these are the prefill's last logits; with them (``compress="context_only"``) the
    question tokens are fed after compression and their entries kept uncompressed (untracked)."""
    if not any(item.question for item in batch):
        return last_logits.repeat(copies, 1), positions, positions.clone()
    device = positions.device
    question_ids, question_valid = left_pad([item.question for item in batch], pad_id, device)
    question_ids, question_valid = question_ids.repeat(copies, 1), question_valid.repeat(copies, 1)
    question_positions = (positions[:, None] + question_valid.long().cumsum(dim=-1) - 1).clamp_min(0)
    logits = forward_tokens(model, rows_state, question_ids, question_positions, question_valid)
    tracker.append_untracked(question_positions)
    positions = positions + question_valid.sum(dim=-1)
    return logits, positions, positions.clone()


def _completions(
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Tokenized],
    setting: Setting,
    selections: Sequence[Selection],
    tokens: Sequence[list[int]],
    row_stats: Sequence,
    index: int,
    seeds: Sequence[int],
    stop_ids: Sequence[int],
    shared: dict,
    fidelity: Sequence[dict[str, object]] | None,
) -> list[Completion]:
    """The completions of setting number ``index``: its rows ``index · B`` … ``index · B + B − 1``, with
    their ``fidelity`` records when measured."""
    completions = []
    for row, item in enumerate(batch):
        flat = index * len(batch) + row
        generated = tokens[flat]
        ids = _trim(generated, stop_ids)
        kept = [int(selection.valid[row].sum()) // _heads(selection) for selection in selections]
        stats = {
            "prompt_tokens": len(item.context) + len(item.question),
            "context_tokens": len(item.context),
            "kept_tokens": kept,
            "new_tokens": len(ids),
            "generated_tokens": len(generated),
            "seconds_per_token": row_stats[flat].seconds / max(1, len(generated)),
            "setting": setting.label(),
            "seed": seeds[row],
            **row_stats[flat].as_dict(),
            **shared,
        }
        text = tokenizer.decode(ids, skip_special_tokens=True)
        record = {} if fidelity is None else fidelity[row]
        completions.append(Completion(text, ids, setting.method.name, setting.budget.label(), stats, record))
    return completions


def _heads(selection: Selection) -> int:
    """The heads a selection's validity counts each kept token in: its KV heads where it is per head."""
    return selection.valid.shape[1] if selection.valid.ndim == 3 else 1


def widest_first(kept: Sequence[int]) -> list[int]:
    """Setting indices by decreasing kept entries (:func:`kept_entries`), so decoding rows of equal width are
    adjacent and fixed-shape steps attend them in few groups (:func:`infokv.kernels.prefix.valid_prefix`)."""
    return sorted(range(len(kept)), key=lambda index: -kept[index])


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    method: str | Method,
    budget: float | int | str | Budget,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    decode_method: str | Method | None = None,
    decode_ratio: float = 0.25,
    **options: object,
) -> list[Completion]:
    """Completions of ``prompts`` with one prefill method and budget, optionally compressing while decoding.

    ``decode_method`` compresses the generated cache to ``decode_ratio`` every ``compress_every``
    tokens (see :func:`generate_sweep` for the other options).
    """
    spec = (method, budget) if decode_method is None else (method, budget, decode_method, decode_ratio)
    return generate_sweep(
        model, tokenizer, prompts, [spec], max_new_tokens, temperature, top_p, seed, **options
    )[0]


def compress(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    method: str | Method,
    budget: float | int | str | Budget,
    attention_mask: torch.Tensor | None = None,
    prefill_chunk: int = 4096,
) -> tuple[KVState, list[torch.Tensor]]:
    """Prefill ``input_ids`` (B, T), compress, and return the cache and the kept positions.

    Kept positions are one (B, H_kv, K_l) integer tensor per layer: indices into ``input_ids``,
    −1 for masked filler (rows, or with head-wise budgets heads, keeping fewer tokens than the widest).
    """
    setting = Setting.build(method, budget)
    check_model(model)
    input_ids = torch.as_tensor(input_ids, device=model.device)
    check_input_ids(model, input_ids)
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {tuple(input_ids.shape)} "
            "like input_ids"
        )
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    state, captured, _ = prefill(
        model, input_ids, valid.to(input_ids.device), setting.method.requirements(), prefill_chunk
    )
    with torch.inference_mode():
        compressed, selections = compress_settings(state, captured, [setting])
    kept = [
        torch.where(s.valid if s.valid.ndim == 3 else s.valid[:, None, :], s.indices, -1)
        for s in selections[0]
    ]
    return compressed, kept
