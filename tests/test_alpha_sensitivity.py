"""experiments/alpha_sensitivity.py on records shaped like the preset's runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location(
    "alpha_sensitivity", ROOT / "experiments" / "alpha_sensitivity.py"
)
alpha_sensitivity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alpha_sensitivity)


def record(method: str, name: str, alpha: float | None, sample: int, kl: float, score: float) -> dict:
    parameters = {} if alpha is None else {"alpha": alpha, "entropy_position": "producing"}
    return {
        "benchmark": "ruler_niah", "model": "smollm2-135m", "scenario": "prefill", "method": method,
        "method_name": name, "parameters": parameters, "budget": "0.4", "cot": False,
        "setting": f"{method}@40%", "sample_id": f"s{sample}", "sample_index": 0, "score": score,
        "metrics": {}, "fidelity": {"kl_mean": kl, "argmax_agreement": 1.0 - kl / 4, "kl_per_position": [kl]},
        "completion": "", "prompt": "",
    }  # fmt: skip


def test_differences_are_paired_and_alpha_one_is_exactly_snapkv(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for sample in range(10):
        snap = float(rng.uniform(0.5, 1.5))
        records.append(record("snapkv", "snapkv", None, sample, snap, float(sample % 2)))
        records.append(record("infokv_a100_producing", "infokv", 1.0, sample, snap, float(sample % 2)))
        records.append(record("infokv_a080_producing", "infokv", 0.8, sample, snap - 0.2, float(sample % 2)))
    run = tmp_path / "runs" / "ruler_niah" / "smollm2-135m" / "prefill" / "job"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("methods: {}\n")
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    alpha_sensitivity.main(["--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    import pandas as pd

    table = pd.read_csv(tmp_path / "results" / "alpha_sensitivity" / "alpha_sensitivity.csv")
    same = table[table["alpha"] == 1.0]
    assert (same["difference"] == 0).all() and not same["resolved"].any()
    kl = table[(table["alpha"] == 0.8) & (table["metric"] == "kl")].iloc[0]
    assert abs(kl["difference"] + 0.2) < 1e-9
    assert kl["resolved"] and kl["high"] < 0 and kl["n"] == 10
    text = (tmp_path / "results" / "alpha_sensitivity" / "README.md").read_text()
    assert "resolved in 1: InfoKV closer to the full cache in 1" in text
    assert (tmp_path / "results" / "figures" / "alpha_sensitivity.png").stat().st_size > 0
