"""NVIDIA kvpress's prefill + compression on the benchmark's model and prompts, in kvpress's own environment.

Run by ``scripts/bench.py`` in a separate process whose PYTHONPATH holds kvpress and the older
transformers it needs (kvpress 0.5.5: transformers < 5.3). It builds the same seeded model
(:func:`bench_common.build_model`) and the same prompts (:func:`bench_common.prompt_ids`), and runs
kvpress's own prefill: one unchunked forward of the base model with the press's hooks, which
score and prune each layer's cache as it is written. Budget b keeps the fraction b of the prompt
(kvpress's ``compression_ratio`` = 1 − b). Method parameters follow ours where kvpress has them
(window 32, pooling kernel 7, 4 sinks, 512 future positions, β = 20).

    python scripts/bench_kvpress.py --lengths 8192 32768 --budgets 0.2 0.4 --csv kvpress.csv
"""

from __future__ import annotations

import argparse
import contextlib
from importlib.metadata import version
from pathlib import Path

import bench_common
import kvpress
import torch
from transformers import DynamicCache

PRESSES = {
    "snapkv": lambda ratio: kvpress.SnapKVPress(compression_ratio=ratio, window_size=32, kernel_size=7),
    "streamingllm": lambda ratio: kvpress.StreamingLLMPress(compression_ratio=ratio, n_sink=4),
    "pyramidkv": lambda ratio: kvpress.PyramidKVPress(
        compression_ratio=ratio, window_size=32, kernel_size=7, beta=20
    ),
    "expected_attention": lambda ratio: kvpress.ExpectedAttentionPress(
        compression_ratio=ratio, n_future_positions=512, n_sink=4
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", required=True)
    parser.add_argument("--budgets", type=float, nargs="+", required=True)
    parser.add_argument("--presses", nargs="+", default=list(PRESSES), choices=list(PRESSES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", type=Path, required=True)
    return parser.parse_args(argv)


def cache_bytes(cache: DynamicCache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def measure(model, ids: torch.Tensor, press, repeats: int) -> tuple[float, int, int]:
    """Median seconds of a pressed prefill, its peak memory above the weights, and the cache bytes left."""
    kept: list[DynamicCache] = []

    def run() -> None:
        kept.clear()
        cache = DynamicCache()
        with press(model) if press is not None else contextlib.nullcontext(), torch.inference_mode():
            model.model(input_ids=ids, past_key_values=cache, use_cache=True)
        kept.append(cache)

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds, _ = bench_common.median_seconds(run, repeats, warmup=1)
    peak = torch.cuda.max_memory_allocated() - base
    size = cache_bytes(kept[0])
    kept.clear()
    torch.cuda.empty_cache()
    return seconds, peak, size


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model = bench_common.build_model()
    rows = []
    for tokens in args.lengths:
        ids = bench_common.prompt_ids(tokens)
        seconds, peak, size = measure(model, ids, None, args.repeats)
        rows += [
            bench_common.Row("kvpress:none", "1", tokens, 1, "prefill_compress_seconds", seconds, "s"),
            bench_common.Row("kvpress:none", "1", tokens, 1, "peak_memory_bytes", peak, "B"),
            bench_common.Row("kvpress:none", "1", tokens, 1, "kv_bytes", size, "B"),
        ]
        print(f"kvpress:none T={tokens}: {seconds:.3f} s, peak {peak / 2**30:.2f} GiB", flush=True)
        for name in args.presses:
            for budget in args.budgets:
                press = PRESSES[name](1.0 - budget)
                seconds, peak, size = measure(model, ids, press, args.repeats)
                method, label = f"kvpress:{name}", f"{budget:g}"
                rows += [
                    bench_common.Row(method, label, tokens, 1, "prefill_compress_seconds", seconds, "s"),
                    bench_common.Row(method, label, tokens, 1, "peak_memory_bytes", peak, "B"),
                    bench_common.Row(method, label, tokens, 1, "kv_bytes", size, "B"),
                ]
                print(
                    f"{method}@{label} T={tokens}: {seconds:.3f} s, peak {peak / 2**30:.2f} GiB, "
                    f"kv {size / 2**30:.2f} GiB",
                    flush=True,
                )
        del ids
    bench_common.write_rows(args.csv, rows)
    print(
        f"kvpress {version('kvpress')} with transformers {version('transformers')}: {len(rows)} rows",
        flush=True,
    )


if __name__ == "__main__":
    main()
