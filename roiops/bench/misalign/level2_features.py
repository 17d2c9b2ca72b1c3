"""Level 2, feature values: pooled values against closed-form truths.

Feature maps whose cells are exact averages of a known function f over the cell (f = x, so errors read in
pixels, and a smooth periodic f), so the true mean (and max) of f over every true bin is known in closed form;
error of RoIPool, RoIAlign (avg/max, aligned on/off, sampling ratio 1/2/4/adaptive) and PrRoIPool (the exact
integral of the map interpolated between cell centres) by stride and box size. PrRoIPool is exact where f is
linear between cell centres (f = x, y: its cells' averages are the values at their centres) and the bin stays
between the outermost centres; for the periodic f its error is that of bilinear interpolation of cell averages.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

import roiops

from .level1_geometry import BOX_SIZES, STRIDES, random_boxes, roipool_bins, true_bins
from .progress import tqdm


def _sin_mean(a, b, w, ph):
    """Mean of sin(w x + ph) over [a, b] (elementwise tensors)."""
    return (torch.cos(w * a + ph) - torch.cos(w * b + ph)) / (w * (b - a))


def _sin_range(a, b, w, ph):
    """(min, max) of sin(w x + ph) over [a, b]: the end points, or -1 / +1 when a trough / crest is inside."""
    va, vb = torch.sin(w * a + ph), torch.sin(w * b + ph)
    lo, hi = torch.minimum(va, vb), torch.maximum(va, vb)
    ta, tb = w * a + ph, w * b + ph
    # a crest at pi/2 + 2 pi n lies inside iff floor((tb - pi/2) / 2pi) > floor((ta - pi/2) / 2pi) (roughly)
    crest = torch.floor((tb - math.pi / 2) / (2 * math.pi)) > torch.floor((ta - math.pi / 2) / (2 * math.pi))
    trough = torch.floor((tb - 3 * math.pi / 2) / (2 * math.pi)) > torch.floor((ta - 3 * math.pi / 2) / (2 * math.pi))
    return torch.where(trough, torch.full_like(lo, -1.0), lo), torch.where(crest, torch.ones_like(hi), hi)


@dataclass
class Periodic:
    """f(x, y) = sin(w x + px) * sin(w y + py), w = 2 pi / period (pixels)."""

    period: float
    px: float = 0.3
    py: float = 1.1

    @property
    def w(self):
        return 2 * math.pi / self.period

    def mean(self, x0, x1, y0, y1):
        return _sin_mean(x0, x1, self.w, self.px) * _sin_mean(y0, y1, self.w, self.py)

    def max(self, x0, x1, y0, y1):
        a0, a1 = _sin_range(x0, x1, self.w, self.px)
        b0, b1 = _sin_range(y0, y1, self.w, self.py)
        return torch.maximum(torch.maximum(a0 * b0, a0 * b1), torch.maximum(a1 * b0, a1 * b1))


def cell_average_map(stride: int, size_cells: int, periodic: Periodic) -> torch.Tensor:
    """[1, 3, H, W] float64: channels f = x, f = y, the periodic f, each the exact average over the cell."""
    c = torch.arange(size_cells, dtype=torch.float64)
    lo, hi = c * stride, (c + 1) * stride
    xs = ((lo + hi) / 2).expand(size_cells, size_cells)
    ys = xs.t()
    per = _sin_mean(lo, hi, periodic.w, periodic.px)[None, :] * _sin_mean(lo, hi, periodic.w, periodic.py)[:, None]
    return torch.stack([xs, ys, per])[None].contiguous()


def level2_ops() -> List[Tuple[str, dict]]:
    ops = [("RoIPool (max)", dict(kind="pool")), ("RoIPool bins, avg", dict(kind="pool_avg"))]
    for mode in ("avg", "max"):
        for aligned in (True, False):
            for sr in (1, 2, 4, 0):
                name = f"RoIAlign {mode} aligned={aligned} sr={'adaptive' if sr == 0 else sr}"
                ops.append((name, dict(kind="align", mode=mode, aligned=aligned, sr=sr)))
    ops.append(("PrRoIPool (exact integral)", dict(kind="prroi")))
    return ops


def _pool_bins_avg(feat, boxes, stride, bins):
    """The mean of the cells inside each RoIPool bin (RoIPool's quantized bins with avg aggregation);
    the bins are read from roiops.roi_pool (see roipool_bins). Uses a 2-D prefix sum."""
    _, c, h, w = feat.shape
    x0, x1, y0, y1, ne = roipool_bins(boxes, stride, bins, (h, w))
    S = F.pad(feat[0].cumsum(1).cumsum(2), (1, 0, 1, 0))  # [C, H+1, W+1]
    X0, X1 = x0.long()[:, None, :].expand(-1, bins, -1), x1.long()[:, None, :].expand(-1, bins, -1)
    Y0, Y1 = y0.long()[:, :, None].expand(-1, -1, bins), y1.long()[:, :, None].expand(-1, -1, bins)
    X0, X1, Y0, Y1 = (t.clamp(0) for t in (X0, X1, Y0, Y1))
    tot = S[:, Y1, X1] - S[:, Y0, X1] - S[:, Y1, X0] + S[:, Y0, X0]  # [C, K, b, b]
    cnt = ((Y1 - Y0) * (X1 - X0)).clamp(min=1)
    out = (tot / cnt).permute(1, 0, 2, 3)
    return torch.where(ne[:, None], out, torch.zeros_like(out))


def run_level2(n_boxes: int, bins: int = 7, seed: int = 1) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    ops = level2_ops()
    rows = []
    img = 64 + 64 + int(max(BOX_SIZES) * 2**0.25) + 96
    for stride in tqdm(STRIDES, desc="level 2 (features)", leave=False):
        n_cells = img // stride
        for size in BOX_SIZES:
            per = Periodic(period=float(size))
            feat = cell_average_map(stride, n_cells, per)
            boxes = random_boxes(n_boxes, size, gen)
            rois = torch.cat([torch.zeros(n_boxes, 1, dtype=torch.float64), boxes], 1)
            tx0, tx1, ty0, ty1 = true_bins(boxes, bins)
            X0, X1 = tx0[:, None, :].expand(-1, bins, -1), tx1[:, None, :].expand(-1, bins, -1)
            Y0, Y1 = ty0[:, :, None].expand(-1, -1, bins), ty1[:, :, None].expand(-1, -1, bins)
            truth = dict(
                mean=torch.stack([(X0 + X1) / 2, (Y0 + Y1) / 2, per.mean(X0, X1, Y0, Y1)], 1),
                max=torch.stack([X1, Y1, per.max(X0, X1, Y0, Y1)], 1),
            )
            for name, o in ops:
                if o["kind"] == "pool":
                    out, target = roiops.roi_pool(feat, rois, bins, 1.0 / stride), "max"
                elif o["kind"] == "pool_avg":
                    out, target = _pool_bins_avg(feat, boxes, stride, bins), "mean"
                elif o["kind"] == "prroi":
                    out, target = roiops.prroi_pool(feat, rois, bins, 1.0 / stride), "mean"
                else:
                    out = roiops.roi_align(feat, rois, bins, 1.0 / stride, o["sr"], o["aligned"], o["mode"])
                    target = "mean" if o["mode"] == "avg" else "max"
                signed = out - truth[target]
                err = signed.abs()
                rows.append(
                    dict(
                        stride=stride,
                        size=size,
                        op=name,
                        target=target,
                        err_px=float(err[:, :2].mean()),
                        err_px_max=float(err[:, :2].max()),
                        err_px_spread=float(signed[:, :2].std(dim=0).mean()),
                        err_periodic=float(err[:, 2].mean()),
                    )
                )
    return dict(n_boxes=n_boxes, bins=bins, rows=rows)
