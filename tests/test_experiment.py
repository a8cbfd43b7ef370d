"""Hydra configs, the run store, sharding, resume after SIGKILL, submitit, W&B and the tables."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from infokv import methods
from infokv.eval import benchmarks
from infokv.eval.configs import register_configs
from infokv.eval.runner import check_job, run_directory, run_job
from infokv.eval.store import RunStore, load_frame, record_key, run_directories, unique_records
from infokv.eval.tables import accuracy, paper_layout, write_tables

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "infokv" / "conf"
# A quick job: 4 passkey prompts of ~300 tokens, 6 new tokens each, on the embedded model.
QUICK = ["benchmark.limit=4", "benchmark.options.tokens=300", "max_new_tokens=6", "batch_size=1"]


def config(*overrides: str):
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def cli(*arguments: str) -> list[str]:
    """The installed console script ``infokv-run`` where pip installed the package, else the module."""
    script = Path(sys.executable).parent / "infokv-run"
    module = [sys.executable, "-m", "infokv.eval.cli"]
    return [str(script), *arguments] if script.exists() else [*module, *arguments]


# ---- configs mirror the code --------------------------------------------------------------------------


@pytest.mark.parametrize("name", methods.available())
def test_method_configs_compose_to_the_dataclass_defaults(name):
    scenario = "prefill" if "prefill" in methods.get(name).phases else "decode"
    job = check_job(config(f"method={name}", f"scenario={scenario}", "max_new_tokens=2048"))
    assert job.methods == {name: methods.get(name)}


def test_every_config_group_option_resolves_and_names_real_code():
    for path in sorted((CONF / "benchmark").glob("*.yaml")):
        cfg = config(f"benchmark={path.stem}")
        assert cfg.benchmark.name in benchmarks.available()
    for path in sorted((CONF / "model").glob("*.yaml")):
        assert config(f"model={path.stem}").model.dtype in ("auto", "float32", "bfloat16", "float16")
    for scenario in ("prefill", "decode"):
        method = "snapkv" if scenario == "prefill" else "rpc"
        check_job(config(f"scenario={scenario}", f"method={method}", "max_new_tokens=2048"))


def test_cfg_job_prints_the_resolved_config():
    done = subprocess.run(cli("--cfg", "job", "method=infokv", "budget=0.2"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["methods"] == {"infokv": {"name": "infokv", **methods.get("infokv").params()}}
    assert printed["budget"] == 0.2 and printed["benchmark"]["name"] == "passkey"


def test_slurm_launcher_is_submitit():
    done = subprocess.run(cli("launcher=slurm", "--cfg", "hydra"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    launcher = yaml.safe_load(done.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert {"partition", "gpus_per_node", "timeout_min", "array_parallelism"} <= set(launcher)


def test_run_directory_ignores_how_much_and_where_but_not_what():
    base = config("method=snapkv")
    same = config("method=snapkv", "benchmark.limit=3", "batch_size=2", "shard.count=2", "wandb=false")
    other = config("method=snapkv", f"methods.snapkv.kernel={base.methods.snapkv.kernel + 2}")
    job = check_job(base)
    assert run_directory(base, job) == run_directory(same, job)
    assert run_directory(base, job) != run_directory(other, check_job(other))


def test_a_local_model_directory_resolves_with_model_hf(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    done = subprocess.run(
        cli("model=hf", f"model.name={folder}", "--cfg", "job"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    model = yaml.safe_load(done.stdout)["model"]
    assert model["name"] == str(folder) and model["dtype"] == "auto" and model["device"] == "auto"
    cfg = config("model=hf", f"model.name={folder}")
    assert run_directory(cfg, check_job(cfg)).parts[-3:-1] == ("my-model", "prefill")
    labelled = config("model=hf", f"model.name={folder}", "model.label=mine")
    assert run_directory(labelled, check_job(labelled)) == run_directory(cfg, check_job(cfg)).parents[2] / (
        "mine/prefill/" + run_directory(cfg, check_job(cfg)).name
    )


def test_a_job_of_several_methods_and_variants_checks_each_entry():
    cfg = config(
        "method=[full,snapkv,infokv]", "+methods.infokv_a08={name:infokv,alpha:0.8}", "budget=[0.4,0.2]"
    )
    job = check_job(cfg)
    assert list(job.methods) == ["full", "snapkv", "infokv", "infokv_a08"]
    assert job.methods["infokv_a08"] == methods.get("infokv", alpha=0.8)
    labels = [item.label() for item in job.settings]
    assert labels == ["full@1", "snapkv@0.4", "snapkv@0.2", "infokv@0.4", "infokv@0.2",
                      "infokv_a08:infokv@0.4", "infokv_a08:infokv@0.2"]  # fmt: skip
    assert run_directory(cfg, job).name.startswith("full+snapkv+infokv+infokv_a08@")


def test_presets_run_their_methods_in_one_job_per_prefill():
    for preset, jobs in {
        "small_prefill": 2,
        "small_headline": 2,
        "paper_prefill": 12,
        "small_decode": 1,
        "paper_decode": 6,
    }.items():
        done = subprocess.run(cli(f"experiment={preset}", "--cfg", "hydra"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        params = yaml.safe_load(done.stdout)["hydra"]["sweeper"]["params"] or {}
        assert "method" not in params
        count = 1
        for values in params.values():
            count *= len(str(values).split(","))
        assert count == jobs, preset


# ---- the run store: resume, shards --------------------------------------------------------------------


def test_shards_merge_into_one_result_and_a_rerun_skips_finished_samples(tmp_path):
    overrides = [*QUICK, f"output_dir={tmp_path}", "wandb=false", "progress=false", "budget=[0.6,0.3]"]
    directories = {run_job(config(*overrides, "shard.count=2", f"shard.index={i}"))[0] for i in (0, 1)}
    assert len(directories) == 1
    directory = directories.pop()
    assert sorted(p.name for p in directory.glob("samples*.jsonl")) == [
        "samples.shard-0-of-2.jsonl",
        "samples.shard-1-of-2.jsonl",
    ]
    records = unique_records(directory)
    assert len(records) == 4 * 2 and len({record_key(r) for r in records}) == 8
    assert {r["budget"] for r in records} == {"0.6", "0.3"}
    record = records[0]
    assert record["prompt"] and "completion" in record and "extracted" in record and record["stats"]
    before = {p: p.read_bytes() for p in directory.glob("samples*.jsonl")}
    _, table = run_job(config(*overrides))  # unsharded rerun: everything is done
    assert {p: p.read_bytes() for p in directory.glob("samples*.jsonl")} == before
    assert table["n"].tolist() == [4, 4]
    assert (directory / "config.yaml").exists() and "git_commit" in (
        directory / "environment.json"
    ).read_text()


def kill_after_records(command: list[str], folder: Path, records: int) -> None:
    """Start ``command`` in ``folder`` and SIGKILL it once its runs (``folder/runs``) hold ``records``."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if sum(len(unique_records(d)) for d in run_directories(folder / "runs")) >= records:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_multirun_resumes_without_duplicates_or_losses(tmp_path):
    command = cli(
        "-m", "method=snapkv,streamingllm", *QUICK, f"output_dir={tmp_path / 'runs'}", "wandb=false",
        "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    kill_after_records(command, tmp_path, 2)
    first = {d: unique_records(d) for d in run_directories(tmp_path / "runs")}
    scored = sum(map(len, first.values()))
    assert 2 <= scored < 8, "killed midway"
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    final = {d: unique_records(d) for d in run_directories(tmp_path / "runs")}
    assert len(final) == 2
    for directory, records in final.items():
        raw = [line for p in directory.glob("samples*.jsonl") for line in p.read_text().splitlines()]
        assert len(raw) == len(records) == 4, "no duplicate line, no lost sample"
        assert records[: len(first.get(directory, []))] == first.get(directory, [])
    assert "sweep" in done.stdout and "streamingllm" in done.stdout and "snapkv" in done.stdout


def test_one_prefill_per_sample_serves_every_method_and_budget(tmp_path, monkeypatch):
    from infokv.engine import sweep

    calls = []
    real = sweep.prefill

    def counted(model, input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return real(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(sweep, "prefill", counted)
    overrides = [*QUICK, f"output_dir={tmp_path}", "wandb=false", "progress=false", "budget=[0.6,0.3]"]
    directory, table = run_job(config(*overrides, "method=[full,snapkv,h2o,infokv]"))
    assert calls == [1, 1, 1, 1], "one prefill of one row per sample (batch_size=1)"
    assert len(table) == 1 + 3 * 2 and set(table["n"]) == {4}
    records = unique_records(directory)
    assert {(r["method"], r["budget"]) for r in records} == {("full", "1")} | {
        (method, budget) for method in ("snapkv", "h2o", "infokv") for budget in ("0.6", "0.3")
    }


def test_killed_many_method_job_resumes_without_recomputing_or_losing_a_record(tmp_path):
    command = cli(
        "method=[snapkv,streamingllm]", "budget=[0.6,0.3]", *QUICK, f"output_dir={tmp_path / 'runs'}",
        "wandb=false", "progress=false", f"hydra.run.dir={tmp_path / 'hydra'}",
    )  # fmt: skip
    kill_after_records(command, tmp_path, 4)
    [directory] = run_directories(tmp_path / "runs")
    first = unique_records(directory)
    assert 4 <= len(first) < 16 and len(first) % 4 == 0, "killed between samples, each with its 4 records"
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    final = unique_records(directory)
    raw = [line for p in directory.glob("samples*.jsonl") for line in p.read_text().splitlines()]
    assert len(raw) == len(final) == 16, "no record computed twice, none lost"
    assert final[: len(first)] == first, "the records written before the kill are kept as they were"
    assert {(r["sample_id"], r["method"], r["budget"]) for r in final} == {
        (r["sample_id"], method, budget)
        for r in final
        for method in ("snapkv", "streamingllm")
        for budget in ("0.6", "0.3")
    }


def test_sweep_runs_as_a_two_job_array_through_submitit_local(tmp_path):
    done = subprocess.run(
        cli(
            "-m",
            "launcher=submitit_local",
            "method=snapkv,h2o",
            "benchmark.limit=2",
            "benchmark.options.tokens=300",
            "max_new_tokens=4",
            f"output_dir={tmp_path / 'runs'}",
            "wandb=false",
            "progress=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    directories = run_directories(tmp_path / "runs")
    assert sorted(d.name.split("@")[0] for d in directories) == ["h2o", "snapkv"]
    assert all(len(unique_records(d)) == 2 for d in directories)
    logs = list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert len({p.name.split("_")[0] for p in logs}) == 2, "one submitit job per sweep point"


def test_wandb_offline_writes_a_run_into_the_run_directory(tmp_path):
    directory, _ = run_job(config(*QUICK, "benchmark.limit=1", f"output_dir={tmp_path}", "progress=false"))
    from infokv.eval.cli import track

    cfg = config(*QUICK, "benchmark.limit=1", f"output_dir={tmp_path}")
    table = pd.DataFrame([{"method": "snapkv", "budget": "0.4", "score": 1.0}])
    track(cfg, directory, table)
    assert list((directory / "wandb").glob("offline-run-*/run-*.wandb"))


def test_wandb_logs_the_paper_table_with_missing_cells(tmp_path):
    from infokv.eval.tracking import Tracker

    table = accuracy(synthetic_frame())  # nullable columns: no comparison for the full cache itself
    assert table.isna().any().any()
    tracker = Tracker("offline", "infokv", {"size": "test"}, tmp_path, name="tables", job_type="tables")
    tracker.log_table("accuracy", table)
    tracker.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


# ---- tables and the notebook ---------------------------------------------------------------------------


def synthetic_frame() -> pd.DataFrame:
    rows = []
    for method, budgets in (("full", ["1"]), ("snapkv", ["0.4", "0.2"]), ("infokv", ["0.4", "0.2"])):
        for budget in budgets:
            for cot in (True, False):
                for sample in range(4):
                    right = sample < (4 if method == "full" else 2 if budget == "0.2" else 3)
                    rows.append(
                        {"scenario": "prefill", "model": "m", "benchmark": "b", "method": method,
                         "budget": budget, "cot": cot, "sample_id": f"s{sample}", "sample_index": 0,
                         "score": float(right), "completion": "yes" if right else "no"}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_accuracy_table_and_paper_layout():
    table = accuracy(synthetic_frame())
    snap = table[(table.method == "snapkv") & (table.budget == "0.2") & (table["style"] == "cot")].iloc[0]
    assert snap.accuracy == 50.0 and snap.agreement == 50.0 and snap.n == 4
    wide = paper_layout(table)
    assert list(wide.index.get_level_values("method")) == ["full", "infokv", "snapkv"]
    assert wide.loc[("m", "full"), ("b", "20%")] == "100.0 [51, 100] / 100.0 [51, 100]"
    assert wide.loc[("m", "snapkv"), ("b", "40%")] == "75.0 [30, 95] / 75.0 [30, 95]"


def test_write_tables_and_the_notebook_runs_on_them(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    results = tmp_path / "results"
    written = write_tables(accuracy(synthetic_frame()), results / "tables", "small")
    assert {p.name for p in written} == {"small.csv", "small_prefill.md", "small_prefill.tex"}
    assert (
        "| m | snapkv | 75.0 [30, 95] / 75.0 [30, 95] | 50.0 [15, 85] / 50.0 [15, 85] |"
        in (results / "tables" / "small_prefill.md").read_text()
    )
    notebook = nbformat.read(ROOT / "notebooks" / "accuracy_vs_budget.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFOKV_RESULTS", str(results))
        client.execute()
    assert (results / "figures" / "accuracy_vs_budget_small.png").stat().st_size > 10_000


def test_load_frame_spreads_metrics(tmp_path):
    store = RunStore(tmp_path / "run")
    store.open("a: 1\n", {})
    store.append(
        [{"sample_id": "x", "setting": "s", "sample_index": 0, "metrics": {"acc": 1.0}, "score": 1.0}]
    )
    frame = load_frame(tmp_path)
    assert frame.loc[0, "metric.acc"] == 1.0 and frame.loc[0, "run"] == str(tmp_path / "run")
