"""One job of an experiment: a model, a benchmark and a method at one or more budgets, scored sample
by sample into a resumable run directory (:class:`infokv.eval.store.RunStore`).

The job's configuration is the resolved Hydra config (``conf/config.yaml``); :func:`check_job` checks
everything that can be checked without a model (the type and range of every value, method and
parameters, phase, budgets, benchmark and its options, scenario, shard, device, output folder, W&B
mode) and fails with one line. :func:`run_job` then loads and checks the data with the tokenizer alone,
and only then the weights. The scenarios:

* ``prefill`` — the method compresses the prompt to each budget, then decoding keeps that cache;
  all budgets of the job share one prefill per sample (:func:`infokv.generate_sweep`).
* ``decode`` — the prompt is kept whole and the method compresses the generated tokens to
  ``budget × generated`` every ``compress_every`` tokens.

Every scored sample is appended to the run's JSONL at once with its prompt, completion, extracted
answer, score, metrics and engine statistics; a rerun of the same configuration skips what is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError
from tqdm.auto import tqdm

from infokv import methods
from infokv.engine.config_values import choice, integer, number, optional_integer, reject, text
from infokv.engine.decoding import check_effect
from infokv.engine.sweep import COMPRESS_MODES, Setting, build_settings, generate_sweep
from infokv.eval import benchmarks
from infokv.eval.configs import method_schema, options_schema, typed
from infokv.eval.statistics import describe
from infokv.eval.store import RunStore, records_frame, unique_records
from infokv.eval.tracking import check_mode
from infokv.hf.hooks import SUPPORTED_ATTENTION
from infokv.hf.models import _HUB_ID, check_device, context_length, load_tokenizer, load_weights
from infokv.methods.base import Method

SCENARIOS = ("prefill", "decode")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LABEL = re.compile(r"[A-Za-z0-9_.-]+")  # a method's or model's label: part of a file name
# Config sections that say what is computed; the rest (paths, launcher, W&B, progress, batch size,
# shard, sample limit) says how or how much, so reruns that change it resume the same run.
IDENTITY_KEYS = ("model", "benchmark", "scenario", "methods", "budget", "cot", "seed", "max_new_tokens")
SAMPLE_COUNT_KEYS = ("limit",)
# errno values of a write that failed for the storage's sake, not the program's
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


@dataclass(frozen=True)
class JobSetting:
    """One setting of a job: the label of the method entry it comes from, and the engine's setting."""

    method: str
    setting: Setting

    @property
    def compressor(self) -> Method:
        """The method this setting evaluates: the decoding compression's, else the prefill's."""
        return self.setting.method if self.setting.decode is None else self.setting.decode.method

    def label(self) -> str:
        """The record's ``setting``: the engine's label, prefixed by the entry's label where a variant of
        a method (``infokv_a08``) has a label other than the method's name."""
        engine = self.setting.label()
        return engine if self.method == self.compressor.name else f"{self.method}:{engine}"


@dataclass(frozen=True)
class Job:
    """What a configuration asks for, checked: the methods by label, and every (method, budget)."""

    methods: dict[str, Method]
    settings: tuple[JobSetting, ...]
    benchmark: ModuleType


def _budgets(value: Any) -> tuple[Any, ...]:
    items = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if not items:
        raise ValueError("budget is empty; give a ratio, a token count or a list of them")
    return items


def check_methods(node: DictConfig | None, scenario: str) -> dict[str, Method]:
    """The job's methods by label: each entry ``{name, <parameter>: <value>}`` typed against its method's
    schema (:func:`infokv.eval.configs.method_schema`), then built, so a range its dataclass refuses is
    also one line."""
    entries = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if not entries:
        raise ValueError("methods is empty; choose one with method=<name> or several with method=[a,b]")
    chosen = {}
    for label, entry in entries.items():
        key = f"methods.{label}"
        if not LABEL.fullmatch(str(label)):
            reject(key, label, "a label of letters, digits, '_', '-' and '.'")
        if not isinstance(entry, dict) or "name" not in entry:
            reject(key, entry, "a method entry {name: <method>, <parameter>: <value>}")
        name = entry["name"]
        method = methods.get(name)  # an unknown method is one line here
        unknown = sorted(set(entry) - {"name"} - set(method.params() if method.evicts else {}))
        if unknown:
            allowed = ", ".join(method.params()) if method.evicts else "none"
            raise ValueError(f"{key}: method {name!r} has no parameter {unknown[0]}; allowed: {allowed}")
        params = OmegaConf.to_container(typed_at(key, method_schema(name), entry), resolve=True)
        params.pop("name")
        chosen[str(label)] = methods.get_for_phase(methods.get(name, **params), scenario)
    return chosen


def check_job(cfg: DictConfig) -> Job:
    """Everything the configuration asks for, checked before any model work (one-line errors)."""
    scenario = choice("scenario.name", cfg.scenario.name, SCENARIOS)
    check_values(cfg)
    chosen = check_methods(cfg.get("methods"), scenario)
    raw_budgets = _budgets(OmegaConf.to_container(cfg, resolve=True)["budget"])
    decoding = {}
    if scenario == "decode":
        for budget in raw_budgets:
            if not isinstance(budget, float | int) or isinstance(budget, bool) or not 0 < budget <= 1:
                raise ValueError(f"budget {budget!r}: the decode scenario takes ratios 0 < r <= 1")
        decoding = {
            "compress_every": cfg.scenario.compress_every,
            "compress_prompt": cfg.scenario.compress_prompt,
        }
    settings = []
    for label, method in chosen.items():
        if scenario == "prefill":
            specs = [(method, budget) for budget in raw_budgets]
        else:
            specs = [("full", 1.0, method, float(budget)) for budget in raw_budgets]
        # Equal settings (the full cache at two budgets) are one setting: dict.fromkeys keeps the first.
        settings += [
            JobSetting(label, setting) for setting in dict.fromkeys(build_settings(specs, **decoding))
        ]
    for job_setting in settings:
        if job_setting.setting.decode is not None and job_setting.compressor.evicts:
            check_effect(job_setting.setting.decode, cfg.max_new_tokens, f"methods.{job_setting.method}")
    shard = cfg.shard
    if shard.count < 1:
        raise ValueError(f"shard {shard.index}/{shard.count}: count must be an integer >= 1")
    if not 0 <= shard.index < shard.count:
        raise ValueError(
            f"shard.index {shard.index} must be in [0, {shard.count}) for shard.count {shard.count}"
        )
    check_mode(cfg.wandb)
    benchmark = benchmarks.get(cfg.benchmark.name)
    check_options(cfg.benchmark.name, benchmark, cfg.benchmark.options)
    return Job(chosen, tuple(settings), benchmark)


def check_values(cfg: DictConfig) -> None:
    """The range of every plain value of the job (their types are the schema's, :mod:`infokv.eval.configs`),
    the model's device, and the output folder: each wrong one is a one-line error before anything loads."""
    integer("seed", cfg.seed, 0)
    for key in ("max_new_tokens", "batch_size", "scenario.samples", "scenario.prefill_chunk"):
        integer(key, OmegaConf.select(cfg, key), 1)
    number("scenario.temperature", cfg.scenario.temperature, 0.0)
    number("scenario.top_p", cfg.scenario.top_p, 0.0, 1.0, low_open=True)
    if cfg.scenario.name == "prefill":
        choice("scenario.compress", cfg.scenario.compress, COMPRESS_MODES)
    else:
        integer("scenario.compress_every", cfg.scenario.compress_every, 1)
        optional_integer("scenario.fidelity_tokens", cfg.scenario.fidelity_tokens, 1)
    text("model.name", cfg.model.name)
    if cfg.model.label is not None and not LABEL.fullmatch(cfg.model.label):
        reject("model.label", cfg.model.label, "letters, digits, '_', '-' and '.'")
    choice("model.dtype", cfg.model.dtype, DTYPES)
    attention = choice("model.attn_implementation", cfg.model.attn_implementation, SUPPORTED_ATTENTION)
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation 'flash_attention_2' needs the flash-attn package; use sdpa"
        )
    check_device(cfg.model.device, "model.device")
    optional_integer("model.threads", cfg.model.threads, 1)
    text("benchmark.source", cfg.benchmark.source)
    optional_integer("benchmark.limit", cfg.benchmark.limit, 1)
    text("wandb_project", cfg.wandb_project)
    check_output_dir(cfg.output_dir)


def check_options(name: str, benchmark: ModuleType, options: DictConfig | None) -> None:
    """``benchmark.options`` must be keyword options of the benchmark's ``load`` (the tokenizer is ours),
    each of its annotated type (:func:`infokv.eval.configs.options_schema`); the ranges are the loader's
    to check."""
    schema = options_schema(benchmark)
    allowed = [item.name for item in dataclasses.fields(schema)]
    given = OmegaConf.to_container(options, resolve=True) if options is not None else {}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        listed = ", ".join(allowed) or "none"
        raise ValueError(f"benchmark.options.{unknown[0]} is not an option of {name}; allowed: {listed}")
    typed_at("benchmark.options", schema, given)


def typed_at(key: str, schema: type, node: dict) -> DictConfig:
    """:func:`infokv.eval.configs.typed`, with a wrong value's key named from the job's root."""
    try:
        return typed(schema, node)
    except ValidationError as error:
        error.full_key = f"{key}.{error.full_key}"
        raise


def check_output_dir(value: object) -> Path:
    """``output_dir`` as a path whose nearest existing part is a writable directory (not a file)."""
    path = Path(text("output_dir", value))
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"output_dir {value!r}: {part} is a file; give a directory")
            if not os.access(part, os.W_OK):
                raise ValueError(f"output_dir {value!r}: {part} is not writable (read-only or no permission)")
            break
    return path


def model_label(model: DictConfig) -> str:
    """The model's name in run directories and tables: ``model.label``, else a local directory's folder
    name, else the name itself (an embedded alias or a hub id ``owner/name``)."""
    if model.label:
        return str(model.label)
    name = str(model.name)
    if _HUB_ID.match(name) or "/" not in name and os.sep not in name:
        return name
    return Path(name).expanduser().resolve().name or name


def model_dtype(model: DictConfig) -> str:
    """``model.dtype`` with ``auto`` resolved: bfloat16 where the model runs on CUDA, else float32."""
    if model.dtype != "auto":
        return str(model.dtype)
    on_cuda = str(model.device).startswith("cuda") or (model.device == "auto" and torch.cuda.is_available())
    return "bfloat16" if on_cuda else "float32"


def identity(cfg: DictConfig) -> dict:
    """The part of the configuration that decides the results (see :data:`IDENTITY_KEYS`), with the
    model's dtype resolved and without how it is named or threaded."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    chosen = {key: resolved[key] for key in IDENTITY_KEYS}
    chosen["benchmark"] = {k: v for k, v in chosen["benchmark"].items() if k not in SAMPLE_COUNT_KEYS}
    chosen["model"] = {k: v for k, v in chosen["model"].items() if k not in ("threads", "label")}
    chosen["model"]["dtype"] = model_dtype(cfg.model)
    return chosen


def run_directory(cfg: DictConfig, job: Job) -> Path:
    """``<output_dir>/<benchmark>/<model label>/<scenario>/<methods>@<budgets>-<cot|direct>-<hash>``, where
    ``<methods>`` joins the labels with ``+`` (or counts them when that is long)."""
    digest = hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
    budgets = "_".join(dict.fromkeys(_budget_label(item.setting) for item in job.settings))
    style = "cot" if cfg.cot else "direct"
    labels = "+".join(job.methods)
    labels = labels if len(labels) <= 64 else f"{len(job.methods)}-methods"
    model = model_label(cfg.model).replace("/", "__")
    name = f"{labels}@{budgets}-{style}-{digest}"
    return Path(cfg.output_dir) / cfg.benchmark.name / model / cfg.scenario.name / name


def environment() -> dict:
    """Package versions, git commit and host of this run, for the run directory."""
    import transformers

    from infokv._version import __version__

    repository = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "infokv": __version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_samples(cfg: DictConfig, benchmark: ModuleType, tokenizer) -> list:
    """The benchmark's samples; generators and builders also get the tokenizer (lengths in tokens)."""
    options = OmegaConf.to_container(cfg.benchmark.options, resolve=True) or {}
    if "tokenizer" in inspect.signature(benchmark.load).parameters:
        options["tokenizer"] = tokenizer
    return benchmark.load(cfg.benchmark.source, cfg.benchmark.limit, **options)


def _budget_label(setting: Setting) -> str:
    """The budget a setting stands for: the prefill budget, or the decode ratio."""
    return setting.budget.label() if setting.decode is None else f"{setting.decode.ratio:g}"


def _prompt_input(prompt, compress: str):
    return prompt.pair() if compress == "context_only" else prompt.text


def _record(cfg, sample, draw: int, item: JobSetting, prompt, completion, scored) -> dict:
    method = item.compressor
    return {
        "benchmark": cfg.benchmark.name,
        "model": model_label(cfg.model),
        "model_name": str(cfg.model.name),
        "scenario": cfg.scenario.name,
        "method": item.method,
        "method_name": method.name,
        "parameters": method.params() if method.evicts else {},
        "budget": _budget_label(item.setting),
        "cot": bool(cfg.cot),
        "setting": item.label(),
        "sample_id": sample.id,
        "sample_index": draw,
        "score": float(scored.value),
        "metrics": {name: float(value) for name, value in scored.metrics.items()},
        "extracted": scored.extracted
        if isinstance(scored.extracted, str | int | float | None)
        else str(scored.extracted),
        "details": dict(scored.details),
        "prompt": prompt.text,
        "completion": completion.text,
        "stats": completion.stats,
        "fidelity": completion.fidelity,
    }


@dataclass
class Work:
    """A checked job with its data: the samples of this shard and each sample's seed."""

    job: Job
    directory: Path
    tokenizer: Any
    mine: list
    seeds: dict


def prepare(cfg: DictConfig) -> Work:
    """Check the job, then load and check its data with the tokenizer alone (cheap), so that bad data, a
    shard without samples or a generation longer than the model's context fails before the weights load."""
    job = check_job(cfg)
    directory = run_directory(cfg, job)
    if cfg.model.threads:
        torch.set_num_threads(int(cfg.model.threads))
    tokenizer = load_tokenizer(cfg.model.name)
    samples = load_samples(cfg, job.benchmark, tokenizer)
    seeds = {sample.id: cfg.seed + index for index, sample in enumerate(samples)}
    mine = samples[cfg.shard.index :: cfg.shard.count]
    if not mine:
        raise ValueError(
            f"shard.index {cfg.shard.index} of shard.count {cfg.shard.count} gets no samples: "
            f"{cfg.benchmark.name} gave {len(samples)}; use a shard.count <= {len(samples)}"
        )
    context = context_length(cfg.model.name)
    if context and cfg.max_new_tokens >= context:
        raise ValueError(
            f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{context} tokens; use fewer"
        )
    return Work(job, directory, tokenizer, mine, seeds)


def run_job(cfg: DictConfig) -> tuple[Path, pd.DataFrame]:
    """Run (or resume) one job; return its run directory and its summary table.

    Every method and budget of the job compresses the same prefill of each batch of samples
    (:func:`infokv.engine.sweep.generate_sweep`). A sample's records, one per (method, budget, draw), are
    appended together once the batch is decoded, so a killed job resumes at the first sample without
    them and loses none that were written."""
    work = prepare(cfg)
    store = RunStore(work.directory, cfg.shard.index, cfg.shard.count)
    model = load_weights(
        cfg.model.name,
        dtype=getattr(torch, model_dtype(cfg.model)),
        device=cfg.model.device,
        attn_implementation=cfg.model.attn_implementation,
    )
    with writing_run(work.directory):
        store.open(OmegaConf.to_yaml(cfg, resolve=True), environment())
        done = store.done()
        draws = cfg.scenario.samples
        labels = [item.label() for item in work.job.settings]
        pending = [
            s
            for s in work.mine
            if any((s.id, label, draw) not in done for label in labels for draw in range(draws))
        ]
        with tqdm(
            total=len(work.mine),
            initial=len(work.mine) - len(pending),
            desc=work.directory.name,
            disable=not cfg.progress,
            unit="sample",
        ) as bar:
            for batch in store.claim_batches(pending, cfg.batch_size, labels, draws):
                for records in score_batch(cfg, work, model, batch):
                    store.append(records)
                    bar.update(1)
    return work.directory, summarise(store.records())


def score_batch(cfg: DictConfig, work: Work, model, batch: list) -> Iterator[list[dict]]:
    """One batch of samples through every setting of the job; yields each sample's records."""
    scenario = cfg.scenario
    compress = scenario.get("compress", "prompt")
    settings = work.job.settings
    prompts = [work.job.benchmark.prompt(sample, bool(cfg.cot), work.tokenizer) for sample in batch]
    outputs = generate_sweep(
        model,
        work.tokenizer,
        [_prompt_input(p, compress) for p in prompts],
        [item.setting for item in settings],
        max_new_tokens=cfg.max_new_tokens,
        temperature=scenario.temperature,
        top_p=scenario.top_p,
        seed=[work.seeds[sample.id] for sample in batch],
        compress=compress,
        samples=scenario.samples,
        prefill_chunk=scenario.prefill_chunk,
        cuda_graphs=scenario.cuda_graphs,
        fidelity=scenario.fidelity,
        fidelity_tokens=scenario.get("fidelity_tokens"),  # the prefill scenario forces the whole answer
    )
    draws = scenario.samples
    for position, (sample, prompt) in enumerate(zip(batch, prompts, strict=True)):
        records = []
        for item, completions in zip(settings, outputs, strict=True):
            for draw in range(draws):
                completion = completions[position * draws + draw]
                scored = work.job.benchmark.score(sample, completion.text)
                records.append(_record(cfg, sample, draw, item, prompt, completion, scored))
        yield records


@contextlib.contextmanager
def writing_run(directory: Path) -> Iterator[None]:
    """The block that writes the run directory. A storage error without a file name (a full disk or quota,
    a file-size limit, a read-only or failing disk, raised by a bare write) is re-raised naming the
    directory. If the block fails before a record is in the directory, the directory and the parents made
    for it are removed, so that a job failing on its first batch (a prompt longer than the model's
    context, a full disk) leaves no empty run directory; one that existed before (a resumed run) stays."""
    made = [part for part in (directory, *directory.parents) if not part.exists()]
    try:
        yield
    except BaseException as error:
        if made and not unique_records(directory):  # a partial last line is no record
            shutil.rmtree(directory, ignore_errors=True)
            for parent in made[1:]:
                with contextlib.suppress(OSError):  # not empty: another run of the sweep wrote there
                    parent.rmdir()
        if isinstance(error, OSError) and error.filename is None and error.errno in STORAGE_ERRORS:
            raise OSError(error.errno, f"{error.strerror} while writing to {directory}") from error
        raise


def summarise(records: list[dict]) -> pd.DataFrame:
    """Per (benchmark, model, scenario, method, budget, cot): n samples, and the mean score and every
    per-sample metric with its 95% interval (:func:`infokv.eval.statistics.describe`)."""
    if not records:
        return pd.DataFrame()
    keys = ["benchmark", "model", "scenario", "method", "budget", "cot"]
    frame = records_frame(records)
    proportions = ["score"] + [c for c in frame.columns if c.startswith("metric.")]
    columns = proportions + [c for c in frame.columns if c.startswith("fidelity.")]
    return describe(frame, keys, columns, proportions=proportions)
