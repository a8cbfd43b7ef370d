"""What a job will compute, and its GPU time estimated from the measured rates of ``results/bench/``.

``infokv-run ... dry_run=true`` prints :func:`job_cost` for each job instead of running it: samples,
prefills, prompt tokens, generated tokens (an upper bound: every completion runs to
``max_new_tokens``), and GPU-seconds for the job as configured (all methods on one prefill per sample)
and as it would cost with one job per method. No weights are loaded.

The estimate scales the H200 measurements of ``scripts/bench.py`` (Llama-3.1-8B's architecture, bf16,
``results/bench/gpu.csv``) to the job's architecture:

* prefill of L tokens: the measured full-cache prefill, interpolated in log-log over L, times
  F(L) / F_ref(L) with F(L) = 2·P·L + 2·n_layers·n_heads·d_head·L² (P: parameters outside the
  embeddings); each evicting (method, budget) adds its measured ``ratio_to_full_prefill`` − 1 at the
  nearest measured length;
* a decoding step over rows r with e_r cache entries each: t = W + c·Σ_r e_r + d·|rows|, fitted by
  least squares to every measured ``decode_tokens_per_second`` (t = batch / rate), with W scaled by
  the weight bytes and c by the KV bytes per entry of the architecture;
* a row's mean entries: the prefill kept for the budget plus half the new tokens; when decoding
  compresses to ratio ρ every k tokens, the prompt plus ρ·G/2 + k/2;
* fidelity to the full cache (on by default, :mod:`infokv.engine.fidelity`): in the prefill scenario one
  forward of the answer (up to ``max_new_tokens`` tokens) per evicting setting and sample, costed as a
  prefill of that many tokens; in the decode scenario a second, teacher-forced decode of up to
  ``fidelity_tokens`` steps by the settings that compress while decoding and the full cache.

Where the data cannot be read offline (a hub benchmark), the sample count and prompt length are the
benchmark's published size and ``options.tokens`` (:data:`NOMINAL`), flagged as nominal; prompt
lengths of loadable data are counted with the model's tokenizer or, where that is not on this machine,
the embedded model's (flagged as approximate).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from infokv.eval.runner import Job, check_job, load_samples
from infokv.hf.architectures import config, for_model
from infokv.hf.models import EMBEDDED, load_tokenizer, resolve

RATES = Path(__file__).resolve().parents[2] / "results" / "bench" / "gpu.csv"
# Published sizes of the benchmarks read from the hub, and prompt tokens where no option sets them.
NOMINAL = {
    "longreason": (794, None),
    "livecodebench": (880, 600),
    "ifeval": (541, 60),
    "aime": (30, 150),
    "math500": (500, 120),
    "gsm8k": (1319, 120),
    "humaneval": (164, 150),
}


@dataclass
class Workload:
    """What a job computes: per sample, the prompt tokens, and the settings it decodes."""

    samples: int
    prompt_tokens: float  # mean over samples
    draws: int
    batch_size: int
    max_new_tokens: int
    settings: list[tuple[str, float, float]]  # (method label, kept share of the prompt, decode ratio or 0)
    names: dict[str, str] = field(default_factory=dict)  # method label -> method name
    compress_every: int = 0
    fidelity_steps: int = 0  # answer tokens teacher-forced per measured setting (0: fidelity off)
    overheads: dict[tuple[str, float], float] = field(default_factory=dict)  # (label, kept) -> extra share
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Architecture:
    """What the cost of a model depends on."""

    parameters: float  # outside the embeddings
    weight_bytes: float
    kv_bytes_per_token: float
    attention_width: float  # n_layers · n_heads · d_head

    @classmethod
    def of(cls, config, itemsize: int = 2) -> Architecture:
        config = config.get_text_config(decoder=True)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        hidden, layers = config.hidden_size, config.num_hidden_layers
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
        mlp = 3 * hidden * config.intermediate_size
        inner = layers * (attention + mlp)
        embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
        return cls(
            parameters=float(inner),
            weight_bytes=float((inner + embeddings) * itemsize),
            kv_bytes_per_token=float(2 * layers * kv_heads * head_dim * itemsize),
            attention_width=float(layers * heads * head_dim),
        )

    def prefill_flops(self, tokens: float) -> float:
        return 2 * self.parameters * tokens + 2 * self.attention_width * tokens**2


@dataclass
class Rates:
    """The measured H200 rates of the reference architecture (``results/bench/gpu.csv``)."""

    prefill: list[tuple[float, float]]  # (tokens, seconds) of the full-cache prefill
    overhead: dict[tuple[str, float], list[tuple[float, float]]]  # (method, budget) -> (tokens, ratio)
    step: tuple[float, float, float]  # W, c, d of the decoding step
    reference: Architecture

    @classmethod
    def read(cls, path: Path, reference: Architecture) -> Rates:
        with path.open() as handle:
            rows = [row for row in csv.DictReader(handle) if row["method"] and row["value"]]
        prefill = sorted(
            (float(r["prompt_tokens"]), float(r["value"]))
            for r in rows
            if r["method"] == "full" and r["metric"] == "prefill_seconds" and r["batch"] == "1"
        )
        overhead: dict[tuple[str, float], list[tuple[float, float]]] = {}
        for r in rows:
            if r["metric"] == "ratio_to_full_prefill" and r["method"] != "full":
                key = (r["method"], float(r["budget"]))
                overhead.setdefault(key, []).append((float(r["prompt_tokens"]), float(r["value"])))
        kept = {
            (r["method"], r["budget"], r["prompt_tokens"]): float(r["value"])
            for r in rows
            if r["metric"] == "kv_ratio_to_full"
        }
        points = [
            (int(r["batch"]), kept.get((r["method"], r["budget"], r["prompt_tokens"]), 1.0)
             * float(r["prompt_tokens"]), int(r["batch"]) / float(r["value"]))
            for r in rows
            if r["metric"] == "decode_tokens_per_second" and ":" not in r["method"]
        ]  # fmt: skip
        design = np.array([[1.0, batch * entries, batch] for batch, entries, _ in points])
        seconds = np.array([step for _, _, step in points])
        weights, per_entry, per_row = np.linalg.lstsq(design, seconds, rcond=None)[0]
        return cls(prefill, overhead, (float(weights), float(per_entry), float(per_row)), reference)

    def prefill_seconds(self, tokens: float, architecture: Architecture) -> float:
        """Full-cache prefill of ``tokens``, log-log interpolated, scaled by the FLOPs of the architecture."""
        lengths = np.log([length for length, _ in self.prefill])
        times = np.log([seconds for _, seconds in self.prefill])
        at = math.log(max(tokens, 1.0))
        if at <= lengths[0] or at >= lengths[-1]:  # extend the nearest segment's slope
            first, last = (0, 1) if at <= lengths[0] else (-2, -1)
            slope = (times[last] - times[first]) / (lengths[last] - lengths[first])
            measured = math.exp(times[first] + slope * (at - lengths[first]))
        else:
            measured = math.exp(float(np.interp(at, lengths, times)))
        return measured * architecture.prefill_flops(tokens) / self.reference.prefill_flops(tokens)

    def overhead_share(self, method: str, budget: float, tokens: float) -> float | None:
        """The measured extra prefill share of ``method`` at ``budget`` (nearest budget and length)."""
        budgets = [b for (name, b) in self.overhead if name == method]
        if not budgets:
            return None
        nearest = min(budgets, key=lambda b: abs(b - budget))
        measured = self.overhead[(method, nearest)]
        _, ratio = min(measured, key=lambda point: abs(math.log(point[0] / max(tokens, 1.0))))
        return max(ratio - 1.0, 0.0)

    def step_seconds(self, entries: Sequence[float], architecture: Architecture) -> float:
        weights, per_entry, per_row = self.step
        scale_weights = architecture.weight_bytes / self.reference.weight_bytes
        scale_entries = architecture.kv_bytes_per_token / self.reference.kv_bytes_per_token
        return weights * scale_weights + per_entry * scale_entries * sum(entries) + per_row * len(entries)


def decode_seconds(work: Workload, settings: Sequence[tuple[str, float, float]], rates: Rates, arch) -> float:
    """Decoding ``settings`` of every batch of samples together for ``max_new_tokens`` steps."""
    generated = work.max_new_tokens
    entries = []
    for _, kept, ratio in settings:
        if ratio:
            row = work.prompt_tokens + ratio * generated / 2 + work.compress_every / 2
        else:
            row = kept * work.prompt_tokens + generated / 2
        entries += [row] * work.batch_size * work.draws
    batches = math.ceil(work.samples / work.batch_size)
    return batches * generated * rates.step_seconds(entries, arch)


def fidelity_seconds(work: Workload, settings, rates: Rates, arch: Architecture) -> float:
    """The fidelity passes of ``settings``: a forward of the answer per evicting prefill setting, and a
    forced decode of ``fidelity_steps`` steps by the decode-compressing settings and the full cache."""
    if not work.fidelity_steps:
        return 0.0
    answer = work.fidelity_steps
    evicting = sum(1 for _, kept, ratio in settings if kept < 1.0 and not ratio)
    forward = work.samples * work.draws * evicting * rates.prefill_seconds(answer, arch)
    compressing = [setting for setting in settings if setting[2]]
    if not compressing:
        return forward
    forced = dataclasses.replace(work, max_new_tokens=answer)
    return forward + decode_seconds(forced, [*compressing, ("full", 1.0, 0.0)], rates, arch)


def prefill_seconds(work: Workload, settings, rates: Rates, arch: Architecture) -> float:
    """One prefill per sample, plus each evicting setting's compression overhead."""
    extra = sum(work.overheads.get((label, kept), 0.0) for label, kept, _ in settings)
    return work.samples * rates.prefill_seconds(work.prompt_tokens, arch) * (1.0 + extra)


@dataclass
class JobCost:
    """A job's workload and its estimated GPU-seconds, all methods together and one method per job."""

    work: Workload
    seconds: float | None
    seconds_one_method_per_job: float | None

    def summary(self) -> dict[str, object]:
        work = self.work
        methods = list(dict.fromkeys(label for label, _, _ in work.settings))
        return {
            "samples": work.samples,
            "methods": len(methods),
            "settings": len(work.settings),
            "prefills": work.samples,
            "prefills_one_method_per_job": work.samples * len(methods),
            "prompt_tokens": round(work.samples * work.prompt_tokens),
            "generated_tokens_at_most": work.samples * work.draws * len(work.settings) * work.max_new_tokens,
            "gpu_hours": None if self.seconds is None else self.seconds / 3600,
            "gpu_hours_one_method_per_job": None
            if self.seconds_one_method_per_job is None
            else self.seconds_one_method_per_job / 3600,
            "notes": "; ".join(work.notes),
        }


def estimate(work: Workload, rates: Rates | None, arch: Architecture | None) -> JobCost:
    """GPU-seconds of ``work`` as one job, and as one job per method (each with its own prefill)."""
    if rates is None or arch is None or work.samples == 0:
        return JobCost(work, None, None)

    def seconds(settings) -> float:
        return sum(
            part(work, settings, rates, arch) for part in (prefill_seconds, decode_seconds, fidelity_seconds)
        )

    by_method: dict[str, list] = {}
    for setting in work.settings:
        by_method.setdefault(setting[0], []).append(setting)
    return JobCost(work, seconds(work.settings), sum(seconds(group) for group in by_method.values()))


def job_cost(cfg: DictConfig, rates_path: Path = RATES) -> JobCost:
    """The workload of the job ``cfg`` and its estimate; loads no weights (see the module docstring)."""
    work = workload(cfg, check_job(cfg))
    arch = architecture(str(cfg.model.name), work.notes)
    rates = None
    if rates_path.exists():
        rates = Rates.read(rates_path, reference_architecture())
    else:
        work.notes.append(f"no measured rates at {rates_path}")
    for label, kept, ratio in work.settings:
        if rates is not None and kept < 1.0 and not ratio:
            share = rates.overhead_share(work.names[label], kept, work.prompt_tokens)
            if share is None:
                work.notes.append(f"{work.names[label]}: no measured prefill overhead, counted as 0")
            work.overheads[(label, kept)] = share or 0.0
    return estimate(work, rates, arch)


def workload(cfg: DictConfig, job: Job) -> Workload:
    """The samples, prompt tokens and settings of a checked job (:func:`infokv.eval.runner.check_job`)."""
    notes: list[str] = []
    samples, prompt_tokens = _samples(cfg, job.benchmark, notes)
    settings, names = [], {}
    for item in job.settings:
        setting = item.setting
        names[item.method] = item.compressor.name
        if setting.decode is not None:
            settings.append((item.method, 1.0, setting.decode.ratio))
            continue
        budget = setting.budget
        kept = budget.ratio if budget.ratio is not None else min(1.0, budget.tokens / max(prompt_tokens, 1.0))
        settings.append((item.method, float(kept), 0.0))
    return Workload(
        samples=samples,
        prompt_tokens=prompt_tokens,
        draws=int(cfg.scenario.samples),
        batch_size=int(cfg.batch_size),
        max_new_tokens=int(cfg.max_new_tokens),
        settings=settings,
        names=names,
        compress_every=int(OmegaConf.select(cfg, "scenario.compress_every", default=0) or 0),
        fidelity_steps=_fidelity_steps(cfg),
        notes=notes,
    )


def _fidelity_steps(cfg: DictConfig) -> int:
    """Answer tokens the job teacher-forces per measured setting: 0 without fidelity, else
    ``max_new_tokens`` or, in the decode scenario, at most ``fidelity_tokens``."""
    if not cfg.scenario.fidelity:
        return 0
    limit = OmegaConf.select(cfg, "scenario.fidelity_tokens", default=None)
    return int(cfg.max_new_tokens if limit is None else min(limit, cfg.max_new_tokens))


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub calls read the local cache only, so that a dry run never waits on the network
    (``datasets`` and ``huggingface_hub`` read these flags when called)."""
    import datasets
    import huggingface_hub.constants as hub

    before = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def _samples(cfg: DictConfig, benchmark, notes: list[str]) -> tuple[int, float]:
    """This shard's sample count and mean prompt tokens: counted where the data and a tokenizer are on
    this machine (or in its hub cache), else the benchmark's published size and ``options.tokens``
    (:data:`NOMINAL`)."""
    with hub_offline():
        return _count_samples(cfg, benchmark, notes)


def _count_samples(cfg: DictConfig, benchmark, notes: list[str]) -> tuple[int, float]:
    stand_in = False
    try:
        tokenizer = load_tokenizer(str(cfg.model.name))
    except (OSError, ValueError):
        tokenizer, stand_in = load_tokenizer("smollm2-135m"), True
    try:
        loaded = load_samples(cfg, benchmark, tokenizer)[cfg.shard.index :: cfg.shard.count]
    except (OSError, ValueError, ImportError) as error:
        name = str(cfg.benchmark.name)
        size, tokens = NOMINAL.get(name, (None, None))
        tokens = OmegaConf.select(cfg, "benchmark.options.tokens", default=None) or tokens
        if size is None or tokens is None:
            raise ValueError(f"dry_run: cannot load {name} here ({error}) and has no nominal size") from None
        limit = cfg.benchmark.limit
        count = len(range(cfg.shard.index, min(size, limit or size), cfg.shard.count))
        notes.append(f"{name} not loadable here: nominal {count} samples of {tokens} tokens")
        return count, float(tokens)
    if stand_in:
        notes.append("prompt tokens counted with smollm2-135m's tokenizer")
    style = bool(cfg.cot)
    lengths = [len(tokenizer(benchmark.prompt(sample, style, tokenizer).text).input_ids) for sample in loaded]
    return len(loaded), float(np.mean(lengths)) if lengths else 0.0


def reference_architecture() -> Architecture:
    """The architecture ``results/bench/gpu.csv`` was measured on."""
    return Architecture.of(config("llama-3.1-8b"))


def architecture(name: str, notes: list[str]) -> Architecture | None:
    """The job's architecture: a paper model, a random one, or the config.json of an embedded or local one."""
    config = for_model(resolve(name)[0] if name in EMBEDDED else name)
    if config is None:
        notes.append(f"architecture of {name!r} unknown offline: no GPU-hours")
        return None
    return Architecture.of(config)
