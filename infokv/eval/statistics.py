"""Confidence intervals for the result tables: how far a mean over a few hundred samples can be trusted.

Every figure in a table is a mean over samples, and every comparison is a difference of two such means
on the same samples. This module gives each its 95% interval:

* a proportion (scores that are all 0 or 1): the Wilson score interval (:func:`wilson`);
* any other mean (fractional scores such as IFEval's partial credit or pass@k, ``metric.*`` and
  ``fidelity.*`` columns): the percentile bootstrap over samples (:func:`bootstrap_mean`). Fractional
  scores are not Bernoulli trials, so the binomial variance behind Wilson would be wrong for them;
* the difference of two methods on the same samples: the bootstrap of the per-sample differences
  (:func:`paired_difference`), which resamples the samples jointly and so removes the variance the two
  methods share (the sample's difficulty), unlike two separate intervals;
* how many samples a difference of a given size would need to be resolved (:func:`samples_needed`).

The unit is the sample: where a sample has several draws, its value is the mean of its draws
(:func:`describe`), since draws of one prompt are not independent.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
POWER = 0.8
NAN_INTERVAL = (math.nan, math.nan)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must lie strictly between 0 and 1")


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion p̂ = k/n:

        (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n),   z = Φ⁻¹(1 − α/2).

    Unlike the normal approximation p̂ ± z·√(p̂(1−p̂)/n) it stays inside [0, 1] and does not collapse to a
    point at k = 0 or k = n (0 of 10 gives [0, 0.278]). ``trials`` = 0 gives (nan, nan): no data, no
    interval. Computed by :meth:`scipy.stats.binomtest`'s ``proportion_ci(method="wilson")``.
    """
    _check_confidence(confidence)
    if (
        isinstance(successes, bool)
        or isinstance(trials, bool)
        or not (float(successes).is_integer() and float(trials).is_integer())
    ):
        raise ValueError(f"successes {successes!r} and trials {trials!r} must be whole numbers")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes!r} must lie in [0, trials = {trials!r}]")
    if trials == 0:
        return NAN_INTERVAL
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("values contain NaN; drop the missing samples first")
    return array


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per sample):

        draw B resamples x*_b of n values with replacement, m_b = mean(x*_b);
        interval = (q_{α/2}, q_{1−α/2}) of {m_b}.

    Seeded, so a table is reproducible; fewer than 2 values give (nan, nan), since one sample says
    nothing about the spread. Computed by :func:`scipy.stats.bootstrap` (vectorised over resamples).
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples {resamples!r} must be at least 1")
    array = _values(values)
    if len(array) < 2:
        return NAN_INTERVAL
    if np.all(array == array[0]):  # every resample has the same mean
        return float(array[0]), float(array[0])
    result = stats.bootstrap(
        (array,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile", rng=seed
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def is_binary(values: Sequence[float] | np.ndarray) -> bool:
    """Whether every value is 0 or 1 (a Bernoulli outcome, where Wilson applies)."""
    return bool(np.isin(np.asarray(values, dtype=float), (0.0, 1.0)).all())


def mean_interval(
    values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, seed: int = SEED
) -> tuple[float, float]:
    """Interval of the mean at ``confidence``: Wilson when every value is 0 or 1, else the bootstrap."""
    array = _values(values)
    if is_binary(array):
        return wilson(int(array.sum()), len(array), confidence)
    return bootstrap_mean(array, confidence, seed=seed)


def samples_needed(
    sd: float, delta: float = 0.05, paired: bool = True, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """Samples for a two-sided test at level α = 1 − ``confidence`` to detect a true difference ``delta``
    with probability ``power``, at standard deviation ``sd``:

        paired (sd = σ_d of the per-sample differences):  n = ((z_{α/2} + z_β) · σ_d / δ)²
        unpaired (sd = σ of one arm, both arms alike):    n = 2 · ((z_{α/2} + z_β) · σ / δ)²  per arm

    with z_{α/2} = Φ⁻¹(1 − α/2) (1.96 at 95%) and z_β = Φ⁻¹(power) (0.84 at 0.8). Rounded up; a zero
    observed spread gives 0, which only says that the data at hand showed no variation.
    """
    _check_confidence(confidence)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power {power!r} must lie strictly between 0 and 1")
    if delta <= 0:
        raise ValueError(f"delta {delta!r} must be positive")
    if not sd >= 0:
        raise ValueError(f"sd {sd!r} must be a non-negative number")
    z = stats.norm.ppf(1 - (1 - confidence) / 2) + stats.norm.ppf(power)
    return float(math.ceil((1 if paired else 2) * (z * sd / delta) ** 2))


@dataclass(frozen=True)
class Difference:
    """Mean of a − b over paired samples, its bootstrap interval, and samples needed for ``delta``."""

    difference: float
    low: float
    high: float
    n: int
    n_for_delta: float

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the sign of the difference is settled at this confidence."""
        return bool(self.low > 0 or self.high < 0)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    delta: float = 0.05,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Difference:
    """Paired comparison of two methods on the same samples (``a[i]`` and ``b[i]`` score sample i):
    d_i = a_i − b_i, mean d̄, and the percentile bootstrap of d̄ (resampling samples, so both methods are
    resampled together); ``n_for_delta`` = :func:`samples_needed` at σ_d = sd(d, ddof=1)."""
    a, b = _values(a), _values(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = a - b
    low, high = bootstrap_mean(d, confidence, seed=seed)
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    n_for_delta = samples_needed(sd, delta, True, confidence) if len(d) > 1 else math.nan
    return Difference(float(d.mean()) if len(d) else math.nan, low, high, len(d), n_for_delta)


def per_sample(
    frame: pd.DataFrame, keys: list[str], columns: list[str], unit: str = "sample_id"
) -> pd.DataFrame:
    """One row per (``keys``, ``unit``): each column's mean over that sample's draws (NaN ignored)."""
    return frame.groupby(keys + [unit], sort=False)[columns].mean().reset_index()


def describe(
    frame: pd.DataFrame,
    keys: list[str],
    columns: list[str],
    unit: str = "sample_id",
    confidence: float = CONFIDENCE,
    proportions: Collection[str] | None = None,
) -> pd.DataFrame:
    """Per group of ``keys``: ``n`` (samples) and, for each numeric column c, its mean over samples with
    ``c_low`` and ``c_high`` (samples where c is missing are left out): :func:`mean_interval` for the
    columns of ``proportions`` (all columns when None), the bootstrap for the others, so that a continuous
    measure whose values happen to be all 0 (the full cache's KL) is not read as a proportion."""
    rows = []
    for key, part in per_sample(frame, keys, columns, unit).groupby(keys, sort=False):
        row: dict = dict(zip(keys, key, strict=True)) | {"n": len(part)}
        for column in columns:
            values = part[column].dropna().to_numpy(dtype=float)
            if proportions is None or column in proportions:
                low, high = mean_interval(values, confidence)
            else:
                low, high = bootstrap_mean(values, confidence)
            mean = values.mean() if len(values) else math.nan
            row |= {column: mean, f"{column}_low": low, f"{column}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)
