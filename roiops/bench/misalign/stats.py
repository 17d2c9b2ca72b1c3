"""Statistics of the misalignment benchmark: bootstrap percentile intervals, and level 3's two-level bootstrap
(seeds, then test images)."""

from typing import Sequence, Tuple

import numpy as np


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


def seed_draws(n_seeds: int, n_resamples: int) -> np.ndarray:
    """[n_resamples, n_seeds] seed resamples as counts. Seeded by the number of seeds only, so every statistic
    over the same seeds draws the same seeds in resample b: differences stay paired by seed."""
    return resample_counts(n_seeds, n_resamples, seed=1000 + n_seeds)


def two_level(per_seed: np.ndarray) -> dict:
    """The two-level bootstrap of a seed mean. ``per_seed`` [n_seeds, 1 + B]: column 0 each seed's value on the
    test set, column b its value on the b-th resample of the test images (the same resample for every run).
    Resample b draws the seeds with replacement (seed_draws) and pairs them with image resample b, so both
    sources of variance are in it. Returns the resampled seed means [1 + B] (row 0 the plain mean) and, to
    compare the two sources, the same with only the seeds or only the images resampled."""
    v = np.asarray(per_seed, dtype=float)
    n, b = v.shape[0], v.shape[1] - 1
    counts = seed_draws(n, b)  # [B, n]
    with np.errstate(invalid="ignore"):
        both = np.einsum("bs,sb->b", counts, v[:, 1:]) / n
        seeds_only = counts @ v[:, 0] / n
    return dict(both=np.concatenate([[v[:, 0].mean()], both]), seeds=seeds_only, images=v[:, 1:].mean(0))


def _sd(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.std(ddof=1)) if x.size > 1 else float("nan")


def summarize_two_level(resampled: dict, n_seeds: int) -> dict:
    """An entry of the report: the mean, the two-level 95% interval [lo, hi] and its SD, and the SDs and
    intervals with only the seeds (sd_seed, seed_lo/hi) or only the test images (sd_image, image_lo/hi)
    resampled. NaN resamples (a size range a resample left empty) are left out."""
    lo, hi = percentile_interval(resampled["both"][1:])
    slo, shi = percentile_interval(resampled["seeds"])
    ilo, ihi = percentile_interval(resampled["images"])
    return dict(
        mean=float(resampled["both"][0]),
        lo=lo,
        hi=hi,
        sd=_sd(resampled["both"][1:]),
        sd_seed=_sd(resampled["seeds"]),
        sd_image=_sd(resampled["images"]),
        seed_lo=slo,
        seed_hi=shi,
        image_lo=ilo,
        image_hi=ihi,
        n_seeds=n_seeds,
    )


def verdict(lo: float, hi: float) -> str:
    """A claim that a quantity is positive: "held" when its whole interval is above 0, "not held" when it is
    wholly at or below 0, "undecided" when the interval straddles 0 (or is missing)."""
    if lo != lo or hi != hi:
        return "undecided"
    return "held" if lo > 0 else "not held" if hi <= 0 else "undecided"
