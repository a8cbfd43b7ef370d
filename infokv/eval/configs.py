"""The job's configuration schema: Hydra structured configs built from the code they configure.

Every default exists once. The top of the job (:class:`JobConfig`), the model (:class:`ModelConfig`),
the benchmark (:class:`BenchmarkConfig`) and the two scenarios (:class:`PrefillScenario`,
:class:`DecodeScenario`) are dataclasses here; each method's node is built from its own dataclass in
:mod:`infokv.methods`, and each benchmark's ``options`` from the keyword defaults of its ``load``. The
YAML files under ``conf/`` only say what differs (a model's hub id, a benchmark's limit, a preset's
sweep). Hydra type-checks every merge against these schemas, so ``cot=maybe``, ``seed=abc`` or
``methods.infokv.alpha=abc`` fail while the configuration is composed; :func:`typed` applies the same
schemas to nodes a preset adds by hand (a method variant, benchmark options). Ranges (a budget in
(0, 1], a batch of at least one) are checked by :func:`infokv.eval.runner.check_job`.

Methods form a multi-select group: ``method=snapkv`` selects one, ``method=[full,snapkv,infokv]``
several, each at ``methods.<name>`` with its parameters (``methods.infokv.alpha=0.8``). All methods of
a job share one prefill per sample. A variant of a method is another entry with a label of its own:
``+methods.infokv_a08={name:infokv,alpha:0.8}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from infokv import methods


@dataclass
class ModelConfig:
    """``infokv.hf.models.load_weights``'s arguments: a model and how to run it."""

    name: str = MISSING  # embedded alias, local directory or Hugging Face hub id
    label: str | None = None  # run directories and tables (null: from the name; a local path's folder)
    dtype: str = "auto"  # auto (bfloat16 on CUDA, else float32) | float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda | cuda:N | mps
    attn_implementation: str = "sdpa"  # sdpa | flash_attention_2 (pip install infokv[flash])
    threads: int | None = None  # torch CPU threads (null: torch's default)


@dataclass
class BenchmarkConfig:
    """A benchmark of :mod:`infokv.eval.benchmarks`: where its samples come from and how many."""

    name: str = MISSING
    source: str = "auto"  # auto | offline | hub | builder | a local .json/.jsonl file (per benchmark)
    limit: int | None = None  # the first `limit` samples (null: all)
    max_new_tokens: int = 256  # tokens generated per completion
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the benchmark's load


@dataclass
class PrefillScenario:
    """Long prefilling: each method compresses the prompt to each budget, then greedy decoding."""

    name: str = "prefill"
    compress: str = "prompt"  # prompt (whole prompt) | context_only (the question after it stays whole)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling mass (with temperature > 0)
    samples: int = 1  # completions per prompt
    prefill_chunk: int = 4096  # prompt tokens per forward of the chunked prefill
    cuda_graphs: bool = True  # on CUDA, decoding steps that compress nothing replay a captured graph
    # KL(full ‖ compressed), argmax agreement and NLL of the full cache's answer, teacher-forced through
    # each compressed cache (infokv.engine.fidelity): one forward of the answer per setting
    fidelity: bool = True


@dataclass
class DecodeScenario:
    """Long decoding: the prompt stays whole; each method compresses the generated tokens to
    ``budget × generated`` every ``compress_every`` tokens. Sampling as in the paper's protocol."""

    name: str = "decode"
    temperature: float = 0.6
    top_p: float = 0.95
    samples: int = 1  # completions per prompt (pass@k uses n > 1)
    prefill_chunk: int = 4096
    cuda_graphs: bool = True
    compress_every: int = 1024  # compress the generated part every this many new tokens
    compress_prompt: bool = False  # also compress the prompt's entries (default: kept whole)
    # KL(full ‖ compressed), argmax agreement and NLL along the full cache's answer: each compressed setting
    # decodes it again, teacher-forced, compressing as it goes (infokv.engine.fidelity.ForcedSampler)
    fidelity: bool = True
    fidelity_tokens: int | None = 4096  # the answer's first this many tokens (null: all; cost: their decode)


@dataclass
class ShardConfig:
    index: int = 0  # this job's shard: it takes samples index, index + count, ...
    count: int = 1  # number of shards the benchmark is split into (merged when read)


@dataclass
class SlurmConfig:
    """Where ``launcher=slurm`` submits (``conf/launcher/slurm.yaml`` reads these; null: the cluster's
    default). Set once in your ``local`` config (``conf/local/example.yaml``)."""

    account: str | None = None  # Slurm account to charge
    partition: str | None = None  # Slurm partition
    qos: str | None = None  # Slurm QOS
    constraint: str | None = None  # node features, e.g. "h100|a100"


@dataclass
class JobConfig:
    """One job of ``infokv-run``: a model, a benchmark, a scenario, and methods at one or more budgets."""

    model: ModelConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    scenario: Any = MISSING  # PrefillScenario or DecodeScenario (group ``scenario``)
    methods: dict[str, Any] = field(default_factory=dict)  # label -> {name, parameters} (group ``method``)
    # prefill: ratio 0<r<=1, "20%" or a token count; decode: ratio of the generated tokens; a list shares
    # one prefill, as all methods of the job do
    budget: Any = 0.4
    cot: bool = False  # chain-of-thought prompt (true) or direct answer (false)
    seed: int = 0  # base seed; sample i of the benchmark uses seed + i
    max_new_tokens: int = "${benchmark.max_new_tokens}"  # type: ignore[assignment]
    batch_size: int = 4  # prompts prefilled and decoded together
    shard: ShardConfig = field(default_factory=ShardConfig)
    output_root: str = "runs"  # the folder of all run directories (presets use a subfolder of it)
    output_dir: str = "${output_root}"  # run directories go below this folder (resumable; not committed)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    dry_run: bool = False  # print what the job would compute and its cost, load no weights
    progress: bool = True  # progress bar over samples
    verbose: bool = False  # errors: one line (false) or the full traceback (true; also HYDRA_FULL_ERROR=1)
    wandb: str = "offline"  # offline (default; `wandb sync` later) | online | false (off)
    wandb_project: str = "infokv"


def method_schema(name: str) -> type:
    """A dataclass ``{name, <method fields>}`` with method ``name``'s defaults; a method that evicts
    nothing (``full``) has no fields that change its result, so its node holds the name alone."""
    method = methods.get(name)
    hints = typing.get_type_hints(type(method))
    fields = [(f.name, hints[f.name], f.default) for f in dataclasses.fields(method) if method.evicts]
    return dataclasses.make_dataclass(f"{type(method).__name__}Config", [("name", str, name), *fields])


def options_schema(benchmark: ModuleType) -> type:
    """A dataclass of the keyword options of ``benchmark.load`` (the tokenizer is the runner's)."""
    parameters = inspect.signature(benchmark.load, eval_str=True).parameters.items()
    fields = [
        (key, p.annotation, p.default) for key, p in parameters if key not in ("source", "limit", "tokenizer")
    ]
    return dataclasses.make_dataclass(f"{benchmark.__name__.rsplit('.', 1)[-1]}_options", fields)


def typed(schema: type, node: DictConfig | dict | None) -> DictConfig:
    """``node`` merged onto ``schema``'s defaults: a value of the wrong type or a key the schema lacks
    raises OmegaConf's ValidationError or ConfigKeyError, as a composed config would."""
    return OmegaConf.merge(OmegaConf.structured(schema), node or {})


def register_configs() -> None:
    """Store the schemas in Hydra's config store (idempotent): ``job_schema``, the ``model/hf`` option,
    the ``scenario`` options and every method of the ``method`` group."""
    # The user's config folder in conf/config.yaml's search path is optional; Hydra warns where it is absent.
    warnings.filterwarnings("ignore", message="provider=hydra.searchpath in main, path=.* is not available")
    store = ConfigStore.instance()
    store.store(name="job_schema", node=JobConfig)
    store.store(group="model", name="hf", node=ModelConfig)
    store.store(group="scenario", name="prefill", node=PrefillScenario)
    store.store(group="scenario", name="decode", node=DecodeScenario)
    for name in methods.available():
        store.store(group="method", name=name, node=method_schema(name), package=f"methods.{name}")
