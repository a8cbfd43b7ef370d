"""Acceptance benchmark: cost of a 7-method × 2-budget sweep relative to one full-cache generation.

Target: on SmolLM2-135M with 2K-token prompts, ``generate_sweep`` over every method at budgets
0.4 and 0.2 (14 settings) costs at most 1.5× one full-cache prefill + decode of the same prompts.

Measured, after one warm-up run of each: the median wall time over ``--repeats`` runs, interleaved
(full, sweep, full, sweep, ...) so that load from other processes affects both alike, of
(a) ``generate(model, tok, prompts, "full", 1.0, max_new_tokens=M)`` and
(b) ``generate_sweep(model, tok, prompts, settings, max_new_tokens=M)``,
on ``--samples`` passkey prompts (:mod:`infokv.eval.benchmarks.passkey_prompts`) of ``--tokens`` tokens,
in one batch (4 by
default, infokv-run's default ``batch_size``, so the figure is the cost per sample as the tool runs). The
engine's own prefill / compress / decode split is recorded too, and each run's physical floor
(:func:`generation_floor`: FLOPs over this machine's fp32 matrix rate, bytes over its copy bandwidth,
both measured in the same process), so the ratio of the floors says what the sweep could cost at best
here. Each run's process CPU time (all threads) is recorded too, being less sensitive than wall time to
the load a shared host puts on this machine, so the two ratios show how much of a swing is the host. Writes
``results/bench/sweep_cost.csv`` (long form: name, value, unit) and prints the wall-time ratio (b) / (a).

    python scripts/bench_sweep.py [--tokens 2048] [--max-new-tokens 16] [--repeats 3] [--samples 4] [--no-eos]

By default rows stop at EOS as in ordinary use, so the sweep may decode more steps than the full run
(its slowest row decides); ``--no-eos`` makes both decode exactly ``--max-new-tokens`` tokens.
``--samples 1`` measures a lone prompt, where nothing amortises the sweep's extra decoding rows.
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import bench_common
import torch
from transformers import PreTrainedModel

from infokv import Completion, generate, generate_sweep, load_model, methods, signals
from infokv.eval.benchmarks import passkey_prompts

TARGET = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt length in tokens")
    parser.add_argument("--samples", type=int, default=4, help="prompts per run (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.2])
    parser.add_argument(
        "--no-eos",
        action="store_true",
        help="decode exactly --max-new-tokens tokens in every row (stop_at_eos=False)",
    )
    parser.add_argument("--output", type=Path, default=Path("results/bench/sweep_cost.csv"))
    args = parser.parse_args(argv)
    if args.samples < 1 or args.repeats < 1:
        parser.error("--samples and --repeats must be >= 1")
    return args


def timed(function) -> tuple[float, object]:
    clock = time.perf_counter()
    result = function()
    return time.perf_counter() - clock, result


def phases(completions) -> dict[str, float]:
    """The engine's prefill / compress / decode seconds, summed over batches."""
    seen, totals = set(), {"prefill": 0.0, "compress": 0.0, "decode": 0.0}
    for completion in completions:
        stats = completion.stats
        key = (stats["prefill_seconds"], stats["decode_seconds"])
        if key in seen:
            continue
        seen.add(key)
        for phase in totals:
            totals[phase] += stats[f"{phase}_seconds"]
    return totals


def generation_floor(
    model: PreTrainedModel,
    ceilings: bench_common.Ceilings,
    prompts: list[int],
    rows: list[tuple[int, float, int]],
    entropy: bool,
) -> float:
    """Seconds a generation cannot beat on this machine: FLOPs over the matrix rate, bytes over the copy
    bandwidth. ``prompts``: the tokens of each prompt; ``rows``: :func:`decoding_rows`.

    prefill = (2 · matrix params · T + causal attention [+ 2 · LM head params · T, the entropy of every
    position]) / rate, with one prefill for all rows (H2O's column sums add no product: a fused pass gets
    them from the attention's own scores); then, per decoding step s, over the rows still decoding:
    max(Σ_rows (2 · matrix params + attention over their entries) / rate,
        (weights + KV bytes per entry · Σ_prompts [min(T, Σ_its rows kept) + Σ_its rows s]) / bandwidth):
    a step reads each prompt entry some row keeps at least once, however many rows keep it.
    """
    config = model.config
    matrix, weight_bytes = bench_common.parameter_count(model)
    head = model.get_output_embeddings().weight.numel()
    prefill = sum(
        bench_common.prefill_flops(model, tokens) + 2.0 * head * tokens * entropy for tokens in prompts
    )
    seconds = prefill / ceilings.matmul_flops
    entry_bytes = bench_common.kv_bytes_per_token(config, model.dtype.itemsize)
    for step in range(max(steps for _, _, steps in rows)):  # rows leave once they have generated their tokens
        active = [(sample, entries) for sample, entries, steps in rows if steps > step]
        flops = sum(
            2.0 * matrix + bench_common.attention_flops(config, 1, round(entries + step) + 1)
            for _, entries in active
        )
        read = sum(
            min(tokens, sum(entries for owner, entries in active if owner == sample))
            + step * sum(owner == sample for owner, _ in active)
            for sample, tokens in enumerate(prompts)
        )
        moved = weight_bytes + entry_bytes * read
        seconds += max(flops / ceilings.matmul_flops, moved / ceilings.copy_bytes_per_second)
    return seconds


def decoding_rows(results: Sequence[Sequence[Completion]]) -> list[tuple[int, float, int]]:
    """(sample, prompt entries kept averaged over layers, forward steps) of each distinct decoding row of a
    ``generate_sweep`` result (one list of completions per setting). The first new token comes from the
    prefill's logits, so n new tokens take n − 1 steps; equal settings (full at two budgets) share rows."""
    rows = {}
    for per_setting in results:
        for sample, completion in enumerate(per_setting):
            stats = completion.stats
            steps = max(0, stats["generated_tokens"] - 1)
            rows[(stats["setting"], sample)] = (sample, statistics.mean(stats["kept_tokens"]), steps)
    return list(rows.values())


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    model, tokenizer = load_model(args.model)
    samples = passkey_prompts.passkey_samples(tokenizer, args.samples, args.tokens)
    prompts = [sample.prompt for sample in samples]
    settings = [(name, budget) for name in methods.available("prefill") for budget in args.budgets]
    new_tokens = args.max_new_tokens
    # The engine's cost, without the fidelity pass infokv-run adds (one more forward per setting).
    options = {"fidelity": False} | ({"stop_at_eos": False} if args.no_eos else {})

    def run_full():
        return [generate(model, tokenizer, prompts, "full", 1.0, max_new_tokens=new_tokens, **options)]

    def run_sweep():
        return generate_sweep(model, tokenizer, prompts, settings, max_new_tokens=new_tokens, **options)

    rows: list[tuple[str, float, str]] = [
        ("prompt_tokens", statistics.mean(sample.tokens for sample in samples), "tokens"),
        ("samples", len(samples), "count"),
        ("settings", len(settings), "count"),
        ("max_new_tokens", new_tokens, "tokens"),
        ("repeats", args.repeats, "count"),
        ("stop_at_eos", int(not args.no_eos), "bool"),
        ("torch_threads", torch.get_num_threads(), "count"),
    ]
    print(
        f"{len(samples)} prompt(s) of ~{rows[0][1]:.0f} tokens, {len(settings)} settings, "
        f"max_new_tokens={new_tokens}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
        flush=True,
    )
    medians = {}
    functions = {"full": run_full, "sweep": run_sweep}
    for function in functions.values():
        function()  # warm-up
    timings: dict[str, list] = {name: [] for name in functions}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(args.repeats):  # interleaved, so changing machine load affects both alike
        for name, function in functions.items():
            cpu = time.process_time()
            timings[name].append(timed(function))
            cpu_seconds[name].append(time.process_time() - cpu)
    for name, runs in timings.items():
        seconds = [elapsed for elapsed, _ in runs]
        medians[name] = statistics.median(seconds)
        rows.append((f"{name}_seconds", medians[name], "s"))
        rows.extend((f"{name}_seconds_run{index}", value, "s") for index, value in enumerate(seconds))
        split = [phases(c for per_setting in result for c in per_setting) for _, result in runs]
        phase_medians = {phase: statistics.median(s[phase] for s in split) for phase in split[0]}
        rows.extend((f"{name}_{phase}_seconds", value, "s") for phase, value in phase_medians.items())
        results = runs[-1][1]
        generated = [len(c.token_ids) for per_setting in results for c in per_setting]
        rows.append((f"{name}_new_tokens_max", max(generated), "tokens"))
        rows.append((f"{name}_new_tokens_mean", statistics.mean(generated), "tokens"))
        print(
            f"{name:>5}: median {medians[name]:.2f} s over {args.repeats} runs "
            f"({', '.join(f'{s:.2f}' for s in seconds)}); "
            + ", ".join(f"{phase} {value:.2f} s" for phase, value in phase_medians.items())
            + f"; new tokens max {max(generated)}",
            flush=True,
        )
    ceilings = bench_common.measure_ceilings(device="cpu")
    lengths = [sample.tokens for sample in samples]
    entropy = any(
        need[0] == signals.ENTROPY for name, _ in settings for need in methods.get(name).requirements()
    )
    floors = {
        name: generation_floor(
            model, ceilings, lengths, decoding_rows(runs[-1][1]), entropy and name == "sweep"
        )
        for name, runs in timings.items()
    }
    rows += [
        ("matmul_rate", ceilings.matmul_flops / 1e9, "GFLOP/s"),
        ("copy_bandwidth", ceilings.copy_bytes_per_second / 1e9, "GB/s"),
        *((f"{name}_floor_seconds", floor, "s") for name, floor in floors.items()),
        ("floor_ratio", floors["sweep"] / floors["full"], "x"),
    ]
    print(
        f"floors (fp32 matmul {ceilings.matmul_flops / 1e9:.0f} GFLOP/s, copy "
        f"{ceilings.copy_bytes_per_second / 1e9:.0f} GB/s): full {floors['full']:.2f} s, sweep "
        f"{floors['sweep']:.2f} s, ratio {floors['sweep'] / floors['full']:.2f}x"
    )
    ratio = medians["sweep"] / medians["full"]
    rows.append(("ratio", ratio, "x"))
    pairs = [sweep / full for (sweep, _), (full, _) in zip(timings["sweep"], timings["full"], strict=True)]
    rows.extend((f"ratio_run{index}", value, "x") for index, value in enumerate(pairs))
    print("per-pair sweep / full: " + ", ".join(f"{value:.2f}x" for value in pairs))
    cpu_ratio = statistics.median(cpu_seconds["sweep"]) / statistics.median(cpu_seconds["full"])
    rows += [(f"{name}_cpu_seconds", statistics.median(values), "s") for name, values in cpu_seconds.items()]
    rows.append(("cpu_ratio", cpu_ratio, "x"))
    print(f"sweep / full in process CPU time (all threads): {cpu_ratio:.2f}x")
    rows.append(("target", TARGET, "x"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "value", "unit"])
        writer.writerows((name, f"{value:.6g}", unit) for name, value, unit in rows)
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"sweep / full = {ratio:.2f}x ({verdict} the <= {TARGET}x target); wrote {args.output}")
    return ratio


if __name__ == "__main__":
    main()
