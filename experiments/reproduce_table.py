"""Tables and figure of the paper's two experiments from their run directories.

    python experiments/reproduce_table.py [--size paper|small] [--runs runs] [--results results]

Reads every run below ``<runs>/<size>_prefill`` and ``<runs>/<size>_decode`` (written by
``infokv-run experiment=<size>_prefill`` / ``<size>_decode``, and ``small_headline``, whose runs sit
beside small_prefill's; ``make reproduce-table`` runs them all), and
writes ``<results>/tables/<size>.csv`` (long form, per scenario, model, benchmark, method, budget and
CoT/direct: n, accuracy and agreement with the full cache with their 95% intervals, the paired
differences with the full cache and of InfoKV with SnapKV, and the samples a 5-point difference would
need: :func:`infokv.eval.tables.accuracy`), ``<size>_<scenario>.md`` and ``.tex`` (the paper's layout:
methods × benchmarks × budgets, "CoT / direct" cells with intervals, then the paired differences with
the resolved ones marked) and
``<results>/figures/accuracy_vs_budget_<size>.png``; the table and the figure also go to W&B (offline by
default, ``--wandb false`` turns it off).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from infokv.eval.plots import accuracy_vs_budget
from infokv.eval.store import load_frame, run_directories
from infokv.eval.tables import accuracy, write_tables
from infokv.eval.tracking import Tracker

SIZES = ("paper", "small")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="paper")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run directories")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where tables/ and figures/ go")
    parser.add_argument("--wandb", default="offline", help="offline (default) | online | false")
    args = parser.parse_args(argv)
    roots = [args.runs / f"{args.size}_{scenario}" for scenario in ("prefill", "decode")]
    directories = [directory for root in roots if root.exists() for directory in run_directories(root)]
    if not directories:
        parser.error(
            f"no runs under {' or '.join(map(str, roots))}; run `make reproduce-table SIZE={args.size}`"
        )
    table = accuracy(load_frame(directories))
    for path in write_tables(table, args.results / "tables", args.size):
        print("wrote", path)
    figure = accuracy_vs_budget(table, args.results / "figures" / f"accuracy_vs_budget_{args.size}.png")
    print("wrote", figure)
    tracker = Tracker(
        False if args.wandb == "false" else args.wandb,
        "infokv",
        {"size": args.size, "runs": [str(d) for d in directories]},
        Path("outputs") / "reproduce_table",
        name=f"reproduce_table_{args.size}",
        job_type="tables",
    )
    tracker.log_table("accuracy", table)
    tracker.log_figure("accuracy_vs_budget", figure)
    tracker.finish()
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
