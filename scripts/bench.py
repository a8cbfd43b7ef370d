"""Speed and memory of every method on one GPU, beside NVIDIA kvpress and the physical floors.

Model: Llama-3.1-8B's architecture with random bf16 weights built on the GPU (speed does not
depend on the weights), sdpa attention (flash-attention 2 when installed). Prompts: seeded random
token ids, one per length, identical in the kvpress process.

Parts (``--parts``; all by default):

* ``ceilings``: bf16 8192³ matrix-product rate and device-to-device copy bandwidth (read + write
  bytes), measured in the same run; every floor below comes from them.
* ``prefill``: for each method, one chunked capture prefill (``infokv.engine.capture.prefill``, the
  signals the method needs) and one compression per budget (``engine.compress_settings``), timed
  with CUDA events: median of ``--repeats`` after a warm-up. Nothing waits for the device between
  the two, as in ``generate``, so the compression's time is what it adds after the prefill's last
  kernel (its host-side launches overlap the prefill's tail). Rows: prefill, compress, prefill +
  compress seconds (floor: (2 · matrix params · T + causal attention FLOPs [+ the LM head over T
  for entropy]) / matrix rate), ratio to the full-cache prefill, peak GPU memory (floor: weights
  + full cache), signal memory (peak of the method's prefill − peak of the full prefill), KV bytes
  after compression (floor: kept tokens × bytes per token).
* ``plain``: the reference prefill: one plain transformers forward of the same model over the whole
  prompt (the model's own sdpa attention, ``logits_to_keep=1``, the cache returned; no chunks, no
  hooks), median of ``--repeats`` after a warm-up, and its peak GPU memory above the weights. Our
  chunked full prefill is timed beside it where the ``prefill`` part did not run. Every prefill
  + compression time and peak memory of the call is also reported over it
  (``ratio_to_plain_forward``, ``peak_memory_ratio_to_plain_forward``); a length where it runs out of
  memory gets an ``out_of_memory`` row.
* ``decode``: greedy steps through the engine's decoding step
  (:class:`infokv.engine.graphed_decode.GraphedDecoder`,
  the captured CUDA graph that ``decoding.decode`` replays) on each
  compressed cache, batch 1 and 16 (batch 16 = the compressed row repeated, skipped where it does
  not fit): tokens/s (floor: batch / ((weights + KV bytes read) / copy bandwidth)).
* ``sweep``: ``generate_sweep`` over every method × budget on one prompt vs ``generate`` with the
  full cache, same prompt and new tokens (issue 7: ≤ 1.5×).
* ``scenario``: the decoding scenario — ``generate`` with decoding compression (``--scenario-methods``;
  rpc and infokv at ratio 0.25, every ``--compress-every`` tokens) vs the full cache over
  ``--scenario-tokens`` new tokens (16K) after a ``--scenario-prompt``-token prompt, batch 1. Every
  run replays captured CUDA graphs between compressions (:mod:`infokv.engine.graphed_decode`).
* ``kvpress``: kvpress 0.5.5's SnapKV, StreamingLLM, PyramidKV and ExpectedAttention presses in a
  separate process with their own transformers (``scripts/bench_kvpress.py``; wheels from
  ``make bench-wheels``, installed with pip into ``--kvpress-site``).

Writes ``--csv`` (long form: method, budget, prompt_tokens, batch, metric, value, unit, floor,
call), records the call (command, commit, device, software) in ``--calls``, draws ``--figure`` and
writes ``--readme`` from the two CSVs (``scripts/bench_readme.py``). With ``--merge`` the call's rows
replace those of ``--csv`` that measure the same thing and the other rows stay, which is how the
committed ``results/bench/gpu.csv`` joins calls (``scripts/bench_calls.py``). ``--plot-only CSV...``
redraws the figure from CSVs of several runs.

    python scripts/bench.py                        # everything, about 15 min on an H200
    python scripts/bench.py --parts ceilings prefill decode --lengths 8192 32768
    python scripts/bench.py --parts plain --lengths 8192 65536 --merge   # add the reference prefill
    python scripts/bench.py --quick                # every code path at small sizes, about 1 min
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import bench_calls
import bench_common
import bench_readme
import torch
import transformers
from bench_common import Row

from infokv import generate, generate_sweep, methods
from infokv.engine.capture import prefill
from infokv.engine.graphed_decode import GraphedDecoder
from infokv.engine.sweep import Setting, compress_settings

PARTS = ("ceilings", "prefill", "plain", "decode", "sweep", "scenario", "kvpress")
PLAIN = "plain_forward"
"""Method name of the plain transformers forward's rows."""
PLAIN_REFERENCES = {
    "prefill_compress_seconds": ("prefill_seconds", "ratio_to_plain_forward"),
    "peak_memory_bytes": ("peak_memory_bytes", "peak_memory_ratio_to_plain_forward"),
}
"""A row's metric -> (the plain forward's metric it is divided by, the ratio's metric)."""
KVPRESS_METHODS = ("snapkv", "streamingllm", "pyramidkv", "expected_attention")
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--methods", nargs="+", default=methods.available("prefill"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; medians")
    parser.add_argument("--chunk", type=int, default=4096, help="prefill chunk (tokens)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--sweep-tokens", type=int, default=32768, help="prompt length of the sweep part")
    parser.add_argument("--sweep-new-tokens", type=int, default=64)
    parser.add_argument("--scenario-prompt", type=int, default=1024)
    parser.add_argument("--scenario-tokens", type=int, default=16384, help="new tokens (issue 7: 16K)")
    parser.add_argument(
        "--scenario-methods",
        nargs="+",
        default=["full", "rpc", "infokv"],
        choices=methods.available("decode"),
        help="full = no decoding compression; overheads are against the full run of the same call",
    )
    parser.add_argument("--compress-every", type=int, default=1024)
    parser.add_argument("--kvpress-lengths", type=int, nargs="+", help="default: --lengths")
    parser.add_argument("--kvpress-wheels", type=Path, default=ROOT / ".whl-kvpress")
    parser.add_argument("--kvpress-site", type=Path, default=Path("/tmp/kvp"))
    parser.add_argument("--quick", action="store_true", help="every part at small sizes (a smoke test)")
    parser.add_argument("--csv", type=Path, default=ROOT / "results/bench/gpu.csv")
    parser.add_argument(
        "--merge", action="store_true", help="replace only the rows this call measures in --csv"
    )
    parser.add_argument("--calls", type=Path, default=ROOT / "results/bench/calls.csv")
    parser.add_argument("--readme", type=Path, default=ROOT / "results/bench/README.md")
    parser.add_argument("--call", help="this call's id in the rows and --calls (default: the UTC start time)")
    parser.add_argument("--commit", help="the code's commit (default: git's HEAD, + when the tree differs)")
    parser.add_argument("--figure", type=Path, default=ROOT / "results/figures/bench_gpu.png")
    parser.add_argument("--plot-only", type=Path, nargs="+", help="redraw the figure from these CSVs")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats, args.decode_steps = [2048], 1, 4
        args.sweep_tokens, args.sweep_new_tokens = 2048, 4
        args.scenario_prompt, args.scenario_tokens, args.compress_every = 256, 96, 32
    unknown = sorted(set(args.methods) - set(methods.available("prefill")))
    if unknown:
        parser.error(f"--methods {unknown} not among {methods.available('prefill')}")
    if min(args.lengths) < 256 or args.repeats < 1 or args.decode_steps < 1:
        parser.error("--lengths must be >= 256 tokens, --repeats and --decode-steps >= 1")
    if any(not 0 < budget < 1 for budget in args.budgets):
        parser.error(f"--budgets {args.budgets} must lie in (0, 1)")
    return args


class Bench:
    """The model, the device's ceilings, the rows measured so far and where they are written."""

    def __init__(
        self, args: argparse.Namespace, ceilings: bench_common.Ceilings, ledger: bench_calls.Ledger
    ) -> None:
        self.args = args
        self.ledger = ledger
        self.ceilings = ceilings
        self.model = bench_common.build_model()
        self.config = self.model.config
        self.matrix_params, self.weight_bytes = bench_common.parameter_count(self.model)
        self.token_bytes = bench_common.kv_bytes_per_token(self.config)
        self.rows: list[Row] = []
        self.full_prefill: dict[int, float] = {}
        self.full_peak: dict[int, int] = {}
        self.full_rate: dict[tuple[int, int], float] = {}

    def add(self, *rows: Row) -> None:
        """Keep ``rows``, stamped with this call's id."""
        for row in rows:
            row.call = row.call or self.ledger.call.call
        self.rows.extend(rows)

    # floors
    def prefill_floor(self, tokens: int, method: str) -> float:
        flops = bench_common.prefill_flops(self.model, tokens)
        if method == "infokv":  # entropy needs the LM head at every position
            flops += 2.0 * self.model.get_output_embeddings().weight.numel() * tokens
        return flops / self.ceilings.matmul_flops

    def decode_floor(self, batch: int, kv_bytes_per_row: int) -> float:
        """Tokens/s if each step only read the weights and every row's cache once."""
        step = (self.weight_bytes + batch * kv_bytes_per_row) / self.ceilings.copy_bytes_per_second
        return batch / step

    # parts
    def prefill_and_decode(self, tokens: int, name: str, parts: Sequence[str]) -> None:
        args = self.args
        ids = bench_common.prompt_ids(tokens)
        valid = torch.ones_like(ids, dtype=torch.bool)
        settings = {budget: Setting.build(name, budget) for budget in args.budgets}
        method = settings[args.budgets[0]].method
        requirements = method.requirements()
        evicts = method.evicts
        budgets = args.budgets if evicts else [1.0]
        timed = "prefill" in parts
        runs = args.repeats + 1 if timed else 1
        prefill_times, compress_times = [], {budget: [] for budget in budgets}
        for run in range(runs):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            events = [torch.cuda.Event(enable_timing=True) for _ in range(len(budgets) + 2)]
            events[0].record()
            state, captured, _ = prefill(self.model, ids, valid, requirements, args.chunk)
            events[1].record()
            # No synchronisation before compressing, as in generate: the compression's launches queue up
            # behind the prefill's kernels. Peaks are the allocator's host-side counts, exact without one.
            prefill_peak = torch.cuda.max_memory_allocated() - base
            torch.cuda.reset_peak_memory_stats()
            compressed = {}
            for index, budget in enumerate(budgets):
                if evicts:
                    with torch.inference_mode():
                        compressed[budget] = compress_settings(state, captured, [settings[budget]])[0]
                else:
                    compressed[budget] = state
                events[index + 2].record()
            torch.cuda.synchronize()
            compress_peak = torch.cuda.max_memory_allocated() - base
            if run > 0 or not timed:
                prefill_times.append(events[0].elapsed_time(events[1]) / 1000)
                for index, budget in enumerate(budgets):
                    compress_times[budget].append(events[index + 1].elapsed_time(events[index + 2]) / 1000)
            if run < runs - 1:
                del state, captured, compressed
        full_bytes = tokens * self.token_bytes
        if timed:
            self.record_prefill(tokens, name, budgets, prefill_times, compress_times)
            if not evicts:
                self.full_peak[tokens] = prefill_peak
            for budget in budgets:
                label = f"{budget:g}"
                kv = compressed[budget].nbytes()
                kept = tokens if not evicts else int(torch.ceil(torch.tensor(budget * tokens)))
                self.add(
                    Row(
                        name,
                        label,
                        tokens,
                        1,
                        "peak_memory_bytes",
                        max(prefill_peak, compress_peak),
                        "B",
                        float(full_bytes + kv if evicts else full_bytes),
                    ),
                    Row(name, label, tokens, 1, "kv_bytes", kv, "B", float(kept * self.token_bytes)),
                    Row(name, label, tokens, 1, "kv_ratio_to_full", kv / full_bytes, "x"),
                )
                if tokens in self.full_peak:
                    overhead = prefill_peak - self.full_peak[tokens]
                    self.add(
                        Row(name, label, tokens, 1, "signal_memory_bytes", overhead, "B", 0.0),
                        Row(
                            name,
                            label,
                            tokens,
                            1,
                            "signal_memory_ratio_to_full_kv",
                            overhead / full_bytes,
                            "x",
                        ),
                    )
        del state, captured
        if "decode" in parts:
            for budget in budgets:
                for batch in args.batches:
                    self.decode(tokens, name, budget, batch, compressed[budget], evicts)
        del compressed
        torch.cuda.empty_cache()

    def record_prefill(self, tokens, name, budgets, prefill_times, compress_times) -> None:
        median = statistics.median
        prefill_seconds = median(prefill_times)
        floor = self.prefill_floor(tokens, name)
        if name == "full":
            self.full_prefill[tokens] = prefill_seconds
        reference = self.full_prefill.get(tokens)
        for budget in budgets:
            label = f"{budget:g}"
            total = median(p + c for p, c in zip(prefill_times, compress_times[budget], strict=True))
            if name == "full":
                total = prefill_seconds  # the full cache needs no compression step
            self.add(
                Row(name, label, tokens, 1, "prefill_seconds", prefill_seconds, "s", floor),
                Row(name, label, tokens, 1, "compress_seconds", median(compress_times[budget]), "s"),
                Row(name, label, tokens, 1, "prefill_compress_seconds", total, "s", floor),
            )
            if reference:
                self.add(Row(name, label, tokens, 1, "ratio_to_full_prefill", total / reference, "x"))
            print(
                f"{name}@{label} T={tokens}: prefill {prefill_seconds:.3f} s, "
                f"+compress {total:.3f} s (floor {floor:.3f} s)",
                flush=True,
            )

    def unchunked(self, tokens: int, name: str) -> None:
        """Prefill + compression with the whole prompt in one chunk, as kvpress runs it (the like-for-like
        comparison with kvpress; the ``prefill`` part uses ``--chunk``)."""
        ids = bench_common.prompt_ids(tokens)
        valid = torch.ones_like(ids, dtype=torch.bool)
        for budget in self.args.budgets:
            setting = Setting.build(name, budget)

            def run(setting: Setting = setting) -> None:
                with torch.inference_mode():
                    needs = setting.method.requirements()
                    state, captured, _ = prefill(self.model, ids, valid, needs, tokens)
                    compress_settings(state, captured, [setting])

            seconds, _ = bench_common.median_seconds(run, self.args.repeats)
            floor = self.prefill_floor(tokens, name)
            label = f"{budget:g}"
            self.add(Row(name, label, tokens, 1, "unchunked_prefill_compress_seconds", seconds, "s", floor))
            print(f"{name}@{label} T={tokens}: unchunked prefill + compress {seconds:.3f} s", flush=True)
        torch.cuda.empty_cache()

    def plain_forward(self, tokens: int) -> None:
        """One transformers forward over the whole prompt, as an unmodified Hugging Face prefill runs it:
        the reference that our chunked prefill and every method's prefill + compression are held to."""
        ids = bench_common.prompt_ids(tokens)

        def run() -> None:
            with torch.inference_mode():
                self.model(input_ids=ids, use_cache=True, logits_to_keep=1)

        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds, _ = bench_common.median_seconds(run, self.args.repeats)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            self.add(Row(PLAIN, "1", tokens, 1, "out_of_memory", 1.0, "count"))
            print(f"plain forward T={tokens}: out of GPU memory", flush=True)
            return
        peak = torch.cuda.max_memory_allocated() - base
        full_bytes = float(tokens * self.token_bytes)
        self.add(
            Row(PLAIN, "1", tokens, 1, "prefill_seconds", seconds, "s", self.prefill_floor(tokens, "full")),
            Row(PLAIN, "1", tokens, 1, "peak_memory_bytes", peak, "B", full_bytes),
        )
        print(f"plain forward T={tokens}: {seconds:.3f} s, peak {peak / 2**30:.2f} GiB above the weights")
        torch.cuda.empty_cache()

    def measured(self) -> list[Row]:
        """This call's rows and their ratios to the plain forward."""
        return self.rows + plain_forward_ratios(self.rows)

    def write(self) -> list[Row]:
        """Write ``--csv`` and ``--calls`` as they stand (merged with ``--merge``); return all the rows."""
        return self.ledger.write(self.measured())

    def decode(self, tokens: int, name: str, budget: float, batch: int, state, evicts: bool) -> None:
        row_bytes = state.nbytes()
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        growth = batch * (self.args.decode_steps + 8) * self.token_bytes * 2
        if batch > 1 and batch * row_bytes * 1.15 + growth > free:
            print(
                f"skip decode {name}@{budget:g} T={tokens} batch {batch}: "
                f"{batch * row_bytes / 2**30:.0f} GiB does not fit",
                flush=True,
            )
            return
        steps = self.args.decode_steps
        token = torch.ones(batch, dtype=torch.long, device="cuda")
        with torch.inference_mode():
            rows = state.select_rows(torch.zeros(batch, dtype=torch.long, device="cuda"))
            positions = torch.full((batch,), tokens, dtype=torch.long, device="cuda")
            decoder = GraphedDecoder(self.model, rows, positions, steps + 4)

        def step() -> None:
            nonlocal token
            with torch.inference_mode():
                token = decoder(token).argmax(dim=-1)

        for _ in range(4):
            step()
        seconds, _ = bench_common.median_seconds(lambda: [step() for _ in range(steps)], 1, warmup=0)
        rate = batch * steps / seconds
        label = f"{budget:g}"
        self.add(
            Row(
                name,
                label,
                tokens,
                batch,
                "decode_tokens_per_second",
                rate,
                "tokens/s",
                self.decode_floor(batch, row_bytes),
            )
        )
        if not evicts:
            self.full_rate[(tokens, batch)] = rate
        reference = self.full_rate.get((tokens, batch))
        if reference:
            self.add(Row(name, label, tokens, batch, "decode_speedup_vs_full", rate / reference, "x"))
        print(
            f"decode {name}@{label} T={tokens} batch {batch}: {rate:.1f} tokens/s "
            f"(floor {self.decode_floor(batch, row_bytes):.1f})",
            flush=True,
        )

    def sweep(self) -> None:
        args = self.args
        tokens = args.sweep_tokens
        tokenizer = bench_common.word_tokenizer(self.config.vocab_size)
        text = " ".join(f"t{i}" for i in bench_common.prompt_ids(tokens)[0].tolist())
        settings = [(name, budget) for name in args.methods for budget in args.budgets]
        new = args.sweep_new_tokens
        # The engine's speed, not the fidelity pass infokv-run adds (one more forward per setting).
        options = {
            "max_new_tokens": new,
            "stop_at_eos": False,
            "prefill_chunk": args.chunk,
            "fidelity": False,
        }
        phases = {}

        def full() -> None:
            phases["full"] = generate(self.model, tokenizer, [text], "full", 1.0, **options)[0].stats

        def sweep() -> None:
            phases["sweep"] = generate_sweep(self.model, tokenizer, [text], settings, **options)[0][0].stats

        full_seconds, _ = bench_common.median_seconds(full, args.repeats)
        sweep_seconds, _ = bench_common.median_seconds(sweep, args.repeats)
        label = f"{len(settings)} settings"
        self.add(
            Row("full", "1", tokens, 1, "generate_seconds", full_seconds, "s"),
            Row("sweep", label, tokens, 1, "generate_sweep_seconds", sweep_seconds, "s"),
            Row("sweep", label, tokens, 1, "sweep_ratio_to_full", sweep_seconds / full_seconds, "x"),
        )
        for run, stats in phases.items():
            for phase in ("prefill", "compress", "decode"):
                self.add(
                    Row(
                        run,
                        label if run == "sweep" else "1",
                        tokens,
                        1,
                        f"{phase}_seconds_engine",
                        stats[f"{phase}_seconds"],
                        "s",
                    )
                )
        print(
            f"sweep of {len(settings)} settings, T={tokens}, {new} new tokens: {sweep_seconds:.2f} s vs full "
            f"{full_seconds:.2f} s = {sweep_seconds / full_seconds:.2f}x; phases {phases}",
            flush=True,
        )
        torch.cuda.empty_cache()

    def scenario(self) -> None:
        args = self.args
        tokenizer = bench_common.word_tokenizer(self.config.vocab_size)
        text = " ".join(f"t{i}" for i in bench_common.prompt_ids(args.scenario_prompt)[0].tolist())
        seconds = {}
        for name in args.scenario_methods:
            decode_method = None if name == "full" else name
            options = {
                "stop_at_eos": False,
                "decode_method": decode_method,
                "decode_ratio": 0.25,
                "fidelity": False,
            }
            generate(
                self.model, tokenizer, [text], "full", 1.0, max_new_tokens=40, compress_every=16, **options
            )
            torch.cuda.synchronize()
            clock = time.perf_counter()
            completion = generate(
                self.model,
                tokenizer,
                [text],
                "full",
                1.0,
                max_new_tokens=args.scenario_tokens,
                compress_every=args.compress_every,
                **options,
            )[0]
            torch.cuda.synchronize()
            seconds[name] = time.perf_counter() - clock
            stats = completion.stats
            label = "0.25" if decode_method else "1"
            new = stats["generated_tokens"]
            self.add(
                Row(name, label, args.scenario_prompt, 1, "scenario_seconds", seconds[name], "s"),
                Row(
                    name,
                    label,
                    args.scenario_prompt,
                    1,
                    "scenario_tokens_per_second",
                    new / seconds[name],
                    "tokens/s",
                ),
                Row(
                    name,
                    label,
                    args.scenario_prompt,
                    1,
                    "scenario_compressions",
                    stats["compression_events"],
                    "count",
                ),
                Row(
                    name,
                    label,
                    args.scenario_prompt,
                    1,
                    "scenario_peak_cache_entries",
                    stats["peak_cache_entries"],
                    "tokens",
                ),
            )
            if name != "full" and "full" in seconds:
                self.add(
                    Row(
                        name,
                        label,
                        args.scenario_prompt,
                        1,
                        "scenario_overhead_vs_full",
                        seconds[name] / seconds["full"] - 1.0,
                        "x",
                    )
                )
            self.write()  # a call cut short keeps the runs done
            print(
                f"scenario {name}: {new} tokens in {seconds[name]:.1f} s, "
                f"{stats['compression_events']} compressions, peak {stats['peak_cache_entries']} entries",
                flush=True,
            )


def run_kvpress(args: argparse.Namespace, out: Path) -> list[Row]:
    """kvpress rows from its own process and environment (installed from the carried wheels)."""
    wheels = sorted(args.kvpress_wheels.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no kvpress wheels in {args.kvpress_wheels}; run `make bench-wheels` first")
    if not (args.kvpress_site / "kvpress").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--target",
                str(args.kvpress_site),
                *map(str, wheels),
            ],
            check=True,
        )
    environment = {**os.environ, "PYTHONPATH": str(args.kvpress_site)}
    command = [
        sys.executable,
        str(ROOT / "scripts/bench_kvpress.py"),
        "--lengths",
        *map(str, args.kvpress_lengths or args.lengths),
        "--budgets",
        *map(str, args.budgets),
        "--repeats",
        str(args.repeats),
        "--csv",
        str(out),
    ]
    subprocess.run(command, check=True, env=environment)
    return bench_common.read_rows([out])


def add_kvpress_floors(bench: Bench, rows: list[Row]) -> list[Row]:
    """Floors of kvpress's rows, and their ratios to our full-cache prefill and to kvpress's own."""
    own = {
        row.prompt_tokens: row.value
        for row in rows
        if row.method == "kvpress:none" and row.metric == "prefill_compress_seconds"
    }
    extra = []
    for row in rows:
        if row.metric == "prefill_compress_seconds":
            row.floor = bench.prefill_floor(row.prompt_tokens, "full")
            ours = bench.full_prefill.get(row.prompt_tokens)
            if ours:
                extra.append(
                    Row(
                        row.method,
                        row.budget,
                        row.prompt_tokens,
                        1,
                        "ratio_to_full_prefill",
                        row.value / ours,
                        "x",
                    )
                )
            extra.append(
                Row(
                    row.method,
                    row.budget,
                    row.prompt_tokens,
                    1,
                    "ratio_to_kvpress_prefill",
                    row.value / own[row.prompt_tokens],
                    "x",
                )
            )
    return rows + extra


def plain_forward_ratios(rows: Sequence[Row]) -> list[Row]:
    """Each prefill (+ compression) time and peak memory over the plain forward's of the same call and length:
    r = x / x_plain, where x_plain is the plain forward's prefill seconds or peak memory bytes."""
    plain = {(r.call, r.prompt_tokens, r.metric): r.value for r in rows if r.method == PLAIN}
    ratios = []
    for row in rows:
        if row.method == PLAIN or row.metric not in PLAIN_REFERENCES:
            continue
        reference, metric = PLAIN_REFERENCES[row.metric]
        value = plain.get((row.call, row.prompt_tokens, reference))
        if value:
            ratios.append(
                Row(
                    row.method,
                    row.budget,
                    row.prompt_tokens,
                    row.batch,
                    metric,
                    row.value / value,
                    "x",
                    call=row.call,
                )
            )
    return ratios


def this_call(args: argparse.Namespace, argv: Sequence[str]) -> bench_calls.Call:
    """This run's record in ``--calls``."""
    return bench_calls.Call(
        call=args.call or datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        commit=args.commit or bench_calls.current_commit(ROOT),
        command=bench_calls.measuring_command(argv),
        device=torch.cuda.get_device_name(),
        software=f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{bench_common.attention_implementation()}",
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.plot_only:
        plot(bench_common.read_rows(args.plot_only), args.figure)
        return
    if not torch.cuda.is_available():
        raise SystemExit("scripts/bench.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, parts {args.parts}", flush=True)
    ledger = bench_calls.Ledger.open(args.csv, args.calls, this_call(args, argv), args.merge)
    kvpress_rows = []
    if "kvpress" in args.parts:  # first, while this process holds no model
        kvpress_rows = run_kvpress(args, args.csv.with_name(args.csv.stem + "_kvpress.csv"))
    ceilings = bench_common.measure_ceilings()
    bench = Bench(args, ceilings, ledger)
    if "ceilings" in args.parts:
        bench.add(*bench_common.ceiling_rows(ceilings))
    print(
        f"matmul {ceilings.matmul_flops / 1e12:.0f} TFLOP/s, "
        f"copy {ceilings.copy_bytes_per_second / 1e9:.0f} GB/s",
        flush=True,
    )
    if {"prefill", "decode"} & set(args.parts):
        names = ["full"] + [name for name in args.methods if name != "full"]
        for tokens in args.lengths:
            for name in names:
                try:
                    bench.prefill_and_decode(tokens, name, args.parts)
                except torch.cuda.OutOfMemoryError:  # 128K "where memory allows"
                    print(f"skip {name} T={tokens}: out of GPU memory", flush=True)
                    torch.cuda.empty_cache()
            bench.write()  # a run cut short keeps the lengths done
    if "plain" in args.parts:
        for tokens in args.lengths:
            if tokens not in bench.full_prefill:
                bench.prefill_and_decode(tokens, "full", ["prefill"])
            bench.plain_forward(tokens)
            bench.write()
    if "kvpress" in args.parts:
        for tokens in args.kvpress_lengths or args.lengths:
            if tokens not in bench.full_prefill:
                bench.prefill_and_decode(tokens, "full", ["prefill"])
            bench.unchunked(tokens, "snapkv")
        bench.add(*add_kvpress_floors(bench, kvpress_rows))
    if "sweep" in args.parts:
        bench.sweep()
    bench.write()
    if "scenario" in args.parts:
        bench.scenario()
    rows = bench.write()
    print(
        f"wrote {args.csv} ({len(bench.rows)} rows of call {ledger.call.call}, {len(rows)} in all)",
        flush=True,
    )
    plot(rows, args.figure)
    for line in bench_readme.target_lines(bench.measured()):
        print(line)
    bench_readme.write_readme(rows, ledger.calls_path, args.readme)


def _against_length(axis, ylabel: str, title: str) -> None:
    """Log-log axes of a quantity against the prompt length."""
    axis.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel=ylabel, title=title)


def plot(rows: list[Row], path: Path) -> None:
    """Prefill latency vs length, ratio to full at 32K, the decoding scenario, decode tokens/s, memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(20, 10))
    lengths = sorted({r.prompt_tokens for r in rows if r.metric == "prefill_compress_seconds"})
    names = sorted({r.method for r in rows if r.metric == "prefill_compress_seconds"})
    bases = sorted({name.removeprefix("kvpress:") for name in names})

    def color(name: str) -> str:
        """One colour per method, ours and kvpress's alike (kvpress's lines are dashed)."""
        base = name.removeprefix("kvpress:")
        return f"C{bases.index(base) % 10}" if base in bases else "k"

    def series(name: str, metric: str, budget: str, batch: int = 1):
        points = [
            (r.prompt_tokens, r.value, r.floor)
            for r in rows
            if r.method == name
            and r.metric == metric
            and r.batch == batch
            and (r.budget == budget or name == "full" or r.budget == "1")
        ]
        return sorted(points)

    axis = axes[0, 0]
    for name in names:
        points = series(name, "prefill_compress_seconds", "0.2")
        if points:
            style = "--" if name.startswith("kvpress") else "-"
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            axis.plot(xs, ys, style, color=color(name), marker="o", label=name)
    floor = series("full", "prefill_compress_seconds", "0.2")
    if floor:
        axis.plot([p[0] for p in floor], [p[2] for p in floor], "k:", label="floor (FLOPs / matmul rate)")
    plain = series(PLAIN, "prefill_seconds", "1")
    if plain:
        axis.plot(
            [p[0] for p in plain],
            [p[1] for p in plain],
            "k--",
            marker="s",
            label="plain transformers forward",
        )
    _against_length(axis, "seconds", "prefill + compression at 20% budget")
    axis.legend(fontsize=7)

    axis = axes[0, 1]
    at = 32768 if 32768 in lengths else (lengths[-1] if lengths else 0)
    ratios = [
        (r.method, r.budget, r.value)
        for r in rows
        if r.metric == "ratio_to_full_prefill" and r.prompt_tokens == at
    ]
    labels = [f"{m}@{b}" for m, b, _ in ratios]
    axis.barh(
        labels,
        [v for _, _, v in ratios],
        color=["C1" if m.startswith("kvpress") else "C0" for m, _, _ in ratios],
    )
    axis.axvline(1.0, color="k", lw=0.8)
    axis.set(xlabel="× full-cache prefill (ours)", title=f"prefill + compression at {at} tokens")
    axis.tick_params(axis="y", labelsize=7)

    _scenario_panel(axes[0, 2], rows)
    _plain_panel(axes[1, 2], rows, at)

    axis = axes[1, 0]
    for name in sorted({r.method for r in rows if r.metric == "decode_tokens_per_second"}):
        for batch, style in ((1, "-"), (16, "--")):
            points = series(name, "decode_tokens_per_second", "0.2", batch)
            if points:
                axis.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    style,
                    color=color(name),
                    marker="o",
                    label=f"{name} b{batch}",
                )
    full16 = series("full", "decode_tokens_per_second", "1", 16)
    if full16:
        axis.plot(
            [p[0] for p in full16], [p[2] for p in full16], "k:", label="full b16 floor (bytes / bandwidth)"
        )
    _against_length(axis, "tokens/s", "decode throughput at 20% budget (batch 1 solid, 16 dashed)")
    axis.legend(fontsize=6, ncol=2)

    axis = axes[1, 1]
    memory = [
        (r.method, r.prompt_tokens, r.value)
        for r in rows
        if r.metric == "signal_memory_ratio_to_full_kv" and r.budget in ("0.2", "1")
    ]
    names = list(dict.fromkeys(m for m, _, _ in memory))  # one slot per method, whichever lengths it has
    for index, tokens in enumerate(lengths):
        picked = [(m, v) for m, t, v in memory if t == tokens]
        offsets = [names.index(m) + index * 0.25 for m, _ in picked]
        axis.bar(offsets, [v for _, v in picked], width=0.25, label=f"{tokens} tokens")
    axis.set_xticks([i + 0.25 for i in range(len(names))], names, rotation=30, fontsize=7)
    axis.axhline(0.25, color="r", lw=0.8, label="target (infokv) 0.25")
    axis.set(ylabel="(peak of prefill − full's) / full KV bytes", title="signal memory during prefill")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


def _plain_panel(axis, rows: list[Row], tokens: int) -> None:
    """Prefill (+ compression) time and peak memory over the plain transformers forward's at ``tokens``."""
    picked = [
        r
        for r in rows
        if r.prompt_tokens == tokens and r.metric == "ratio_to_plain_forward" and r.budget in ("0.2", "1")
    ]
    if not picked:
        axis.set_title("× plain forward: not measured")
        return
    memory = {
        r.method: r.value
        for r in rows
        if r.prompt_tokens == tokens
        and r.metric == "peak_memory_ratio_to_plain_forward"
        and r.budget in ("0.2", "1")
    }
    labels = [r.method for r in picked]
    positions = range(len(picked))
    axis.barh([i - 0.2 for i in positions], [r.value for r in picked], height=0.4, label="time")
    axis.barh(
        [i + 0.2 for i in positions], [memory.get(m, 0.0) for m in labels], height=0.4, label="peak memory"
    )
    axis.set_yticks(list(positions), labels, fontsize=7)
    axis.axvline(1.0, color="k", lw=0.8)
    axis.set(
        xlabel="× plain transformers forward", title=f"prefill + compression at {tokens} tokens, budget 0.2"
    )
    axis.legend(fontsize=7)


def _scenario_panel(axis, rows: list[Row]) -> None:
    """Tokens/s of the decoding scenario's runs, each labelled with its wall time against the full cache's."""
    runs = [r for r in rows if r.metric == "scenario_tokens_per_second"]
    overhead = {r.method: r.value for r in rows if r.metric == "scenario_overhead_vs_full"}
    if not runs:
        axis.set_title("decoding scenario: not measured")
        return
    colors = ["C7" if r.method == "full" else "C0" for r in runs]
    bars = axis.bar([f"{r.method}@{r.budget}" for r in runs], [r.value for r in runs], color=colors)
    for bar, run in zip(bars, runs, strict=True):
        note = f"{overhead[run.method]:+.1%} time" if run.method in overhead else "reference"
        axis.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    seconds = bench_readme.value(rows, metric="scenario_seconds", method=runs[0].method)
    generated = f", {runs[0].value * seconds:.0f} new" if seconds else ""
    axis.set(
        ylabel="tokens/s (batch 1)",
        title=f"decoding scenario ({runs[0].prompt_tokens}-token prompt{generated})",
    )


if __name__ == "__main__":
    main()
