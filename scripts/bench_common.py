"""What the benchmark processes share: the GPU model and prompts, timing, ceilings, floors and CSV rows.

Imports only torch and transformers (no infokv), so that the kvpress process, which runs with its
own older transformers, builds exactly the same model and prompts.
"""

from __future__ import annotations

import csv
import functools
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

FIELDS = ("method", "budget", "prompt_tokens", "batch", "metric", "value", "unit", "floor", "call")
SEED = 0
PROMPT_VOCAB = 128000
"""Prompt ids are drawn below Llama-3's special tokens."""


@dataclass
class Row:
    """One measured figure, in long form; ``floor`` is its physical bound where one is defined, ``call`` the
    run of ``scripts/bench.py`` that measured it (its command and commit: ``results/bench/calls.csv``)."""

    method: str
    budget: str
    prompt_tokens: int
    batch: int
    metric: str
    value: float
    unit: str
    floor: float | str = ""
    call: str = ""


def llama_8b_config() -> LlamaConfig:
    """Llama-3.1-8B's architecture (weights are random: speed does not depend on them)."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def attention_implementation() -> str:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    return "flash_attention_2"


def build_model(config: LlamaConfig | None = None) -> LlamaForCausalLM:
    """A bf16 random-weight model built directly on the GPU, seeded."""
    config = config or llama_8b_config()
    config._attn_implementation = attention_implementation()
    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def prompt_ids(tokens: int, batch: int = 1) -> torch.Tensor:
    """(batch, tokens) random prompt ids on the GPU; the same for a given length in every process."""
    generator = torch.Generator().manual_seed(SEED + tokens)
    return torch.randint(0, PROMPT_VOCAB, (batch, tokens), generator=generator).cuda()


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer whose words 't<id>' are the token ids: lets the engine's text API run on random ids."""
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="t128000", eos_token="t128001", pad_token="t128002"
    )


def parameter_count(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters used per token in matrix products, bytes read per decoding step): all but the input
    embedding, whose rows are looked up; an LM head tied to it still counts, as a product."""
    embedding = model.get_input_embeddings().weight
    matrix = sum(p.numel() for p in model.parameters()) - embedding.numel()  # tied weights listed once
    if model.get_output_embeddings().weight is embedding:
        matrix += embedding.numel()
    return matrix, matrix * embedding.element_size()


def attention_flops(config: LlamaConfig, queries: int, keys: int) -> float:
    """FLOPs of causal attention (q·kᵀ and p·v) for ``queries`` new tokens after ``keys − queries`` cached."""
    past = keys - queries
    pairs = queries * past + queries * (queries + 1) / 2
    head_dim = config.hidden_size // config.num_attention_heads
    return 4.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * pairs


def prefill_flops(model: LlamaForCausalLM, tokens: int) -> float:
    """2 · matrix parameters · T (the LM head only at the last token) + causal attention."""
    matrix, _ = parameter_count(model)
    head = model.get_output_embeddings().weight.numel()
    return 2.0 * (matrix - head) * tokens + 2.0 * head + attention_flops(model.config, tokens, tokens)


def kv_bytes_per_token(config: LlamaConfig, itemsize: int = 2) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize


def median_seconds(
    function: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cuda"
) -> tuple[float, list[float]]:
    """Median time of ``function`` after ``warmup`` untimed calls: between CUDA events on the GPU, by the
    wall clock on the CPU."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if device == "cpu":
            clock = time.perf_counter()
            function()
            times.append(time.perf_counter() - clock)
            continue
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        function()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1000.0)
    return statistics.median(times), times


@dataclass
class Ceilings:
    """The device's measured matrix rate and copy bandwidth."""

    matmul_flops: float
    copy_bytes_per_second: float


def measure_ceilings(repeats: int = 10, device: str = "cuda") -> Ceilings:
    """Matrix product rate on random data and copy bandwidth (read + write bytes): on the GPU bf16 8192³
    and a 4 GiB copy; on the CPU fp32 2048³ and a 256 MiB copy (larger than any cache)."""
    size, dtype, elements = (
        (8192, torch.bfloat16, 1 << 30) if device == "cuda" else (2048, torch.float32, 1 << 26)
    )
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    matmul, _ = median_seconds(functools.partial(torch.matmul, a, b), repeats, warmup=3, device=device)
    source = torch.randn(elements, device=device)
    target = torch.empty_like(source)
    copy, _ = median_seconds(functools.partial(target.copy_, source), repeats, warmup=3, device=device)
    moved = 2 * source.numel() * source.element_size()
    return Ceilings(2.0 * size**3 / matmul, moved / copy)


def ceiling_rows(ceilings: Ceilings) -> list[Row]:
    return [
        Row("device", "", 0, 0, "matmul_rate", ceilings.matmul_flops / 1e12, "TFLOP/s"),
        Row("device", "", 0, 0, "copy_bandwidth", ceilings.copy_bytes_per_second / 1e9, "GB/s"),
    ]


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            record = asdict(row)
            for name in ("value", "floor"):
                if isinstance(record[name], float):
                    record[name] = f"{record[name]:.6g}"
            writer.writerow(record)


def read_rows(paths: Iterable[Path]) -> list[Row]:
    rows = []
    for path in paths:
        with path.open() as handle:
            for record in csv.DictReader(handle):
                floor = record["floor"]
                rows.append(
                    Row(
                        record["method"],
                        record["budget"],
                        int(record["prompt_tokens"]),
                        int(record["batch"]),
                        record["metric"],
                        float(record["value"]),
                        record["unit"],
                        float(floor) if floor else "",
                        record.get("call") or "",
                    )
                )
    return rows
