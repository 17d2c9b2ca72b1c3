"""Level-3 statistics: every op against RoIPool paired by seed, intervals over seeds and over test images, and
the object-size map (the gap per size range, per stride, and where the stride trend changes sign).

Two intervals are given for each number, answering different questions:
- over seeds (Student t on the per-seed values or paired differences): how much training randomness moves it;
- over test images (bootstrap percentile interval of the seed mean, the same resamples for every run, so gaps
  and stride differences stay paired): how much the particular test images move it.
Which of the two is wider depends on how far training has converged; the report counts it.
"""

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .level3_learned import BASELINE, REFERENCE
from .stats import mean_ci, percentile_interval

METRICS = ("AP", "AP50", "AP75", "mIoU")
# differences between two ops other than the gap to RoIPool, each answering one question of the paper's Table 2c
CONTRASTS = (
    (REFERENCE, "RoIWarp"),  # what is left once the box is not rounded: the bins' own quantization and max
    (REFERENCE, "RoIAlign aligned=False"),  # the cost of the half-cell shift
    (REFERENCE, "RoIAlign max"),  # avg against max aggregation
)


def _seed_mean(
    boot: Dict[tuple, Dict[str, np.ndarray]],
    stride: int,
    op: str,
    metric: str,
    seeds: Sequence[int],
    minus: Optional[str] = None,
) -> np.ndarray:
    """[1 + B] seed mean of a metric (row 0 the point estimate, rows 1.. the resamples), optionally minus the
    same for the op ``minus`` (paired by seed and by resample)."""
    rows = [boot[(stride, op, s)][metric] - (boot[(stride, minus, s)][metric] if minus else 0.0) for s in seeds]
    return np.mean(rows, axis=0)


def _entry(per_seed: List[float], resampled: np.ndarray) -> dict:
    mean, ci = mean_ci(per_seed)
    ci = ci if len(per_seed) > 1 else float("nan")  # one seed: no interval over seeds
    lo, hi = percentile_interval(resampled[1:])
    return dict(mean=mean, seed_ci=ci, boot_lo=lo, boot_hi=hi)


def summarize(res: dict) -> dict:
    """Rows per (stride, op) with every metric and its gap to RoIPool, and the size map."""
    boot, seeds = res["bootstrap"], list(range(res["seeds"]))
    rows = []
    for stride in res["strides"]:
        ops = [o["name"] for o in res["ops"] if (stride, o["name"], 0) in boot]  # the ops trained at this stride
        for op in ops:
            row = dict(stride=stride, op=op)
            for m in METRICS:
                values = [boot[(stride, op, s)][m][0] for s in seeds]
                row[m] = _entry(values, _seed_mean(boot, stride, op, m, seeds))
                if op != BASELINE and BASELINE in ops:
                    diffs = [boot[(stride, op, s)][m][0] - boot[(stride, BASELINE, s)][m][0] for s in seeds]
                    row["gap_" + m] = _entry(diffs, _seed_mean(boot, stride, op, m, seeds, minus=BASELINE))
            rows.append(row)
    contrasts = []
    for stride in res["strides"]:
        for a, b in CONTRASTS:
            if (stride, a, 0) in boot and (stride, b, 0) in boot:
                row = dict(stride=stride, op=a, minus=b)
                for m in METRICS:
                    diffs = [boot[(stride, a, s)][m][0] - boot[(stride, b, s)][m][0] for s in seeds]
                    row[m] = _entry(diffs, _seed_mean(boot, stride, a, m, seeds, minus=b))
                contrasts.append(row)
    out = dict(rows=rows, contrasts=contrasts)
    if all((stride, op, 0) in boot for stride in res["strides"] for op in (BASELINE, REFERENCE)):
        out["size_map"] = size_map(res, seeds)
        strides = sorted(res["strides"])
        if len(strides) > 1:  # the stride trend of the gap over all objects
            out["trend"] = {}
            for m in METRICS:
                t = _seed_mean(boot, strides[-1], REFERENCE, m, seeds, minus=BASELINE) - _seed_mean(
                    boot, strides[0], REFERENCE, m, seeds, minus=BASELINE
                )
                lo, hi = percentile_interval(t[1:])
                out["trend"][m] = dict(mean=float(t[0]), boot_lo=lo, boot_hi=hi)
    return out


def size_map(res: dict, seeds: Sequence[int]) -> dict:
    """The gap (REFERENCE - BASELINE) per size range and stride, and the stride trend (largest stride's gap minus
    the smallest's) per size range, for mask IoU and AP, with the crossover where the trend changes sign."""
    boot, strides = res["bootstrap"], sorted(res["strides"])
    bins = []
    for b in range(res["n_bins"]):
        entry = dict(
            bin=b,
            lo=res["data"]["size_edges"][b],
            hi=res["data"]["size_edges"][b + 1],
            n=res["data"]["objects_per_bin"][b],
            median_px=res["data"]["bin_median_px"][b],
        )
        for m in ("mIoU", "AP"):
            key = f"{m}@{b}"
            gaps = {s: _seed_mean(boot, s, REFERENCE, key, seeds, minus=BASELINE) for s in strides}
            for s in strides:
                lo, hi = percentile_interval(gaps[s][1:])
                entry[f"gap_{m}_s{s}"] = dict(mean=float(gaps[s][0]), boot_lo=lo, boot_hi=hi)
            if len(strides) > 1:
                trend = gaps[strides[-1]] - gaps[strides[0]]
                lo, hi = percentile_interval(trend[1:])
                entry[f"trend_{m}"] = dict(mean=float(trend[0]), boot_lo=lo, boot_hi=hi)
        bins.append(entry)
    return dict(bins=bins, strides=strides)


def crossover(sizes: Sequence[float], trend: Sequence[float]) -> Optional[float]:
    """The object size (px) above which the stride trend stays non-negative: between the largest size range
    where it is negative and the next one, interpolated linearly in log size. None when the trend is negative
    in the largest size range (no crossover in range) or nowhere (the gap grows at every size)."""
    pts = [(s, t) for s, t in zip(sizes, trend) if s == s and t == t and s > 0]
    negative = [i for i, (_, t) in enumerate(pts) if t < 0]
    if not negative or negative[-1] == len(pts) - 1:
        return None
    (s0, t0), (s1, t1) = pts[negative[-1]], pts[negative[-1] + 1]
    f = -t0 / (t1 - t0)
    return float(math.exp(math.log(s0) + f * (math.log(s1) - math.log(s0))))


def size_map_crossover(size_map: dict, metric: str) -> Optional[float]:
    """The crossover of a size map's stride trend in ``metric`` ("mIoU" or "AP"), from its stored bins."""
    if len(size_map["strides"]) < 2:
        return None
    bins = size_map["bins"]
    return crossover([e["median_px"] for e in bins], [e[f"trend_{metric}"]["mean"] for e in bins])


def in_papers_regime(ap_fine: float, ap_coarse: float, tolerance: float = 0.1) -> bool:
    """The regime check: in the paper RoIAlign's AP is about the same at stride 16 and 32 (30.3 vs 30.9), so the
    stride-32 features carry an object's shape inside a cell. A run is in that regime when RoIAlign's AP at the
    coarse stride is within ``tolerance`` (relative to the fine stride's AP) of its AP at the fine stride."""
    if not (ap_fine == ap_fine and ap_coarse == ap_coarse) or ap_fine <= 0:
        return False
    return abs(ap_fine - ap_coarse) <= tolerance * ap_fine
