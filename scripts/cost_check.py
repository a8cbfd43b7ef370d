"""Time whole jobs of the paper presets' shapes on random weights, and set the cost estimate beside them.

``infokv-run ... dry_run=true`` estimates a job's GPU time from the rates of ``results/bench/``
(:func:`infokv.eval.cost.job_cost`). This script checks that estimate against whole jobs: for each
shape it composes the preset (``experiment=paper_prefill`` or ``paper_decode``) as ``infokv-run``
would, swaps in a random-weight model of the paper's architecture (``model=random-...``) and the
offline ``passkey`` generator as a stand-in for the hub data (LongReason, IFEval, AIME, LiveCodeBench:
prompts of the preset's length in tokens, of real text), limits the samples, and runs
:func:`infokv.eval.runner.run_job`. The model's build and the data's preparation are timed apart from
the job's samples. Random weights seldom emit a stop token, so completions run to ``max_new_tokens``.

On the GPU::

    python scripts/cost_check.py --part prefill --out DIR --commit SHA

writes ``DIR/check.csv`` row by row. Here, with no GPU::

    python scripts/cost_check.py --estimate-only DIR/check.csv [more.csv ...]

merges the measured rows, adds the estimate of each row's configuration and the measured/estimated
ratio, projects the paper tables' GPU-hours (every preset job, all methods per job against one
method per job), and writes ``results/cost/check.csv`` and ``results/cost/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import infokv

CONF = Path(infokv.__file__).resolve().parent / "conf"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "cost"
MEASURED = (
    "part",
    "model",
    "prompt_option",
    "samples",
    "max_new_tokens",
    "methods",
    "settings",
    "prompt_tokens",
    "new_tokens",
    "build_seconds",
    "prepare_seconds",
    "seconds",
    "overrides",
    "commit",
    "device",
    "software",
)
ESTIMATED = ("estimate_seconds", "estimate_one_method_seconds", "measured_over_estimate")
# The paper presets' sweeps (conf/experiment/paper_*.yaml), one job per combination.
PAPER_JOBS = {
    "paper_prefill": [
        [f"model={model}", f"benchmark={benchmark}", f"cot={cot}"]
        for model in ("llama-3.1-8b-instruct", "llama-3.2-3b-instruct")
        for benchmark in ("longreason_16k", "longreason_32k", "longreason_64k")
        for cot in ("true", "false")
    ],
    "paper_decode": [
        [f"model={model}", f"benchmark={benchmark}"]
        for model in ("r1-distill-llama-8b", "r1-distill-qwen-7b")
        for benchmark in ("ifeval", "aime24", "livecodebench")
    ],
}


@dataclass(frozen=True)
class Shape:
    """One measured job: a preset with a random model, the passkey stand-in of ``tokens`` prompt tokens,
    ``samples`` samples and ``new_tokens`` generated per completion; ``methods`` replaces the preset's."""

    part: str  # prefill | decode
    model: str
    tokens: int
    samples: int
    new_tokens: int
    methods: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        chosen = [f"method=[{','.join(self.methods)}]"] if self.methods else []
        return [
            f"experiment=paper_{self.part}",
            f"model={self.model}",
            "benchmark=passkey",
            f"benchmark.options.tokens={self.tokens}",
            f"benchmark.limit={self.samples}",
            f"max_new_tokens={self.new_tokens}",
            "progress=false",
            *chosen,
        ]


def shapes(part: str, samples: int, new_tokens: int, models: list[str], lengths: list[int]) -> list[Shape]:
    """Every (model, prompt length) of a part; the prefill preset's CoT prompts are the longer ones."""
    return [Shape(part, model, tokens, samples, new_tokens) for model in models for tokens in lengths]


def compose(overrides: list[str]):
    """The job configuration ``infokv-run`` composes from ``overrides`` (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from infokv.eval.configs import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


@contextmanager
def timed(owner: object, name: str, spent: list[float]) -> Iterator[None]:
    """Replace ``owner.name`` by a wrapper that appends each call's seconds (the GPU drained) to ``spent``."""
    import torch

    original: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        spent.append(time.perf_counter() - start)
        return result

    with mock.patch.object(owner, name, wrapper):
        yield


def measure(shape: Shape, commit: str) -> dict[str, object]:
    """Run ``shape``'s job in a fresh output folder; its row of ``check.csv``."""
    import torch
    import transformers

    from infokv.eval import runner

    overrides = shape.overrides()
    with tempfile.TemporaryDirectory(prefix="cost-check-") as folder:
        cfg = compose([*overrides, f"output_dir={folder}"])
        build: list[float] = []
        prepare: list[float] = []
        start = time.perf_counter()
        with timed(runner, "load_weights", build), timed(runner, "prepare", prepare):
            directory, _ = runner.run_job(cfg)
        total = time.perf_counter() - start
        records = runner.unique_records(directory)
    gc.collect()
    torch.cuda.empty_cache()
    firsts = {r["sample_id"]: r["stats"]["prompt_tokens"] for r in records}
    return {
        "part": shape.part,
        "model": shape.model,
        "prompt_option": shape.tokens,
        "samples": len(firsts),
        "max_new_tokens": shape.new_tokens,
        "methods": " ".join(cfg.methods),
        "settings": len({r["setting"] for r in records}),
        "prompt_tokens": round(statistics.mean(firsts.values())),
        "new_tokens": sum(r["stats"]["new_tokens"] for r in records),
        "build_seconds": round(sum(build), 2),
        "prepare_seconds": round(sum(prepare), 2),
        "seconds": round(total - sum(build) - sum(prepare), 2),
        "overrides": " ".join(overrides),
        "commit": commit,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "software": f"torch {torch.__version__}, transformers {transformers.__version__}",
    }


def write_csv(path: Path, rows: list[dict[str, object]], fields: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(paths: list[Path]) -> list[dict[str, str]]:
    """The rows of ``paths``; a later row of the same configuration (overrides) replaces an earlier one."""
    rows: dict[str, dict[str, str]] = {}
    for path in paths:
        with path.open() as handle:
            for row in csv.DictReader(handle):
                rows[row["overrides"]] = row
    return list(rows.values())


def estimate(rows: list[dict[str, str]]) -> None:
    """Add the estimate of each measured row's configuration, and the measured/estimated ratio, in place."""
    from infokv.eval.cost import job_cost

    for row in rows:
        cost = job_cost(compose(row["overrides"].split()))
        if cost.seconds is None:  # an architecture the estimate does not know: left blank
            continue
        row["estimate_seconds"] = f"{cost.seconds:.1f}"
        row["estimate_one_method_seconds"] = f"{cost.seconds_one_method_per_job:.1f}"
        row["measured_over_estimate"] = f"{float(row['seconds']) / cost.seconds:.2f}"


def project() -> list[dict[str, object]]:
    """The estimate of every job of the paper presets as configured (hub data and models: nominal sizes
    where they cannot be read here)."""
    from infokv.eval.cost import job_cost

    rows = []
    for preset, jobs in PAPER_JOBS.items():
        for overrides in jobs:
            summary = job_cost(compose([f"experiment={preset}", *overrides])).summary()
            rows.append({"preset": preset, "job": " ".join(overrides), **summary})
    return rows


def markdown_table(header: list[str], lines: list[list[object]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines),
    ]


def one_method_rows(rows: list[dict[str, str]]) -> list[list[object]]:
    """Per job measured both ways: the job with all its methods against the sum of the jobs of one method
    each (those measured), measured and estimated."""
    single: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if " method=[" in row["overrides"]:
            single.setdefault(row["overrides"].split(" method=[")[0], []).append(row)
    lines = []
    for row in rows:
        alone = single.get(row["overrides"], [])
        if not alone or " method=[" in row["overrides"]:
            continue
        measured = sum(float(r["seconds"]) for r in alone)
        estimated = sum(float(r["estimate_seconds"] or "nan") for r in alone)
        names = f"{len(alone)} of {len(row['methods'].split())}: " + " ".join(r["methods"] for r in alone)
        lines.append(
            [row["model"], row["prompt_tokens"], names, row["seconds"], f"{measured:.1f}",
             f"{measured / float(row['seconds']):.2f}", row["estimate_seconds"], f"{estimated:.1f}",
             f"{estimated / float(row['estimate_seconds'] or 'nan'):.2f}"]
        )  # fmt: skip
    return lines


def readme(rows: list[dict[str, str]], projected: list[dict[str, object]], command: str) -> str:
    """``results/cost/README.md`` from the rows: every figure is read from them, none typed by hand."""
    calls = sorted({(r["commit"], r["device"], r["software"]) for r in rows})
    measured = markdown_table(
        ["part", "model", "methods", "prompt tokens", "samples", "max new", "new tokens", "settings",
         "build s", "data s", "measured s", "estimate s", "measured / estimate"],
        [[r["part"], r["model"], r["methods"], r["prompt_tokens"], r["samples"], r["max_new_tokens"],
          r["new_tokens"], r["settings"],
          r["build_seconds"], r["prepare_seconds"], r["seconds"], r["estimate_seconds"],
          r["measured_over_estimate"]] for r in rows],
    )  # fmt: skip
    ratios: dict[str, list[float]] = {}
    for r in rows:
        if not r["measured_over_estimate"] or " method=[" in r["overrides"]:
            continue
        ratios.setdefault(r["part"], []).append(float(r["measured_over_estimate"]))
    correction = {part: statistics.mean(values) for part, values in ratios.items()}
    totals: dict[str, list[float]] = {}
    for p in projected:
        part = str(p["preset"]).removeprefix("paper_")
        total = totals.setdefault(part, [0.0, 0.0, 0])
        total[0] += p["gpu_hours"] or 0.0
        total[1] += p["gpu_hours_one_method_per_job"] or 0.0
        total[2] += 1
    projection = markdown_table(
        ["table", "jobs", "GPU-h, methods share a job", "GPU-h, one method per job", "× measured/estimate",
         "corrected GPU-h, shared", "corrected GPU-h, one per job"],
        [[part, int(jobs), f"{shared:.1f}", f"{apart:.1f}", f"{correction.get(part, 1.0):.2f}",
          f"{shared * correction.get(part, 1.0):.1f}", f"{apart * correction.get(part, 1.0):.1f}"]
         for part, (shared, apart, jobs) in totals.items()],
    )  # fmt: skip
    jobs = markdown_table(
        ["preset", "job", "samples", "prompt tokens", "generated tokens at most", "GPU-h shared",
         "GPU-h one per job", "notes"],
        [[p["preset"], p["job"], p["samples"], p["prompt_tokens"], p["generated_tokens_at_most"],
          f"{p['gpu_hours']:.2f}", f"{p['gpu_hours_one_method_per_job']:.2f}", p["notes"]]
         for p in projected],
    )  # fmt: skip
    lines = [
        "# Cost estimate against whole jobs",
        "",
        "Written by `scripts/cost_check.py` from `check.csv`; edit the script, not this file.",
        "",
        "Each row is one `infokv-run` job of a paper preset (`experiment=paper_prefill` or `paper_decode`,"
        " the preset's methods and budgets, all on one prefill per sample) with a random-weight model of"
        " the paper's architecture (`model=random-...`) and the offline `passkey` generator standing in"
        " for the hub data at the preset's prompt length; prompt tokens are counted by the stand-in"
        " tokenizer. Measured: the job's samples (`run_job` less the model's build and the data's"
        " preparation, both shown), so it includes the first use of kernels in each process and"
        " every compression; `max new` is the job's `max_new_tokens` and `new tokens` what its"
        " completions generated in all (random weights seldom stop early). Estimate:"
        " `infokv.eval.cost.job_cost` of the same configuration.",
        "",
        f"Estimates added by `{command}`. Measuring calls (commit, device, software):",
        "",
        *(f"- `{commit}`, {device}, {software}" for commit, device, software in calls),
        "",
        "## Measured jobs",
        "",
        *measured,
        "",
        "## One method per job",
        "",
        "The same job with all the preset's methods on one prefill per sample, against the jobs of one"
        " method each that were measured (their methods listed), in seconds; `×` is the second over the"
        " first.",
        "",
        *markdown_table(
            [
                "model",
                "prompt tokens",
                "methods run alone",
                "shared s",
                "alone s",
                "×",
                "estimate shared s",
                "estimate alone s",
                "estimate ×",
            ],
            one_method_rows(rows),
        ),
        "",
        "## The paper tables, projected",
        "",
        "`job_cost` of every job of the two presets as configured (hub data not readable here: the"
        " benchmarks' published sizes and nominal prompt lengths), summed per table; the corrected columns"
        " multiply by the mean measured/estimate ratio of that part's measured jobs of all the preset's"
        " methods above, carried over as it is where those jobs generated fewer tokens than the preset's"
        " `max_new_tokens`.",
        "",
        *projection,
        "",
        "### Per job",
        "",
        *jobs,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("prefill", "decode"), help="which preset's shapes to measure")
    parser.add_argument(
        "--models", nargs="+", help="model configs (default: the part's random architectures)"
    )
    parser.add_argument("--lengths", nargs="+", type=int, help="passkey prompt tokens (default: the part's)")
    parser.add_argument("--samples", type=int, help="samples per job (default: 2 prefill, 16 decode)")
    parser.add_argument("--new-tokens", type=int, help="max_new_tokens (default: 1024 prefill, 4096 decode)")
    parser.add_argument(
        "--one-method-per-job",
        action="store_true",
        help="run each of the preset's methods as a job of its own",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of check.csv")
    parser.add_argument("--commit", default="", help="the code's commit, recorded with each row")
    parser.add_argument("--estimate-only", nargs="+", type=Path, metavar="CSV", help="measured rows to merge")
    args = parser.parse_args(argv)

    if args.estimate_only:
        rows = read_csv(args.estimate_only)
        estimate(rows)
        write_csv(RESULTS / "check.csv", rows, MEASURED + ESTIMATED)
        command = "python scripts/cost_check.py --estimate-only " + " ".join(map(str, args.estimate_only))
        (RESULTS / "README.md").write_text(readme(rows, project(), command))
        return
    if args.part is None:
        parser.error("give --part prefill|decode to measure, or --estimate-only CSV")
    prefill = args.part == "prefill"
    models = args.models or (
        ["random-llama-3.1-8b", "random-llama-3.2-3b"]
        if prefill
        else ["random-llama-3.1-8b", "random-qwen2-7b"]
    )
    lengths = args.lengths or ([16384, 32768, 65536] if prefill else [512])
    samples = args.samples or (2 if prefill else 16)
    new_tokens = args.new_tokens or (1024 if prefill else 4096)
    jobs = shapes(args.part, samples, new_tokens, models, lengths)
    if args.one_method_per_job:
        jobs = [replace(job, methods=(name,)) for job in jobs for name in compose(job.overrides()).methods]
    rows = []
    for shape in jobs:
        rows.append(measure(shape, args.commit))
        print(rows[-1], flush=True)
        write_csv(args.out / "check.csv", rows, MEASURED)


if __name__ == "__main__":
    main()
