"""Decoding at scale on one GPU: what compression buys in memory, and what that memory buys in tokens/s.

Model and prompts as in ``scripts/bench.py`` (Llama-3.1-8B's architecture, random bf16 weights, random
prompt ids), greedy decoding through ``infokv.generate`` with the prompt kept whole and the generated
part compressed every ``--every`` tokens. Settings (``--configs``): the full cache, and rpc and infokv at
ratios 0.25 and 0.125.

Measured (every figure is one run of the engine; ``floor`` columns use the copy bandwidth measured in the
same call):

* ``memory``: one run of ``--memory-batch`` rows, ``--prompt`` tokens, ``--memory-tokens`` new tokens, per
  compressing setting in ``--memory-configs``: peak GPU memory above the weights against the bytes of the
  largest cache the run holds (its peak entries per row × rows × bytes per entry), and its tokens/s.
* ``steps``: how long the engine's decoding takes against its bandwidth floor. A step's floor is
  (weight bytes + rows × entries × bytes per entry) / copy bandwidth, summed over a run's steps. For
  each setting, a run of ``--prefix`` new tokens at the batch that fills the GPU in the 16K setting
  (below) gives the ratio c = measured seconds / Σ step floors, which holds every cost of the engine
  (attention over spare slots, per-entry signals, compressions, sampling and the host's share).
* ``scale``: for 16K and 32K new tokens, the largest batch whose largest cache fits the GPU: rows =
  ⌊(free memory after the weights − ``--reserve-gib``) / (peak entries per row × bytes per entry × m)⌋,
  with m the memory ratio measured in ``memory`` (1 for the full cache, whose buffers hold exactly
  prompt + new tokens), and its tokens/s *estimated* as rows × new tokens / (c × Σ step floors over the
  setting's exact entry trajectory). Each row's cache entries at every step follow from the method's
  ``decode_target`` (:func:`trajectory`), so the estimate extrapolates only c. A measured run of 16K new
  tokens at those batches would take several minutes of device time per setting; ``--check`` measures one
  (setting, tokens) end to end and reports it beside its estimate.

Writes ``--csv`` (long form, as ``results/bench/gpu.csv``), ``--calls`` and ``--readme`` (the tables
below, from the two CSVs alone; ``--readme-only`` rewrites it from the committed ones, no GPU needed).

    python scripts/bench_scale.py                          # about 6 min on an H200
    python scripts/bench_scale.py --quick                  # every path at small sizes
    python scripts/bench_scale.py --readme-only            # results/bench/scale.md from the CSVs
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bench_calls
import bench_common
import torch
import transformers
from bench_calls import read_calls
from bench_common import Row, read_rows

from infokv import generate
from infokv.engine.decoding import DecodeCompression, decode_target

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
CONFIGS = ("full", "rpc@0.25", "rpc@0.125", "infokv@0.25", "infokv@0.125")


@dataclass(frozen=True)
class Config:
    """A decoding setting: the full cache, or ``method`` compressing the generated part to ``ratio``."""

    method: str
    ratio: float

    @classmethod
    def parse(cls, text: str) -> Config:
        if text == "full":
            return cls("full", 1.0)
        method, _, ratio = text.partition("@")
        return cls(method, float(ratio))

    @property
    def label(self) -> str:
        return "1" if self.method == "full" else f"{self.ratio:g}"

    def row(
        self, tokens: int, batch: int, metric: str, value: float, unit: str, floor: float | str = ""
    ) -> Row:
        """A row of this setting (``tokens``: the prompt's or the new tokens, as the metric says)."""
        return Row(self.method, self.label, tokens, batch, metric, value, unit, floor)

    def options(self, every: int) -> dict[str, object]:
        if self.method == "full":
            return {}
        return {"decode_method": self.method, "decode_ratio": self.ratio, "compress_every": every}


def trajectory(config: Config, prompt: int, new_tokens: int, every: int) -> list[int]:
    """Entries per row attended at each fed step g = 1 … new_tokens − 1 (the last sampled token is not fed):
    one more per step, and after each step g that is a multiple of ``every`` the compressed count
    prompt + min(g, target(g)) of :mod:`infokv.engine.decoding`."""
    if config.method == "full":
        return [prompt + step for step in range(1, new_tokens)]
    compression = DecodeCompression.build(config.method, config.ratio, every)
    entries, held = [], prompt
    for step in range(1, new_tokens):
        held += 1
        entries.append(held)
        if step % every == 0:
            held = prompt + min(step, decode_target(compression, step, prompt))
    return entries


class Scale:
    """The model, the device's bandwidth, and the rows measured so far."""

    def __init__(self, args: argparse.Namespace, ledger: bench_calls.Ledger) -> None:
        self.args = args
        self.ledger = ledger
        self.ceilings = bench_common.measure_ceilings()
        self.model = bench_common.build_model()
        _, self.weight_bytes = bench_common.parameter_count(self.model)
        self.entry_bytes = bench_common.kv_bytes_per_token(self.model.config)
        self.tokenizer = bench_common.word_tokenizer(self.model.config.vocab_size)
        self.rows: list[Row] = bench_common.ceiling_rows(self.ceilings)
        self.memory_ratio: dict[str, float] = {}
        self.floor_ratio: dict[Config, float] = {}

    def add(self, *rows: Row) -> None:
        for row in rows:
            row.call = self.ledger.call.call
        self.rows.extend(rows)
        self.ledger.write(self.rows)

    def floor_seconds(self, batch: int, entries: Sequence[int]) -> float:
        """Σ over steps of (weights + batch × entries × bytes per entry) / copy bandwidth."""
        read = len(entries) * self.weight_bytes + batch * sum(entries) * self.entry_bytes
        return read / self.ceilings.copy_bytes_per_second

    def run(self, config: Config, batch: int, new_tokens: int) -> dict[str, float]:
        """One timed ``generate`` of ``batch`` rows: seconds, peak memory above what was allocated before, and
        the largest per-row cache entries."""
        texts = [
            " ".join(f"t{i}" for i in row.tolist())
            for row in bench_common.prompt_ids(self.args.prompt, batch).cpu()
        ]
        options = {"stop_at_eos": False, "fidelity": False, **config.options(self.args.every)}
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        clock = time.perf_counter()
        completions = generate(
            self.model, self.tokenizer, texts, "full", 1.0, max_new_tokens=new_tokens, **options
        )
        torch.cuda.synchronize()
        seconds = time.perf_counter() - clock
        peak = torch.cuda.max_memory_allocated() - base
        entries = max(completion.stats["peak_cache_entries"] for completion in completions)
        del completions
        torch.cuda.empty_cache()
        return {"seconds": seconds, "peak": peak, "entries": entries}

    # parts
    def memory(self) -> None:
        args = self.args
        batch, new = args.memory_batch, args.memory_tokens
        for text in args.memory_configs:
            config = Config.parse(text)
            run = self.run(config, batch, new)
            largest = run["entries"] * batch * self.entry_bytes
            ratio = run["peak"] / largest
            self.memory_ratio[config.method] = max(ratio, self.memory_ratio.get(config.method, 0.0))
            floor = self.floor_seconds(batch, trajectory(config, args.prompt, new, args.every))
            rate = batch * new / run["seconds"]
            self.add(
                config.row(args.prompt, batch, "memory_peak_above_weights", run["peak"], "B", float(largest)),
                config.row(args.prompt, batch, "memory_largest_cache", largest, "B"),
                config.row(args.prompt, batch, "memory_ratio_to_largest_cache", ratio, "x"),
                config.row(args.prompt, batch, "memory_run_new_tokens", new, "tokens"),
                config.row(
                    args.prompt, batch, "memory_run_tokens_per_second", rate, "tokens/s", batch * new / floor
                ),
            )
            print(
                f"memory {text}: batch {batch}, {new} new tokens: peak {run['peak'] / GIB:.1f} GiB above the "
                f"weights for a largest cache of {largest / GIB:.1f} GiB ({ratio:.3f}x), "
                f"{rate:.0f} tokens/s",
                flush=True,
            )

    def fitting_batch(self, config: Config, new_tokens: int) -> int:
        """Rows whose largest caches fit the GPU's memory after the weights and ``--reserve-gib``."""
        entries = max(trajectory(config, self.args.prompt, new_tokens, self.args.every))
        ratio = (
            1.0 if config.method == "full" else self.memory_ratio.get(config.method, self.args.memory_ratio)
        )
        total = torch.cuda.get_device_properties(0).total_memory
        free = total - self.weight_bytes - self.args.reserve_gib * GIB
        return max(1, int(free // (entries * self.entry_bytes * ratio)))

    def steps(self) -> None:
        args = self.args
        for text in args.configs:
            config = Config.parse(text)
            batch = min(self.fitting_batch(config, args.tokens[0]), args.max_batch)
            run = self.run(config, batch, args.prefix)
            floor = self.floor_seconds(batch, trajectory(config, args.prompt, args.prefix, args.every))
            self.floor_ratio[config] = run["seconds"] / floor
            self.add(
                config.row(args.prompt, batch, "steps_prefix_tokens", args.prefix, "tokens"),
                config.row(args.prompt, batch, "steps_seconds", run["seconds"], "s", floor),
                config.row(args.prompt, batch, "steps_ratio_to_floor", self.floor_ratio[config], "x"),
            )
            print(
                f"steps {text}: batch {batch}, {args.prefix} new tokens in {run['seconds']:.1f} s, "
                f"{self.floor_ratio[config]:.2f}x the floor ({floor:.1f} s)",
                flush=True,
            )

    def estimate(self, config: Config, new_tokens: int, batch: int) -> float:
        """Estimated tokens/s of ``batch`` rows over ``new_tokens``: c × Σ step floors (see the docstring)."""
        entries = trajectory(config, self.args.prompt, new_tokens, self.args.every)
        return batch * new_tokens / (self.floor_ratio[config] * self.floor_seconds(batch, entries))

    def scale(self) -> None:
        args = self.args
        full = Config("full", 1.0)
        for new in args.tokens:
            configs = [Config.parse(text) for text in args.configs]
            batches = {config: self.fitting_batch(config, new) for config in configs}
            rates = {config: self.estimate(config, new, batches[config]) for config in configs}
            at_64 = {config: self.estimate(config, new, 64) for config in configs}
            for config in configs:
                batch = batches[config]
                entries = max(trajectory(config, args.prompt, new, args.every))
                self.add(
                    config.row(new, batch, "scale_batch_that_fits", batch, "rows"),
                    config.row(new, batch, "scale_peak_entries_per_row", entries, "tokens"),
                    config.row(new, batch, "scale_tokens_per_second_estimate", rates[config], "tokens/s"),
                )
            for config in configs:
                self.add(config.row(new, 64, "scale_tokens_per_second_estimate", at_64[config], "tokens/s"))
                compared = full in rates and config != full
                if compared:
                    self.add(
                        config.row(
                            new, 0, "scale_speedup_equal_memory_estimate", rates[config] / rates[full], "x"
                        ),
                        config.row(
                            new, 64, "scale_speedup_equal_batch_estimate", at_64[config] / at_64[full], "x"
                        ),
                    )
                print(
                    f"scale {new} new tokens: {config.method}@{config.label}: {rates[config]:.0f} tokens/s "
                    f"at {batches[config]} rows"
                    + (f" = {rates[config] / rates[full]:.2f}x the full cache" if compared else ""),
                    flush=True,
                )

    def profile(self, text: str, out: Path) -> None:
        """Kernel times of a short run of ``text`` at ``--memory-batch`` rows (torch.profiler), to ``out``."""
        config = Config.parse(text)
        self.run(config, self.args.memory_batch, 64)  # warm-up: graphs, allocator
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as profiler:
            run = self.run(config, self.args.memory_batch, self.args.every + 65)
        table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=30)
        out.write_text(f"{text}: {run}\n{table}\n")
        print(table[:6000], flush=True)

    def check(self) -> None:
        """One (setting, new tokens) run end to end at the batch that fits, beside its estimate."""
        text, new = self.args.check
        config, new = Config.parse(text), int(new)
        batch = min(self.fitting_batch(config, new), self.args.max_batch)
        run = self.run(config, batch, new)
        measured = batch * new / run["seconds"]
        estimate = self.estimate(config, new, batch)
        self.add(
            config.row(new, batch, "check_tokens_per_second", measured, "tokens/s"),
            config.row(new, batch, "check_estimate_error", estimate / measured - 1, "x"),
        )
        print(f"check {text} {new}: {measured:.0f} tokens/s measured, {estimate:.0f} estimated", flush=True)


def _pick(rows: Sequence[Row], metric: str, **match) -> list[Row]:
    return [r for r in rows if r.metric == metric and all(getattr(r, k) == v for k, v in match.items())]


def _value(rows: Sequence[Row], metric: str, **match) -> float | None:
    found = _pick(rows, metric, **match)
    return found[0].value if found else None


def _fmt(number: float | None, pattern: str) -> str:
    return "–" if number is None else format(number, pattern)


def render(rows: Sequence[Row], calls: Sequence[bench_calls.Call]) -> str:
    """The README of ``scale.csv``: the calls, then memory, engine time against its floor, and the scale
    estimates, every figure read from ``rows``."""
    lines = [
        "# Decoding at scale (`scripts/bench_scale.py`)",
        "",
        "Written by `python scripts/bench_scale.py --readme-only` from `scale.csv` and `scale_calls.csv`;",
        "the script's docstring says how each figure is measured or estimated.",
        "",
        "| call | commit | command | device | software |",
        "|---|---|---|---|---|",
        *[f"| {c.call} | {c.commit} | `{c.command}` | {c.device} | {c.software} |" for c in calls],
        "",
        "## Memory: peak above the weights against the largest cache the run holds",
        "",
        "| method | ratio | rows | new tokens | largest cache (GiB) | peak above weights (GiB) "
        "| peak / cache | tokens/s | floor tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in _pick(rows, "memory_ratio_to_largest_cache"):
        match = {"method": row.method, "budget": row.budget, "batch": row.batch}
        rate = _pick(rows, "memory_run_tokens_per_second", **match)
        lines.append(
            f"| {row.method} | {row.budget} | {row.batch} | "
            f"{_fmt(_value(rows, 'memory_run_new_tokens', **match), '.0f')} | "
            f"{_fmt(_value(rows, 'memory_largest_cache', **match) / GIB, '.1f')} | "
            f"{_fmt(_value(rows, 'memory_peak_above_weights', **match) / GIB, '.1f')} | {row.value:.3f} | "
            f"{_fmt(rate[0].value if rate else None, '.0f')} | "
            f"{_fmt(float(rate[0].floor) if rate and rate[0].floor != '' else None, '.0f')} |"
        )
    lines += [
        "",
        "## Engine time against its bandwidth floor (c), at the rows that fill the GPU for 16K new tokens",
        "",
        "| method | ratio | rows | new tokens | seconds | floor seconds | c |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in _pick(rows, "steps_ratio_to_floor"):
        match = {"method": row.method, "budget": row.budget, "batch": row.batch}
        seconds = _pick(rows, "steps_seconds", **match)[0]
        lines.append(
            f"| {row.method} | {row.budget} | {row.batch} | "
            f"{_fmt(_value(rows, 'steps_prefix_tokens', **match), '.0f')} | {seconds.value:.1f} | "
            f"{float(seconds.floor):.1f} | {row.value:.2f} |"
        )
    lines += [
        "",
        "## Throughput at equal memory and at equal batch (estimates: c × Σ step floors)",
        "",
        "Rows that fit take m (peak / cache) from the memory table for the method, else `--memory-ratio`"
        " (1.25 by default); the full cache's take m = 1. Tokens/s at 64 rows are estimated whether or not"
        " 64 rows fit.",
        "",
        "| new tokens | method | ratio | rows that fit | peak entries per row | tokens/s "
        "| × full (equal memory) | tokens/s at 64 rows | × full (64 rows) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in _pick(rows, "scale_batch_that_fits"):
        match = {"method": row.method, "budget": row.budget, "prompt_tokens": row.prompt_tokens}
        lines.append(
            f"| {row.prompt_tokens} | {row.method} | {row.budget} | {row.value:.0f} | "
            f"{_fmt(_value(rows, 'scale_peak_entries_per_row', batch=row.batch, **match), '.0f')} | "
            f"{_fmt(_value(rows, 'scale_tokens_per_second_estimate', batch=row.batch, **match), '.0f')} | "
            f"{_fmt(_value(rows, 'scale_speedup_equal_memory_estimate', **match), '.2f')} | "
            f"{_fmt(_value(rows, 'scale_tokens_per_second_estimate', batch=64, **match), '.0f')} | "
            f"{_fmt(_value(rows, 'scale_speedup_equal_batch_estimate', batch=64, **match), '.2f')} |"
        )
    checks = _pick(rows, "check_tokens_per_second")
    if checks:
        lines += [
            "",
            "## Estimates checked end to end",
            "",
            "| method | ratio | new tokens | rows | measured tokens/s | estimate / measured − 1 |",
            "|---|---|---|---|---|---|",
        ]
        for row in checks:
            error = _value(
                rows, "check_estimate_error", method=row.method, budget=row.budget, batch=row.batch
            )
            lines.append(
                f"| {row.method} | {row.budget} | {row.prompt_tokens} | {row.batch} | {row.value:.0f} | "
                f"{_fmt(error, '+.1%')} |"
            )
    return "\n".join(lines) + "\n"


def write_readme(csv: Path, calls: Path, out: Path) -> None:
    out.write_text(render(read_rows([csv]), read_calls(calls)))
    print(f"wrote {out}", flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--every", type=int, default=1024, help="compress_every")
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=[16384, 32768], help="new tokens to estimate"
    )
    parser.add_argument("--prefix", type=int, default=1281, help="new tokens of the runs that measure c")
    parser.add_argument("--memory-configs", nargs="+", default=["infokv@0.25", "rpc@0.25"])
    parser.add_argument("--memory-batch", type=int, default=64)
    parser.add_argument("--memory-tokens", type=int, default=8192)
    parser.add_argument("--memory-ratio", type=float, default=1.25, help="m when memory did not run")
    parser.add_argument("--reserve-gib", type=float, default=8.0, help="memory left for activations")
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--check", nargs=2, metavar=("CONFIG", "TOKENS"))
    parser.add_argument("--parts", nargs="+", default=["memory", "steps", "scale"])
    parser.add_argument("--profile", nargs=2, metavar=("CONFIG", "FILE"), help="kernel times of a short run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--csv", type=Path, default=ROOT / "results/bench/scale.csv")
    parser.add_argument("--calls", type=Path, default=ROOT / "results/bench/scale_calls.csv")
    parser.add_argument("--readme", type=Path, default=ROOT / "results/bench/scale.md")
    parser.add_argument("--readme-only", action="store_true", help="rewrite --readme from --csv and --calls")
    parser.add_argument("--merge", action="store_true")
    parser.add_argument("--call")
    parser.add_argument("--commit")
    args = parser.parse_args(argv)
    for text in [*args.configs, *args.memory_configs]:
        config = Config.parse(text)
        if config.method != "full":
            DecodeCompression.build(config.method, config.ratio, args.every)
    if args.quick:
        args.prompt, args.every, args.tokens, args.prefix = 128, 32, [256], 70
        args.memory_batch, args.memory_tokens, args.max_batch = 8, 100, 16
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.readme_only:
        write_readme(args.csv, args.calls, args.readme)
        return
    if not torch.cuda.is_available():
        raise SystemExit("scripts/bench_scale.py needs a CUDA GPU")
    call = bench_calls.Call(
        call=args.call or datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        commit=args.commit or bench_calls.current_commit(ROOT),
        command=bench_calls.measuring_command(argv, "scripts/bench_scale.py"),
        device=torch.cuda.get_device_name(),
        software=f"torch {torch.__version__}, transformers {transformers.__version__}",
    )
    scale = Scale(args, bench_calls.Ledger.open(args.csv, args.calls, call, args.merge))
    if args.profile:
        scale.profile(args.profile[0], Path(args.profile[1]))
    if "memory" in args.parts:
        scale.memory()
    if "steps" in args.parts or "scale" in args.parts or args.check:
        scale.steps()
    if "scale" in args.parts:
        scale.scale()
    if args.check:
        scale.check()
    print(f"wrote {args.csv}: {len(scale.rows)} rows", flush=True)
    write_readme(args.csv, args.calls, args.readme)


if __name__ == "__main__":
    main()
