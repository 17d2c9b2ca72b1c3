"""Statistics of the misalignment benchmark: means with Student-t intervals over seeds, and bootstrap
percentile intervals over test images."""

import math
import statistics
from typing import Sequence, Tuple

import numpy as np

# two-sided 95% Student t quantiles, df = 1..30
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t; 0 for a single value)."""
    v = [float(x) for x in values if x == x]
    if not v:
        return float("nan"), float("nan")
    m = statistics.fmean(v)
    if len(v) < 2:
        return m, 0.0
    t = _T95[len(v) - 2] if len(v) - 1 <= len(_T95) else 1.96
    return m, t * statistics.stdev(v) / math.sqrt(len(v))


def resample_counts(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_items] bootstrap resamples as counts: row b says how often each item was drawn when
    n_items items are drawn with replacement. A statistic that takes item weights then needs no copies."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_resamples).astype(float)


def percentile_interval(samples: Sequence[float], level: float = 0.95) -> Tuple[float, float]:
    """The bootstrap percentile interval: the (1 - level)/2 and (1 + level)/2 quantiles of the resampled
    statistic (NaN resamples, e.g. a size range left empty by a resample, are left out)."""
    v = np.asarray(samples, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
