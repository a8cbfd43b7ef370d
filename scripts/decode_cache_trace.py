"""Cache entries against generated tokens for every decoding method, on the embedded model.

Runs one long generation per decoding method (the issue's check: 2048 new tokens,
``compress_every`` 256, ratio 0.25, full prefill), checks that the cache never exceeds
prompt + target + ``compress_every`` entries per head, and writes

* ``results/decode/cache_trace.jsonl`` — one record per method (appended as each run finishes,
  so a killed run keeps what it finished and a rerun skips it),
* ``results/decode/cache_trace.csv`` — entries per generated token, per method,
* ``results/figures/decode_cache_entries.png`` — the figure.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from infokv import generate, load_model, methods  # noqa: E402
from infokv.eval.store import append_records, read_records  # noqa: E402

QUESTION = (
    "A farmer has 17 sheep, buys 3 times as many goats as sheep, then sells 12 goats. Each goat eats "
    "2 kg of hay a day and each sheep 1.5 kg. How much hay does the farm need for a 30-day month? "
    "Think step by step and explain every step in detail."
)


def trace(prompt: int, generated: int, events: list[list[int]]) -> list[int]:
    """Cache entries after each generated token, from the compression events (g, before, after)."""
    after_event = {g: after for g, _, after in events}
    entries, current = [], prompt
    for step in range(1, generated):
        current = after_event.get(step, current + 1)
        entries.append(current)
    return entries


def bound(name: str, prompt: int, generated: int, ratio: float, every: int) -> int:
    """prompt + target(last compression) + every: the most entries a head may hold (full: everything)."""
    method = methods.get(name)
    if not method.evicts:
        return prompt + generated
    last = (generated // every) * every
    target = (
        math.ceil(last * ratio) + method.window
        if name == "rpc"
        else max(math.ceil(last * ratio), method.window)
    )
    return prompt + target + every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=2048)
    parser.add_argument("--every", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--methods", nargs="+", default=methods.available("decode"))
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    records_path = args.out / "decode" / "cache_trace.jsonl"
    done = {record["method"] for record in read_records(records_path)}
    for name in args.methods:
        if name in done:
            print(f"{name}: already in {records_path}, skipped")
            continue
        completion = generate(
            model,
            tokenizer,
            [prompt],
            "full",
            1.0,
            max_new_tokens=args.new_tokens,
            decode_method=name,
            decode_ratio=args.ratio,
            compress_every=args.every,
            stop_at_eos=False,
        )[0]
        stats = completion.stats
        limit = bound(name, stats["prompt_tokens"], stats["generated_tokens"], args.ratio, args.every)
        record = {
            "method": name,
            "prompt_tokens": stats["prompt_tokens"],
            "generated_tokens": stats["generated_tokens"],
            "compressions": stats["compressions"],
            "peak_cache_entries": stats["peak_cache_entries"],
            "bound": limit,
            "within_bound": stats["peak_cache_entries"] <= limit,
            "seconds_per_token": stats["seconds_per_token"],
            "text_head": completion.text[:200],
        }
        append_records(records_path, [record])
        print(
            f"{name}: peak {record['peak_cache_entries']} <= bound {limit}: {record['within_bound']}, "
            f"{1 / stats['seconds_per_token']:.1f} tok/s"
        )
    records = read_records(records_path)
    rows = [
        {"method": r["method"], "generated": step, "cache_entries": entries}
        for r in records
        for step, entries in enumerate(trace(r["prompt_tokens"], r["generated_tokens"], r["compressions"]), 1)
    ]
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "decode" / "cache_trace.csv", index=False)
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, group in frame.groupby("method", sort=False):
        axis.plot(group["generated"], group["cache_entries"], label=name, linewidth=1.2)
    axis.set_xlabel("generated tokens")
    axis.set_ylabel("cache entries per KV head")
    axis.set_title(f"Decoding compression, ratio {args.ratio:g}, every {args.every} tokens")
    axis.legend(fontsize=8)
    figure.tight_layout()
    (args.out / "figures").mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out / "figures" / "decode_cache_entries.png", dpi=120)
    if not all(r["within_bound"] for r in records):
        raise SystemExit("a method exceeded its cache bound")


if __name__ == "__main__":
    main()
