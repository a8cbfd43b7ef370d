"""Write ``results/bench/README.md`` from ``gpu.csv`` and ``calls.csv``: what each part of
``scripts/bench.py`` measures (template prose kept here), the calls that measured the committed rows,
the key figures read from the rows and the issues' targets.

Every figure in the README comes from the CSVs; only the explanations are written here. Each ratio
is taken within the call that measured its rows (``ratio_to_full_prefill`` against that call's full
prefill, ``ratio_to_plain_forward`` against its plain forward), so rows of different calls are never
divided by one another.

    python scripts/bench_readme.py          # rewrite results/bench/README.md from the committed CSVs
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from bench_calls import Call, read_calls
from bench_common import Row, read_rows

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def value(rows: Sequence[Row], **match) -> float | None:
    """The value of the first row whose fields equal ``match``; None where none does."""
    for row in rows:
        if all(getattr(row, key) == wanted for key, wanted in match.items()):
            return row.value
    return None


def target_lines(rows: list[Row], tokens: int = 32768) -> list[str]:
    """Issue 7's and issue 22's targets, measured (each ratio within the call that measured its rows)."""
    lines = []

    def worst(name: str, metric: str) -> float | None:
        """The largest ``metric`` of method ``name`` at ``tokens`` over budgets."""
        values = [
            r.value for r in rows if r.method == name and r.prompt_tokens == tokens and r.metric == metric
        ]
        return max(values, default=None)

    def check(label: str, value: float | None, limit: float, at_most: bool = True) -> None:
        if value is None:
            lines.append(f"{label}: not measured")
            return
        met = value <= limit if at_most else value >= limit
        lines.append(
            f"{label}: {value:.3f} ({'met' if met else 'MISSED'}; target {'<=' if at_most else '>='} {limit})"
        )

    for name, limit in (("infokv", 1.10), ("snapkv", 1.05), ("h2o", 1.6)):
        check(
            f"{name} prefill+compress / full prefill at {tokens}", worst(name, "ratio_to_full_prefill"), limit
        )
    check(f"full prefill / plain forward at {tokens}", worst("full", "ratio_to_plain_forward"), 1.0)
    check(
        f"full prefill peak memory / plain forward's at {tokens}",
        worst("full", "peak_memory_ratio_to_plain_forward"),
        1.0,
    )
    for name, limit in (("infokv", 1.10), ("snapkv", 1.03)):
        check(
            f"{name} prefill+compress / plain forward at {tokens}",
            worst(name, "ratio_to_plain_forward"),
            limit,
        )
    memory = max(
        (
            r.value
            for r in rows
            if r.method == "infokv"
            and r.prompt_tokens == tokens
            and r.metric == "signal_memory_ratio_to_full_kv"
        ),
        default=None,
    )
    check(f"infokv signal memory / full KV at {tokens}", memory, 0.25)
    check(
        f"decode speedup at 20%, batch 16, {tokens} (worst method)",
        min(
            (
                r.value
                for r in rows
                if r.budget == "0.2"
                and r.batch == 16
                and r.prompt_tokens == tokens
                and r.metric == "decode_speedup_vs_full"
            ),
            default=None,
        )
        if any(r.metric == "decode_speedup_vs_full" and r.batch == 16 for r in rows)
        else None,
        1.5,
        False,
    )
    check(
        f"KV bytes at 20% / full at {tokens} (worst method)",
        max(
            (
                r.value
                for r in rows
                if r.budget == "0.2" and r.prompt_tokens == tokens and r.metric == "kv_ratio_to_full"
            ),
            default=None,
        ),
        0.25,
    )
    ours = value(
        rows, method="snapkv", budget="0.2", prompt_tokens=tokens, metric="unchunked_prefill_compress_seconds"
    )
    theirs = value(
        rows, method="kvpress:snapkv", budget="0.2", prompt_tokens=tokens, metric="prefill_compress_seconds"
    )
    ratio = ours / theirs if ours and theirs else None
    check(f"our snapkv / kvpress snapkv at {tokens}, 20%, both unchunked", ratio, 1.0)
    sweep = next((r.value for r in rows if r.metric == "sweep_ratio_to_full"), None)
    check("sweep / full prefill+decode", sweep, 1.5)
    return lines


INTRO = """# Speed and memory measurements

Written by `scripts/bench_readme.py` from `gpu.csv` and `calls.csv` (`scripts/bench.py` rewrites it
after each call); edit the prose there, not here.

## gpu.csv (`scripts/bench.py`, `make bench`)

Model: Llama-3.1-8B's architecture with random bf16 weights, sdpa attention; prompts: seeded random
token ids, one per length. Each row names the call that measured it; one session's device time does
not fit every part, so the CSV joins calls, each merged with `--merge` (a call's rows replace the rows
that measure the same thing). Ratios are taken within one call, floors from the ceilings that call
measured. Figure: `results/figures/bench_gpu.png` (`python scripts/bench.py --plot-only
results/bench/gpu.csv`). Decoding at scale (memory against the compressed cache, the largest batch
that fits, throughput at equal memory) is in `scale.md` (`scripts/bench_scale.py`)."""

PARTS = {
    "Calls": "The calls whose rows the CSV holds (`calls.csv`): the code's commit (`+`: the working tree "
    "differed from it), the command without its output options, and what the call's rows cover.",
    "Targets": "Issue 7's and issue 22's targets at 32K tokens, each worst case over budgets and methods "
    "as `target_lines` states it.",
    "Ceilings": "The device's bf16 8192³ matrix-product rate and device-to-device copy bandwidth "
    "(read + write bytes); every floor of the call that measured them comes from them.",
    "Prefill and compression": "One chunked capture prefill (chunks of 4096 tokens, the signals the "
    "method needs) and one compression per budget, timed with CUDA events, medians after a warm-up; "
    "nothing waits for the device between the two, as in `generate`. Budget 0.2. Ratios to the full-cache "
    "prefill and to the plain forward of the same call where it ran; peak GPU memory above the weights; "
    "signal memory = (peak of the method's prefill − peak of the full prefill) / full KV bytes. Full "
    "chunks run on cuDNN's attention kernel (`infokv.kernels.causal_attention`); h2o's column sums are "
    "fused into the attention (`infokv.kernels.fused_attention`); infokv's signal memory is mostly the "
    "one-chunk buffer of representation evolution, a fixed size, so its share falls as the prompt grows. "
    "Rows of methods from an older call than the full row are ratios to that older call's full prefill.",
    "Plain forward": "The reference prefill: one plain transformers forward of the same model over the "
    "whole prompt (sdpa, `logits_to_keep=1`, the cache returned, no chunks), beside our chunked full "
    "prefill of the same call; peak GPU memory above the weights. Our prefill's peak is lower because it "
    "holds the activations of one chunk at a time, the plain forward those of the whole prompt.",
    "Decode": "Greedy steps replaying the engine's captured CUDA graph on each compressed cache, batch 1 "
    "and 16 (batch 16 repeats the row; missing where it does not fit), tokens/s; the speedup is over the "
    "full cache of the same call and batch.",
    "kvpress": "kvpress 0.5.5's presses in their own process and transformers, one unchunked forward with "
    "the press's hooks, budget 0.2; against kvpress's own pressless prefill and our chunked full prefill of "
    "the same call, and our snapkv run unchunked like kvpress.",
    "Sweep": "`generate_sweep` over every method × budget on one prompt against `generate` with the full "
    "cache (same prompt and new tokens); phases as the engine's host clock sees them.",
    "Decoding scenario": "`generate` with decoding compression (ratio 0.25, every `compress_every` "
    "tokens) against the full cache over 16K new tokens after a short prompt, batch 1, graphs replayed "
    "between compressions. Each step records every entry's signals inside the captured graph; infokv's "
    "steps also compute two top-256 entropies over the vocabulary and per-layer evolution records.",
}

STATIC = """## sweep_cost*.csv (`scripts/bench_sweep.py`, `make bench-sweep`)

CPU sweep cost on SmolLM2-135M; the project README's "Measured here" names the calls that wrote each
file, and the script's docstring what each column means.

## CPU paths (2-core CPU, SmolLM2-135M)

The measurements behind the CPU-specific paths: `results/bench/cpu_paths.md`, written by
`scripts/cpu_paths.py`.
"""


def _seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def _gib(x: float | None) -> str:
    return "–" if x is None else f"{x / GIB:.2f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(line) + " |" for line in lines),
    ]


def _lengths(rows: Sequence[Row], metric: str) -> list[int]:
    return sorted({r.prompt_tokens for r in rows if r.metric == metric})


def _methods(rows: Sequence[Row], metric: str, tokens: int) -> list[str]:
    return list(dict.fromkeys(r.method for r in rows if r.metric == metric and r.prompt_tokens == tokens))


def _budget(method: str) -> str:
    """The budget a method's headline row has: the full cache and the plain forward keep everything."""
    return "1" if method in ("full", "plain_forward", "kvpress:none") else "0.2"


def _calls(rows: Sequence[Row], calls: Sequence[Call]) -> list[str]:
    lines = []
    for call in calls:
        own = [r for r in rows if r.call == call.call]
        lengths = ", ".join(str(t) for t in sorted({r.prompt_tokens for r in own if r.prompt_tokens}))
        methods = ", ".join(sorted({r.method for r in own}))
        lines.append(
            [
                call.call,
                call.commit,
                f"`{call.command}`",
                call.software,
                f"{len(own)} rows; {lengths}; {methods}",
            ]
        )
    return _table(["call", "commit", "command", "software", "rows"], lines)


def _ceilings(rows: Sequence[Row]) -> list[str]:
    lines = [
        [
            r.call,
            f"{r.value:.0f} {r.unit}",
            f"{value(rows, method='device', metric='copy_bandwidth', call=r.call):.0f} GB/s",
        ]
        for r in rows
        if r.method == "device" and r.metric == "matmul_rate"
    ]
    return _table(["call", "matmul rate", "copy bandwidth"], lines)


def _prefill(rows: Sequence[Row]) -> list[str]:
    lines = []
    for tokens in _lengths(rows, "ratio_to_full_prefill"):
        for method in _methods(rows, "ratio_to_full_prefill", tokens):
            if method.startswith("kvpress"):
                continue
            pick = {"method": method, "prompt_tokens": tokens, "budget": _budget(method), "batch": 1}
            lines.append(
                [
                    str(tokens),
                    method,
                    _seconds(value(rows, metric="prefill_compress_seconds", **pick)),
                    _ratio(value(rows, metric="ratio_to_full_prefill", **pick)),
                    _ratio(value(rows, metric="ratio_to_plain_forward", **pick)),
                    _gib(value(rows, metric="peak_memory_bytes", **pick)),
                    _ratio(value(rows, metric="signal_memory_ratio_to_full_kv", **pick)),
                    _call(rows, metric="prefill_compress_seconds", **pick),
                ]
            )
    header = [
        "tokens",
        "method",
        "prefill + compress s",
        "× full",
        "× plain forward",
        "peak GiB",
        "signal / KV",
        "call",
    ]
    return _table(header, lines)


def _plain(rows: Sequence[Row]) -> list[str]:
    lines = []
    for tokens in sorted({r.prompt_tokens for r in rows if r.method == "plain_forward"}):
        plain = {"method": "plain_forward", "prompt_tokens": tokens}
        if value(rows, metric="out_of_memory", **plain):
            lines.append(
                [
                    str(tokens),
                    "out of memory",
                    "–",
                    "–",
                    "–",
                    "–",
                    _call(rows, metric="out_of_memory", **plain),
                ]
            )
            continue
        seconds = value(rows, metric="prefill_seconds", **plain)
        if seconds is None:
            continue
        full = {"method": "full", "prompt_tokens": tokens, "budget": "1", "batch": 1}
        lines.append(
            [
                str(tokens),
                _seconds(seconds),
                _gib(value(rows, metric="peak_memory_bytes", **plain)),
                _seconds(value(rows, metric="prefill_seconds", **full)),
                _ratio(value(rows, metric="ratio_to_plain_forward", **full)),
                _ratio(value(rows, metric="peak_memory_ratio_to_plain_forward", **full)),
                _call(rows, metric="prefill_seconds", **plain),
            ]
        )
    header = ["tokens", "plain forward s", "its peak GiB", "our full prefill s", "time ×", "peak ×", "call"]
    return _table(header, lines)


def _decode(rows: Sequence[Row]) -> list[str]:
    lines = []
    for tokens in _lengths(rows, "decode_tokens_per_second"):
        for method in _methods(rows, "decode_tokens_per_second", tokens):
            pick = {"method": method, "prompt_tokens": tokens, "budget": _budget(method)}
            lines.append(
                [
                    str(tokens),
                    method,
                    _rate(value(rows, metric="decode_tokens_per_second", batch=1, **pick)),
                    _rate(value(rows, metric="decode_tokens_per_second", batch=16, **pick)),
                    _ratio(value(rows, metric="decode_speedup_vs_full", batch=16, **pick)),
                    _call(rows, metric="decode_tokens_per_second", batch=1, **pick),
                ]
            )
    return _table(["tokens", "method", "tokens/s b1", "tokens/s b16", "speedup b16", "call"], lines)


def _kvpress(rows: Sequence[Row]) -> list[str]:
    lines = []
    for tokens in _lengths(rows, "ratio_to_kvpress_prefill"):
        for method in _methods(rows, "ratio_to_kvpress_prefill", tokens):
            pick = {"method": method, "prompt_tokens": tokens, "budget": _budget(method)}
            lines.append(
                [
                    str(tokens),
                    method,
                    _seconds(value(rows, metric="prefill_compress_seconds", **pick)),
                    _ratio(value(rows, metric="ratio_to_kvpress_prefill", **pick)),
                    _ratio(value(rows, metric="ratio_to_full_prefill", **pick)),
                    _call(rows, metric="prefill_compress_seconds", **pick),
                ]
            )
        ours = value(
            rows,
            method="snapkv",
            budget="0.2",
            prompt_tokens=tokens,
            metric="unchunked_prefill_compress_seconds",
        )
        if ours is not None:
            lines.append([str(tokens), "our snapkv, unchunked", _seconds(ours), "–", "–", "–"])
    return _table(["tokens", "press", "seconds", "× kvpress none", "× our full prefill", "call"], lines)


def _sweep(rows: Sequence[Row]) -> list[str]:
    lines = [
        [
            r.budget,
            str(r.prompt_tokens),
            _seconds(value(rows, method="sweep", metric="generate_sweep_seconds")),
            _seconds(value(rows, method="full", metric="generate_seconds")),
            _ratio(r.value),
            " / ".join(
                _seconds(value(rows, method="sweep", metric=f"{phase}_seconds_engine"))
                for phase in ("prefill", "compress", "decode")
            ),
            r.call,
        ]
        for r in rows
        if r.metric == "sweep_ratio_to_full"
    ]
    header = ["settings", "tokens", "sweep s", "full s", "×", "sweep prefill / compress / decode s", "call"]
    return _table(header, lines)


def _scenario(rows: Sequence[Row]) -> list[str]:
    lines = []
    for r in rows:
        if r.metric != "scenario_seconds":
            continue
        pick = {"method": r.method, "budget": r.budget}
        overhead = value(rows, metric="scenario_overhead_vs_full", **pick)
        lines.append(
            [
                r.method,
                r.budget,
                str(r.prompt_tokens),
                f"{r.value:.1f}",
                _rate(value(rows, metric="scenario_tokens_per_second", **pick)),
                "–" if overhead is None else f"{overhead:+.1%}",
                f"{value(rows, metric='scenario_compressions', **pick):.0f}",
                f"{value(rows, metric='scenario_peak_cache_entries', **pick):.0f}",
                r.call,
            ]
        )
    header = [
        "method",
        "ratio",
        "prompt",
        "seconds",
        "tokens/s",
        "time vs full",
        "compressions",
        "peak entries",
        "call",
    ]
    return _table(header, lines)


def _call(rows: Sequence[Row], **match) -> str:
    for row in rows:
        if all(getattr(row, key) == wanted for key, wanted in match.items()):
            return row.call
    return "–"


SECTIONS: dict[str, Callable[[Sequence[Row]], list[str]]] = {
    "Targets": lambda rows: [f"- {line}" for line in target_lines(list(rows))],
    "Ceilings": _ceilings,
    "Prefill and compression": _prefill,
    "Plain forward": _plain,
    "Decode": _decode,
    "kvpress": _kvpress,
    "Sweep": _sweep,
    "Decoding scenario": _scenario,
}


def render(rows: Sequence[Row], calls: Sequence[Call]) -> str:
    """The README's text: the intro, each part's prose and figures, then the static sections."""
    text = [INTRO, "", "### Calls", "", PARTS["Calls"], "", *_calls(rows, calls)]
    for title, section in SECTIONS.items():
        text += ["", f"### {title}", "", PARTS[title], "", *section(rows)]
    return "\n".join(text) + "\n\n" + STATIC


def write_readme(rows: Sequence[Row], calls_path: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(rows, read_calls(calls_path)))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=ROOT / "results/bench/gpu.csv")
    parser.add_argument("--calls", type=Path, default=ROOT / "results/bench/calls.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/README.md")
    args = parser.parse_args(argv)
    write_readme(read_rows([args.csv]), args.calls, args.out)


if __name__ == "__main__":
    main()
