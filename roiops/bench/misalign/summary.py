"""Level-3 statistics: every number with a two-level bootstrap interval (seeds, then test images; see
stats.two_level), paired across ops by seed and by resample; the learning curves and their plateau; and the
object-size map in feature cells with the stride x cells estimates and the pixel crossover.

Each entry (stats.summarize_two_level) also carries the SDs with only the seeds or only the test images
resampled, so the report can say which source of variance dominates and which interval decided a verdict.
"""

import math
from typing import List, Optional, Sequence

import numpy as np

from .level3_learned import BASELINE, EXACT, REFERENCE
from .stats import percentile_interval, seed_draws, summarize_two_level, two_level

METRICS = ("AP", "AP50", "AP75", "mIoU")
CONST = ("constAP", "constAP50", "constAP75")  # the same AP with every detection scored equal
# differences between two ops other than the gap to RoIPool, each answering one question of the paper's Table 2c
CONTRASTS = (
    (REFERENCE, "RoIWarp"),  # what is left once the box is not rounded: the bins' own quantization and max
    (REFERENCE, "RoIAlign aligned=False"),  # the half-cell shift
    (REFERENCE, "RoIAlign max"),  # avg against max aggregation
    (REFERENCE, EXACT),  # 2x2 sampling against the exact integral of each bin
)
MIN_BIN_OBJECTS = 20  # a size range with fewer test objects is shown but left out of the stride x cells estimates


class Runs:
    """The per-seed bootstrap values of one level-3 result: ``res["bootstrap"][(stride, op, seed)][metric]``."""

    def __init__(self, res: dict):
        self.boot = res["bootstrap"]

    def seeds(self, stride: int, *ops: str) -> List[int]:
        """The seeds every op in ``ops`` was trained with at ``stride`` (pairing by seed needs common ones)."""
        sets = [{s for (st, o, s) in self.boot if st == stride and o == op} for op in ops]
        return sorted(set.intersection(*sets)) if sets else []

    def values(self, stride: int, op: str, metric: str, seeds: Sequence[int]) -> np.ndarray:
        """[n_seeds, 1 + B]"""
        return np.stack([self.boot[(stride, op, s)][metric] for s in seeds])


def entry(per_seed: np.ndarray) -> dict:
    return summarize_two_level(two_level(per_seed), len(per_seed))


def _gap(runs: Runs, stride: int, a: str, b: str, metric: str, seeds) -> np.ndarray:
    return runs.values(stride, a, metric, seeds) - runs.values(stride, b, metric, seeds)


def summarize(res: dict) -> dict:
    runs, strides = Runs(res), sorted(res["strides"])
    rows = []
    for stride in strides:
        for op in res["ops_at"][str(stride)]:
            seeds = runs.seeds(stride, op)
            row = dict(stride=stride, op=op, n_seeds=len(seeds))
            for m in METRICS + CONST:
                row[m] = entry(runs.values(stride, op, m, seeds))
            row["ranking"] = entry(runs.values(stride, op, "AP", seeds) - runs.values(stride, op, "constAP", seeds))
            common = runs.seeds(stride, op, BASELINE)
            if op != BASELINE and common:
                for m in METRICS:
                    row["gap_" + m] = entry(_gap(runs, stride, op, BASELINE, m, common))
            rows.append(row)
    out = dict(rows=rows, contrasts=[], claims={})
    for stride in strides:
        for a, b in CONTRASTS:
            common = runs.seeds(stride, a, b)
            if common:
                c = dict(stride=stride, op=a, minus=b, n_seeds=len(common))
                c.update({m: entry(_gap(runs, stride, a, b, m, common)) for m in METRICS})
                out["contrasts"].append(c)
        _claims(runs, stride, out["claims"])
    if (
        len(strides) > 1
        and runs.seeds(strides[0], BASELINE, REFERENCE)
        and runs.seeds(strides[-1], BASELINE, REFERENCE)
    ):
        lo, hi = strides[0], strides[-1]
        common = sorted(set(runs.seeds(lo, BASELINE, REFERENCE)) & set(runs.seeds(hi, BASELINE, REFERENCE)))
        out["trend"] = {
            m: entry(_gap(runs, hi, REFERENCE, BASELINE, m, common) - _gap(runs, lo, REFERENCE, BASELINE, m, common))
            for m in METRICS
        }
        both = sorted(set(runs.seeds(lo, REFERENCE)) & set(runs.seeds(hi, REFERENCE)))
        out["regime"] = entry(runs.values(hi, REFERENCE, "AP", both) - runs.values(lo, REFERENCE, "AP", both))
        out["size_map"] = size_map(res, runs, common)
    out["curves"] = curves(res)
    return out


def _claims(runs: Runs, stride: int, claims: dict) -> None:
    """The statistics behind the paper's level-3 findings at one stride, each a quantity claimed positive."""
    common = runs.seeds(stride, BASELINE, REFERENCE)
    if not common:
        return
    claims[f"beats_{stride}"] = entry(_gap(runs, stride, REFERENCE, BASELINE, "AP", common))
    claims[f"ap75_{stride}"] = entry(
        _gap(runs, stride, REFERENCE, BASELINE, "AP75", common)
        - _gap(runs, stride, REFERENCE, BASELINE, "AP50", common)
    )
    exact = runs.seeds(stride, REFERENCE, EXACT)
    if exact:
        claims[f"exact_{stride}"] = entry(_gap(runs, stride, EXACT, REFERENCE, "AP", exact))
    three = runs.seeds(stride, BASELINE, REFERENCE, "RoIWarp")
    if three:
        # RoIWarp nearer RoIPool than RoIAlign: (align - warp) - (warp - pool) > 0
        align, warp, pool = (runs.values(stride, op, "AP", three) for op in (REFERENCE, "RoIWarp", BASELINE))
        claims[f"warp_{stride}"] = entry(align + pool - 2 * warp)
        # the share of RoIPool's loss that rounding the box explains: a ratio of two-level resampled means
        num, den = two_level(align - warp), two_level(align - pool)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = {k: 100 * num[k] / den[k] for k in num}
        claims[f"share_{stride}"] = summarize_two_level(share, len(three))


def size_map(res: dict, runs: Runs, seeds: Sequence[int]) -> dict:
    """Per size range (octaves of object size in px): the gap (REFERENCE - BASELINE) at each stride, the
    stride trend at equal pixels and, where the ranges are octaves, the stride effect at equal size in cells
    (the stride-32 range one octave above the stride-16 one) with its slope over log2 cells (the stride x
    cells interaction); the pixel crossover of the trend with its own interval."""
    strides = sorted(res["strides"])
    lo, hi = strides[0], strides[-1]
    d = res["data"]
    n_bins = res["n_bins"]
    bins, two = [], {}
    for b in range(n_bins):
        e = dict(bin=b, lo=d["size_edges"][b], hi=d["size_edges"][b + 1], n=d["objects_per_bin"][b])
        e["median_px"] = d["bin_median_px"][b]
        for m in ("mIoU", "AP"):
            for s in strides:
                two[(m, s, b)] = two_level(_gap(runs, s, REFERENCE, BASELINE, f"{m}@{b}", seeds))
                e[f"gap_{m}_s{s}"] = summarize_two_level(two[(m, s, b)], len(seeds))
            trend = {k: two[(m, hi, b)][k] - two[(m, lo, b)][k] for k in ("both", "seeds", "images")}
            two[(m, "trend", b)] = trend
            e[f"trend_{m}"] = summarize_two_level(trend, len(seeds))
        for s in strides:  # exact integration minus sampling, per size range (where EXACT ran)
            exact = runs.seeds(s, REFERENCE, EXACT)
            if exact:
                e[f"exact_AP_s{s}"] = entry(_gap(runs, s, EXACT, REFERENCE, f"AP@{b}", exact))
        bins.append(e)
    out = dict(bins=bins, strides=strides, crossover={}, equal_cells={})
    for m in ("mIoU", "AP"):
        out["crossover"][m] = _crossover_entry(bins, [two[(m, "trend", b)] for b in range(n_bins)])
    shift = int(round(math.log2(hi / lo)))
    inner = d["size_edges"][1:-1]
    octaves = all(abs(b / a - 2) < 1e-9 for a, b in zip(inner[:-1], inner[1:]))
    pairs = [
        (b, b + shift)
        for b in range(n_bins - shift)
        if octaves and min(bins[b]["n"], bins[b + shift]["n"]) >= MIN_BIN_OBJECTS
    ]
    if len(pairs) >= 2:
        cells = np.array(
            [math.log2(math.sqrt(bins[a]["median_px"] / lo * bins[c]["median_px"] / hi)) for a, c in pairs]
        )
        for m in ("mIoU", "AP"):
            diffs = [
                {k: two[(m, hi, c)][k] - two[(m, lo, a)][k] for k in ("both", "seeds", "images")} for a, c in pairs
            ]
            mean = {k: np.mean([x[k] for x in diffs], axis=0) for k in diffs[0]}
            w = (cells - cells.mean()) / ((cells - cells.mean()) ** 2).sum()  # least-squares slope weights
            slope = {k: sum(wi * x[k] for wi, x in zip(w, diffs)) for k in diffs[0]}
            out["equal_cells"][m] = dict(
                pairs=[
                    dict(
                        fine=a,
                        coarse=c,
                        cells_fine=bins[a]["median_px"] / lo,
                        cells_coarse=bins[c]["median_px"] / hi,
                        diff=summarize_two_level(x, len(seeds)),
                    )
                    for (a, c), x in zip(pairs, diffs)
                ],
                stride_effect=summarize_two_level(mean, len(seeds)),
                interaction=summarize_two_level(slope, len(seeds)),
            )
        # the regime at equal size in cells: REFERENCE's own AP at the coarse stride minus at the fine one, over
        # the same pairs of size ranges (what is left of the regime difference once the objects are as many
        # cells at both strides)
        own = np.mean(
            [
                runs.values(hi, REFERENCE, f"AP@{c}", seeds) - runs.values(lo, REFERENCE, f"AP@{a}", seeds)
                for a, c in pairs
            ],
            axis=0,
        )
        out["regime_equal_cells"] = entry(own)
    return out


def _crossover_entry(bins: List[dict], trends: List[dict]) -> dict:
    sizes = [e["median_px"] for e in bins]
    point = crossover(sizes, [t["both"][0] for t in trends])
    point = float("nan") if point is None else point  # (NaN, not None: the JSON's null reads back as NaN)
    resampled = np.array(
        [crossover(sizes, [t["both"][i] for t in trends]) or np.nan for i in range(1, len(trends[0]["both"]))]
    )
    lo, hi = percentile_interval(resampled)
    return dict(px=point, lo=lo, hi=hi, found=float(np.mean(~np.isnan(resampled))))


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


def curves(res: dict) -> List[dict]:
    """Per (stride, op): the seed-mean AP at each checkpoint up to the nominal steps with a 95% interval over
    seeds (the checkpoints are scored on the whole test set only); past them, where some seeds trained on (the
    plateau check), the nominal-step mean plus those seeds' mean change since the nominal steps (paired by
    seed), its interval over those seeds, and the change itself (``extra``)."""
    out = []
    for stride in sorted(res["strides"]):
        for op in res["ops_at"][str(stride)]:
            runs = [r for r in res["runs"] if r["stride"] == stride and r["op"] == op]
            if not runs:
                continue
            nominal = runs[0]["steps"]
            steps = [p["step"] for p in runs[0]["curve"] if p["step"] <= nominal]
            ap = np.array([[p["AP"] for p in r["curve"] if p["step"] <= nominal] for r in runs])  # [seeds, steps]
            draws = seed_draws(len(runs), 2000) @ ap / len(runs)
            c = dict(
                stride=stride,
                op=op,
                nominal=nominal,
                steps=steps,
                AP=ap.mean(0).tolist(),
                lo=[percentile_interval(draws[:, j])[0] for j in range(len(steps))],
                hi=[percentile_interval(draws[:, j])[1] for j in range(len(steps))],
                extra=[],
            )
            longer = [r for r in runs if r["curve"][-1]["step"] > nominal]
            if longer:
                at_nominal = np.array([[p["AP"] for p in r["curve"] if p["step"] == nominal][0] for r in longer])
                base = c["AP"][-1]  # the mean of every seed at the nominal steps
                for step in [p["step"] for p in longer[0]["curve"] if p["step"] > nominal]:
                    change = np.array([[p["AP"] for p in r["curve"] if p["step"] == step][0] for r in longer])
                    change = change - at_nominal
                    lo, hi = percentile_interval(seed_draws(len(longer), 2000) @ change / len(longer))
                    c["steps"].append(step)
                    c["AP"].append(base + float(change.mean()))
                    c["lo"].append(base + lo)
                    c["hi"].append(base + hi)
                    c["extra"].append(dict(step=step, n_seeds=len(longer), mean=float(change.mean()), lo=lo, hi=hi))
            out.append(c)
    return out


def plateau_step(curve: dict, final: dict) -> Optional[int]:
    """The first checkpoint up to the nominal steps whose seed-mean AP is inside the final weights' two-level
    interval ``final``."""
    for step, ap in zip(curve["steps"], curve["AP"]):
        if step <= curve.get("nominal", step) and final["lo"] <= ap <= final["hi"]:
            return step
    return None


def at_plateau(curve: dict, final: dict) -> Optional[bool]:
    """The plateau check: the AP the extended seeds reach at their last checkpoint (nominal-step mean plus their
    paired change) is inside the nominal steps' two-level interval ``final``, and the change's own interval
    reaches 0 or below (a curve that still rises by a detectable amount is near its plateau, not on it). None
    without extended seeds."""
    if not curve.get("extra"):
        return None
    e = curve["extra"][-1]
    return bool(final["lo"] <= final["mean"] + e["mean"] <= final["hi"] and e["lo"] <= 0)
