"""The demo's one-line reading of its table."""

from __future__ import annotations

import math

import pandas as pd

from infokv.eval.demo import mean, reading


def test_reading_names_the_closest_and_farthest_method_per_budget():
    frame = pd.DataFrame(
        [
            {"method": "full", "budget": "full", "accuracy": 1.0, "kl_mean": 0.0},
            {"method": "snapkv", "budget": "0.4", "accuracy": 0.5, "kl_mean": 0.3},
            {"method": "infokv", "budget": "0.4", "accuracy": 0.75, "kl_mean": 0.1},
            {"method": "h2o", "budget": "0.2", "accuracy": 0.0, "kl_mean": 2.0},
            {"method": "snapkv", "budget": "0.2", "accuracy": 0.25, "kl_mean": 1.0},
        ]
    )
    line = reading(frame)
    assert line.startswith("Reading: at 40% infokv stays closest") and "snapkv farthest (KL 0.300" in line
    assert "at 20% snapkv stays closest to the full cache (KL 1.000, accuracy 0.25) and h2o farthest" in line


def test_mean_skips_completions_without_a_fidelity_record():
    assert mean([1.0, None, 3.0]) == 2.0 and math.isnan(mean([None]))
