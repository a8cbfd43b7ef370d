"""The dry run and its cost estimate: counts without weights, rates read back from results/bench."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infokv.eval import cli, runner
from infokv.eval.cost import RATES, Rates, Workload, decode_seconds, estimate, reference_architecture

ROOT = Path(__file__).resolve().parent.parent


def measured(method: str, tokens: int, batch: int, metric: str) -> float:
    import csv

    with RATES.open() as handle:
        for row in csv.DictReader(handle):
            if (row["method"], row["prompt_tokens"], row["batch"], row["metric"]) == (
                method, str(tokens), str(batch), metric,
            ):  # fmt: skip
                return float(row["value"])
    raise KeyError((method, tokens, batch, metric))


def test_rates_give_back_the_measured_prefill_and_decode_of_the_reference():
    reference = reference_architecture()
    rates = Rates.read(RATES, reference)
    assert rates.prefill_seconds(32768, reference) == pytest.approx(
        measured("full", 32768, 1, "prefill_seconds")
    )
    for batch in (1, 16):
        rate = batch / rates.step_seconds([32768] * batch, reference)
        assert rate == pytest.approx(measured("full", 32768, batch, "decode_tokens_per_second"), rel=0.1)
    # A row the fit never saw: the decoding scenario (1024-token prompt, 16384 new tokens, batch 1).
    work = Workload(samples=1, prompt_tokens=1024, draws=1, batch_size=1, max_new_tokens=16384,
                    settings=[("full", 1.0, 0.0)])  # fmt: skip
    seconds = estimate(work, rates, reference).seconds
    assert seconds == pytest.approx(measured("full", 1024, 1, "scenario_seconds"), rel=0.25)


def test_one_method_per_job_costs_more_than_sharing_the_prefill():
    reference = reference_architecture()
    rates = Rates.read(RATES, reference)
    settings = [("full", 1.0, 0.0)] + [(m, b, 0.0) for m in ("snapkv", "infokv") for b in (0.4, 0.2)]
    work = Workload(
        samples=10, prompt_tokens=32768, draws=1, batch_size=1, max_new_tokens=256, settings=settings
    )
    cost = estimate(work, rates, reference)
    assert 0 < cost.seconds < cost.seconds_one_method_per_job
    summary = cost.summary()
    assert summary["prefills"] == 10 and summary["prefills_one_method_per_job"] == 30
    assert summary["generated_tokens_at_most"] == 10 * 5 * 256


def test_fidelity_adds_an_answer_forward_per_prefill_setting_and_a_forced_decode_per_decode_setting():
    reference = reference_architecture()
    rates = Rates.read(RATES, reference)
    common = {"samples": 4, "prompt_tokens": 32768, "draws": 1, "batch_size": 4, "max_new_tokens": 256}
    prefill = [("full", 1.0, 0.0), ("snapkv", 0.2, 0.0), ("infokv", 0.2, 0.0)]
    without = estimate(Workload(**common, settings=prefill), rates, reference).seconds
    measured = estimate(Workload(**common, settings=prefill, fidelity_steps=256), rates, reference).seconds
    assert without < measured < 1.05 * without  # 256 answer tokens beside a 32K prompt: a few percent
    decoding = [("full", 1.0, 0.0), ("rpc", 1.0, 0.25)]
    work = Workload(**common, settings=decoding, compress_every=64)
    plain = estimate(work, rates, reference).seconds
    work.fidelity_steps = 256  # every step forced again, by the compressing rows and the full ones
    forced = estimate(work, rates, reference).seconds
    assert forced - plain == pytest.approx(decode_seconds(work, decoding, rates, reference))


@pytest.mark.parametrize(("preset", "jobs"), [("paper_prefill", 12), ("paper_decode", 6)])
def test_dry_run_of_a_paper_preset_prints_jobs_tokens_and_gpu_hours_without_weights(
    tmp_path, monkeypatch, preset, jobs
):
    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(runner, "load_weights", no_weights)
    monkeypatch.setattr(sys, "argv", ["infokv-run", "-m", f"experiment={preset}", "dry_run=true",
                                      f"hydra.sweep.dir={tmp_path}"])  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main()
    out = printed.getvalue()
    assert f"dry run of {jobs} job(s), total" in out
    costs = [yaml.safe_load(path.read_text()) for path in sorted(tmp_path.glob(f"*/{cli.COST_FILE}"))]
    assert len(costs) == jobs
    for cost in costs:
        assert cost["samples"] > 0 and cost["prompt_tokens"] > 0 and cost["generated_tokens_at_most"] > 0
        assert 0 < cost["gpu_hours"] < cost["gpu_hours_one_method_per_job"]


def test_a_local_config_folder_sets_output_root_and_slurm_once(tmp_path):
    (tmp_path / "local").mkdir()
    shutil.copy(ROOT / "infokv" / "conf" / "local" / "example.yaml", tmp_path / "local" / "default.yaml")
    script = Path(sys.executable).parent / "infokv-run"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "infokv.eval.cli"]
    environment = {"INFOKV_CONFIG_DIR": str(tmp_path), "USER": "tester", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*command, "experiment=small_prefill", "--cfg", "job", "--resolve"],
                          capture_output=True, text=True, env=environment)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["output_dir"] == "/scratch/tester/infokv/runs/small_prefill"
    assert job["slurm"]["account"] == "my-account"
    done = subprocess.run([*command, "launcher=slurm", "--cfg", "all", "--resolve"],
                          capture_output=True, text=True, env=environment)  # fmt: skip
    assert done.returncode == 0, done.stderr
    launcher = yaml.safe_load(done.stdout)["hydra"]["launcher"]
    assert launcher["account"] == "my-account" and launcher["partition"] == "gpu"
