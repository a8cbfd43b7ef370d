"""Wall time of ``make demo`` (``python -m infokv.eval.demo``) with each CPU-specific path switched off.

Each run is a fresh process that replaces one path by the generic one before the demo starts, and
prints the demo's table; the table must equal the baseline's (the paths change speed, not results).
Paths (``--paths``; all by default):

* ``mallopt``: :func:`infokv.eval.host_memory.keep_freed_memory` not applied.
* ``row_groups``: single-query attention over every row at once (:func:`infokv.hf.hooks._row_groups`).
* ``left_padded``: prefill chunks of a left-padded batch under a full (q × k) mask instead of per group
  of rows (:func:`infokv.hf.hooks._left_padded_attention`, :func:`infokv.signals.attention._left_padded`).
* ``l2_blocks``: blockwise attention with the device block size instead of L2-sized blocks per row.
* ``two_stage_entropy``: entropy from fp32 logits in one stage instead of bfloat16 candidates first.

Writes ``--output`` (path, repeat, seconds, same_table) and prints the median per path.

    python scripts/cpu_paths.py --repeats 1 --output results/bench/cpu_paths.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

SWITCH_OFF = {
    "baseline": "",
    "mallopt": "import infokv.eval.host_memory as m; m.keep_freed_memory = lambda: False",
    "row_groups": "import infokv.hf.hooks as h; h._row_groups = lambda valid: [(slice(0, len(valid)), 0)]",
    "left_padded": (
        "import infokv.hf.hooks as h, infokv.signals.attention as a; "
        "h.valid_prefix = lambda *args: None; a.valid_prefix = lambda *args: None"
    ),
    "l2_blocks": (
        "import infokv.signals.attention as a; a._block_queries = lambda device, batch, heads, kv, keys: "
        "max(1, a.DEVICE_BLOCK_ELEMENTS // (batch * heads * keys))"
    ),
    "two_stage_entropy": (
        "from infokv.hf.logit_head import LogitHead; LogitHead.two_stages = lambda self, hidden, topk: False"
    ),
}


def run_demo(path: str) -> tuple[float, str]:
    """Seconds of one demo process with ``path`` switched off, and what it printed but its own timings."""
    code = f"{SWITCH_OFF[path]}\nfrom infokv.eval import demo\ndemo.main([])\n"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    table = [line for line in done.stdout.splitlines() if not line.startswith("sweep wall time")]
    return time.perf_counter() - start, "\n".join(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", default=[path for path in SWITCH_OFF if path != "baseline"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("results/bench/cpu_paths.csv"))
    args = parser.parse_args()
    rows, tables = [], {}
    for repeat in range(args.repeats):
        for path in ["baseline", *args.paths]:
            seconds, table = run_demo(path)
            tables.setdefault(path, table)
            rows.append({"path": path, "repeat": repeat, "seconds": round(seconds, 2)})
            print(f"{path:18s} {seconds:7.1f} s", flush=True)
    for row in rows:
        row["same_table"] = tables[row["path"]] == tables["baseline"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "repeat", "seconds", "same_table"])
        writer.writeheader()
        writer.writerows(rows)
    base = statistics.median(row["seconds"] for row in rows if row["path"] == "baseline")
    for path in args.paths:
        median = statistics.median(row["seconds"] for row in rows if row["path"] == path)
        print(f"{path:18s} off: {median:6.1f} s, on saves {1 - base / median:+.0%} of the demo")


if __name__ == "__main__":
    main()
