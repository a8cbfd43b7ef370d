"""Prefill once, compress many ways, decode with true positions.

``generate_sweep`` is the workhorse: one chunked prefill per batch captures every signal the
requested methods need; each (method, budget) setting then selects its kept tokens from the same
full cache, and all settings decode together as one batch whose rows keep different numbers of
tokens (shorter rows are filled with masked entries). A sweep therefore costs one prefill per
sample plus one batched decode, not one prefill and decode per setting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from infokv import methods
from infokv.budget import Budget
from infokv.cache import KVState, cache_argument_name
from infokv.capture import Captured, output_logits, prefill
from infokv.hooks import (
    ForwardContext,
    check_attention_implementation,
    check_full_attention_layers,
    forward_context,
)
from infokv.methods.base import Method
from infokv.sampling import Sampler
from infokv.scoring import LayerView
from infokv.selection import Selection, forced_mask, select

Prompt = str | tuple[str, str]
COMPRESS_MODES = ("prompt", "context_only")


@dataclass(frozen=True)
class Setting:
    """One (method, budget) pair of a sweep."""

    method: Method
    budget: Budget

    @classmethod
    def build(cls, method: str | Method, budget: float | int | str | Budget) -> Setting:
        resolved = methods.get(method)
        parsed = Budget.parse(budget)
        if resolved.evicts:
            parsed.check_floor(resolved.floor)
        return cls(resolved, parsed)

    def label(self) -> str:
        return f"{self.method.label()}@{self.budget.label()}"


@dataclass
class Completion:
    """A generated continuation and how it was produced."""

    text: str
    token_ids: list[int]
    method: str
    budget: str
    stats: dict[str, object] = field(default_factory=dict)


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
    """One-line error if a prompt plus its generation would exceed the model's context."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be >= 1")
    limit = context_limit(model)
    for index, item in enumerate(tokenized):
        length = len(item.context) + len(item.question)
        if length == 0:
            raise ValueError(f"prompt {index} is empty after tokenization")
        if limit and length + max_new_tokens > limit:
            raise ValueError(
                f"prompt {index} has {length} tokens + max_new_tokens {max_new_tokens}"
                f" > the model's context {limit}"
            )


def check_model(model: PreTrainedModel) -> None:
    check_attention_implementation(model)
    check_full_attention_layers(model)


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


def select_layer(view: LayerView, setting: Setting, keep: torch.Tensor) -> Selection:
    """The kept entries of one layer for one setting."""
    method = setting.method
    scores = method.score(view)
    forced = forced_mask(view.valid, method.sink, method.window)
    return select(scores, view.valid, keep, forced)


def _front_fill(selection: Selection, width: int) -> Selection:
    """Widen a selection to ``width`` entries with masked filler at the front."""
    extra = width - selection.indices.shape[-1]
    if extra == 0:
        return selection
    batch, heads, _ = selection.indices.shape
    filler = torch.zeros(batch, heads, extra, dtype=selection.indices.dtype, device=selection.indices.device)
    invalid = torch.zeros(batch, extra, dtype=torch.bool, device=selection.valid.device)
    return Selection(torch.cat([filler, selection.indices], -1), torch.cat([invalid, selection.valid], -1))


def compress_settings(
    state: KVState, captured: Captured, settings: Sequence[Setting]
) -> tuple[KVState, list[list[Selection]]]:
    """Compress the full cache once per setting; rows of the result are setting-major (r = c·B + b)."""
    layers = state.num_layers
    lengths = captured.lengths
    keeps = [setting.method.keep_counts(setting.budget, lengths, layers) for setting in settings]
    per_setting: list[list[Selection]] = [[] for _ in settings]
    for layer in range(layers):
        view = LayerView(state, captured, layer, memo={})
        for index, setting in enumerate(settings):
            per_setting[index].append(select_layer(view, setting, keeps[index][layer].to(lengths.device)))
    combined_indices, combined_valid = [], []
    for layer in range(layers):
        width = max(selections[layer].indices.shape[-1] for selections in per_setting)
        filled = [_front_fill(selections[layer], width) for selections in per_setting]
        combined_indices.append(torch.cat([selection.indices for selection in filled]))
        combined_valid.append(torch.cat([selection.valid for selection in filled]))
    batch = captured.valid.shape[0]
    rows = torch.arange(batch, device=captured.valid.device).repeat(len(settings))
    return state.gather(rows, combined_indices, combined_valid), per_setting


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
    state.extend_valid(valid, input_ids.shape[1], input_ids.shape[0])
    base = model.base_model
    with forward_context(model, ForwardContext(state)):
        output = base(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=True,
            **{cache_argument_name(base): state.cache},
        )
    return output_logits(model)(output.last_hidden_state[:, -1]).float()


def decode(
    model: PreTrainedModel,
    state: KVState,
    logits: torch.Tensor,
    positions: torch.Tensor,
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: Sequence[int],
    pad_id: int,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` per row; rows that stopped produce ``pad_id``. Returns (R, n)."""
    stops = torch.tensor(list(stop_ids), device=logits.device, dtype=torch.long)
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    generated = []
    for step in range(max_new_tokens):
        token = sampler(logits)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        generated.append(token)
        finished |= torch.isin(token, stops)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        logits = forward_tokens(model, state, token[:, None], positions[:, None])
        positions = positions + 1
    return torch.stack(generated, dim=1)


def _trim(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:index]
    return tokens


def _seeds(seed: int | Sequence[int], count: int) -> list[int]:
    if isinstance(seed, int):
        return [seed] * count
    seeds = list(seed)
    if len(seeds) != count:
        raise ValueError(f"seed has {len(seeds)} values for {count} prompts; give one int or one per prompt")
    return seeds


def generate_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: Sequence[tuple[str | Method, float | int | str | Budget]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | Sequence[int] = 0,
    compress: str = "prompt",
    batch_size: int | None = None,
    prefill_chunk: int = 4096,
) -> list[list[Completion]]:
    """Completions for every (method, budget) setting and prompt: ``result[setting][prompt]``.

    Each batch of prompts is prefilled once; every setting compresses the same full cache.
    """
    resolved = [Setting.build(method, budget) for method, budget in settings]
    if not resolved:
        raise ValueError("settings is empty; give at least one (method, budget) pair")
    tokenized = tokenize(tokenizer, prompts, compress)
    check_lengths(model, tokenized, max_new_tokens)
    seeds = _seeds(seed, len(tokenized))
    Sampler(temperature, top_p, [], torch.device("cpu"))
    if prefill_chunk < 1:
        raise ValueError(f"prefill_chunk {prefill_chunk} must be >= 1")
    check_model(model)
    step = batch_size or len(tokenized)
    results: list[list[Completion]] = [[] for _ in resolved]
    for start in range(0, len(tokenized), step):
        batch = tokenized[start : start + step]
        outputs = _run_batch(
            model,
            tokenizer,
            batch,
            resolved,
            max_new_tokens,
            temperature,
            top_p,
            seeds[start : start + step],
            prefill_chunk,
        )
        for index, completions in enumerate(outputs):
            results[index].extend(completions)
    return results


def _run_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: Sequence[Tokenized],
    settings: Sequence[Setting],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seeds: Sequence[int],
    prefill_chunk: int,
) -> list[list[Completion]]:
    device = model.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    requirements = set().union(*(setting.method.requirements() for setting in settings))
    input_ids, valid = left_pad([item.context for item in batch], pad_id, device)
    clock = time.perf_counter()
    state, captured, last_logits = prefill(model, input_ids, valid, requirements, prefill_chunk)
    prefill_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    with torch.inference_mode():
        rows, selections = compress_settings(state, captured, settings)
    del state
    compress_seconds = time.perf_counter() - clock
    copies = len(settings)
    positions = captured.lengths.repeat(copies)
    clock = time.perf_counter()
    with torch.inference_mode():
        if any(item.question for item in batch):
            question_ids, question_valid = left_pad([item.question for item in batch], pad_id, device)
            question_ids, question_valid = question_ids.repeat(copies, 1), question_valid.repeat(copies, 1)
            question_positions = positions[:, None] + question_valid.long().cumsum(dim=-1) - 1
            logits = forward_tokens(
                model, rows, question_ids, question_positions.clamp_min(0), question_valid
            )
            positions = positions + question_valid.sum(dim=-1)
        else:
            logits = last_logits.repeat(copies, 1)
        sampler = Sampler(temperature, top_p, list(seeds) * copies, device)
        stop_ids = stop_token_ids(model, tokenizer)
        tokens = decode(model, rows, logits, positions, max_new_tokens, sampler, stop_ids, pad_id).tolist()
    decode_seconds = time.perf_counter() - clock
    shared = {
        "batch_size": len(batch),
        "settings": len(settings),
        "prefill_seconds": prefill_seconds,
        "compress_seconds": compress_seconds,
        "decode_seconds": decode_seconds,
    }
    results = []
    for index, setting in enumerate(settings):
        completions = []
        for row, item in enumerate(batch):
            ids = _trim(tokens[index * len(batch) + row], stop_ids)
            kept = [int(selection.valid[row].sum()) for selection in selections[index]]
            stats = {
                "prompt_tokens": len(item.context) + len(item.question),
                "context_tokens": len(item.context),
                "kept_tokens": kept,
                "new_tokens": len(ids),
                **shared,
            }
            text = tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(Completion(text, ids, setting.method.name, setting.budget.label(), stats))
        results.append(completions)
    return results


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
    **options: object,
) -> list[Completion]:
    """Completions of ``prompts`` with one method at one budget (see :func:`generate_sweep` for options)."""
    return generate_sweep(
        model, tokenizer, prompts, [(method, budget)], max_new_tokens, temperature, top_p, seed, **options
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
    −1 for masked filler (rows keeping fewer tokens than the longest row).
    """
    setting = Setting.build(method, budget)
    check_model(model)
    input_ids = torch.as_tensor(input_ids, device=model.device)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected (batch, tokens)")
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    state, captured, _ = prefill(
        model, input_ids, valid.to(input_ids.device), setting.method.requirements(), prefill_chunk
    )
    with torch.inference_mode():
        compressed, selections = compress_settings(state, captured, [setting])
    kept = [
        torch.where(s.valid[:, None, :], s.indices, torch.full_like(s.indices, -1)) for s in selections[0]
    ]
    return compressed, kept
