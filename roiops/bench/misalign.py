"""`roiops-bench misalign`: what RoIPool's quantization costs, measured at three levels.

Level 1, geometric: the region RoIPool actually pools (read from ``roiops.roi_pool`` run on an index map,
so the operator itself is the one source of truth) against the true box and its true k x k bins, in input
pixels, for strides 4/8/16/32 and box sizes 16..512; RoIAlign (aligned and not) beside it, from its
definition. Includes the article's worked example (800x800 image, 665x665 box, stride 32).

Level 2, feature: feature maps whose cells are exact averages of a known function f over the cell
(f = x, so errors read in pixels, and a smooth periodic f), so the true mean (and max) of f over every true
bin is known in closed form; error of RoIPool and RoIAlign (avg/max, aligned on/off, sampling ratio
1/2/4/adaptive) by stride and box size.

Level 3, task: a Mask R-CNN mask head (``roiops.models.MaskHead``) trained with each pooling op on the same
fixed (non-learned) features, data and proposals (ground-truth boxes with jitter), scored with COCO mask AP
(pycocotools) over several seeds, on a synthetic shapes set and on the real image shipped by stardist.

Coordinate convention everywhere: image pixel j covers [j, j + 1); feature cell c at stride s covers the
pixels [c s, (c + 1) s) and its value is the average over them (cell centre at (c + 0.5) s). This is the
convention under which RoIAlign with aligned=True is exact.
"""
import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import roiops

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(it=None, **_kw):
        return it

STRIDES = (4, 8, 16, 32)
BOX_SIZES = (16, 32, 64, 128, 256, 512)
ARTICLE = dict(image=800, box=665, stride=32, bins=7)

# two-sided 95% Student t quantiles, df = 1..30
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


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


def c_round(x: float) -> int:
    """C's round(): half away from zero (Python's round() rounds half to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


# ============================================================================ level 1: geometry
def random_boxes(n: int, size: float, gen: torch.Generator, lo: float = 64.0, span: float = 64.0,
                 spread: float = 0.25) -> torch.Tensor:
    """n boxes [n, 4] (x1, y1, x2, y2), float64, of width and height size * 2**U(-spread, spread),
    with top-left corners uniform in [lo, lo + span) (which covers every sub-stride phase for strides <= span)."""
    xy = lo + span * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    wh = size * torch.pow(2.0, spread * (2 * torch.rand(n, 2, generator=gen, dtype=torch.float64) - 1))
    return torch.cat([xy, xy + wh], dim=1)


def roipool_bins(boxes: torch.Tensor, stride: int, bins: int, map_size: Tuple[int, int]):
    """The cells each RoIPool bin covers, read from ``roiops.roi_pool`` itself: it max-pools an index map
    with channels (w, -w, h, -h, 1), so the outputs are (last column, -first column, last row, -first row,
    non-empty) of every bin. Returns half-open cell ranges x0, x1 [K, bins] (columns, per output column),
    y0, y1 [K, bins] (rows, per output row) and a non-empty flag [K, bins, bins]."""
    h, w = map_size
    ww = torch.arange(w, dtype=torch.float64).expand(h, w)
    hh = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    index = torch.stack([ww, -ww, hh, -hh, torch.ones(h, w, dtype=torch.float64)])[None]
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=torch.float64), boxes.to(torch.float64)], dim=1)
    out = roiops.roi_pool(index, rois, bins, spatial_scale=1.0 / stride)
    nonempty = out[:, 4] > 0.5
    # a bin's column range does not depend on its row: read it from the first row (and rows from column 0)
    x0, x1 = -out[:, 1, 0, :], out[:, 0, 0, :] + 1
    y0, y1 = -out[:, 3, :, 0], out[:, 2, :, 0] + 1
    return x0, x1, y0, y1, nonempty


def roialign_bins(boxes: torch.Tensor, stride: int, bins: int, aligned: bool):
    """RoIAlign's bins in image pixels from its definition (DESIGN.md section 2): continuous cell coordinate
    u maps to image position (u + 0.5) * stride. Returns x0, x1, y0, y1 [K, bins] (floats)."""
    off = 0.5 if aligned else 0.0
    out = []
    for a, b in ((0, 2), (1, 3)):
        start = boxes[:, a] / stride - off
        length = boxes[:, b] / stride - off - start
        if not aligned:
            length = length.clamp(min=1.0)
        bw = length / bins
        k = torch.arange(bins, dtype=torch.float64)
        lo = start[:, None] + k[None] * bw[:, None]
        out += [(lo + 0.5) * stride, (lo + bw[:, None] + 0.5) * stride]
    return out


def true_bins(boxes: torch.Tensor, bins: int):
    k = torch.arange(bins, dtype=torch.float64)
    out = []
    for a, b in ((0, 2), (1, 3)):
        bw = (boxes[:, b] - boxes[:, a]) / bins
        lo = boxes[:, a, None] + k[None] * bw[:, None]
        out += [lo, lo + bw[:, None]]
    return out


def _overlap(a0, a1, b0, b1):
    return (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0)


def geometry_metrics(boxes, px0, px1, py0, py1, nonempty=None, bins=7) -> Dict[str, float]:
    """Pooled bins (image pixels, [K, bins] per axis) against the true bins of ``boxes``.

    centre_err: mean |pooled bin centre - true bin centre| per axis (px); centre_err_max: its worst bin;
    centre_spread: standard deviation over boxes of the signed centre error, averaged over bins and axes (px);
    edge_err: mean |edge of the pooled region (union of bins) - box edge| over the 4 edges (px);
    region_iou: IoU of the pooled region and the box; bin_iou: mean IoU of each pooled bin with its true bin
    (an empty bin counts 0)."""
    tx0, tx1, ty0, ty1 = true_bins(boxes, bins)
    signed = torch.cat([(px0 + px1) / 2 - (tx0 + tx1) / 2, (py0 + py1) / 2 - (ty0 + ty1) / 2], dim=1)  # [K, 2 bins]
    centre = signed.abs()
    # the part of the error that changes from box to box (a constant offset could be learned away)
    spread = signed.std(dim=0).mean() if len(signed) > 1 else torch.zeros(())
    rx0, rx1 = px0.min(dim=1).values, px1.max(dim=1).values
    ry0, ry1 = py0.min(dim=1).values, py1.max(dim=1).values
    edges = torch.stack([rx0 - boxes[:, 0], rx1 - boxes[:, 2], ry0 - boxes[:, 1], ry1 - boxes[:, 3]], 1).abs()
    inter = _overlap(rx0, rx1, boxes[:, 0], boxes[:, 2]) * _overlap(ry0, ry1, boxes[:, 1], boxes[:, 3])
    area_r = (rx1 - rx0) * (ry1 - ry0)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    region_iou = inter / (area_r + area_b - inter)
    ix = _overlap(px0, px1, tx0, tx1)[:, None, :]  # [K, 1, bins] (columns)
    iy = _overlap(py0, py1, ty0, ty1)[:, :, None]  # [K, bins, 1] (rows)
    bi = ix * iy
    ua = ((px1 - px0)[:, None, :] * (py1 - py0)[:, :, None]) + ((tx1 - tx0)[:, None, :] * (ty1 - ty0)[:, :, None])
    bin_iou = bi / (ua - bi)
    if nonempty is not None:
        bin_iou = torch.where(nonempty, bin_iou, torch.zeros_like(bin_iou))
    return dict(
        centre_err=float(centre.mean()),
        centre_err_max=float(centre.max()),
        centre_spread=float(spread),
        edge_err=float(edges.mean()),
        region_iou=float(region_iou.mean()),
        bin_iou=float(bin_iou.mean()),
    )


def article_example() -> Dict[str, object]:
    """The article's worked example under its floor/floor description and under the real RoIPool rule."""
    img, box, s, k = ARTICLE["image"], ARTICLE["box"], ARTICLE["stride"], ARTICLE["bins"]
    cells = box / s
    fl_cells = math.floor(cells)
    fl_bin = math.floor(fl_cells / k)
    # floor/floor: bins of fl_bin cells from cell 0
    floor_bins = [(i * fl_bin, (i + 1) * fl_bin) for i in range(k)]
    # the real rule, from the operator
    boxes = torch.tensor([[0.0, 0.0, float(box), float(box)]], dtype=torch.float64)
    x0, x1, _, _, _ = roipool_bins(boxes, s, k, (img // s, img // s))
    real_bins = [(int(a), int(b)) for a, b in zip(x0[0].tolist(), x1[0].tolist())]
    true = [(i * box / k, (i + 1) * box / k) for i in range(k)]

    def describe(bins_cells):
        px = [(a * s, b * s) for a, b in bins_cells]
        centre = [abs((a + b) / 2 - (ta + tb) / 2) for (a, b), (ta, tb) in zip(px, true)]
        return dict(bins_cells=bins_cells, bins_px=px, centre_err_px=centre,
                    region_px=(px[0][0], px[-1][1]), right_edge_err_px=px[-1][1] - box)

    al = roialign_bins(boxes, s, k, aligned=True)
    return dict(
        image=img, box=box, stride=s, bins=k, map_cells=img / s, box_cells=cells,
        floor=dict(box_cells=fl_cells, box_err_cells=cells - fl_cells, box_err_px=(cells - fl_cells) * s,
                   bin_cells=fl_cells / k, bin_cells_q=fl_bin, bin_err_cells=fl_cells / k - fl_bin,
                   bin_err_px=(fl_cells / k - fl_bin) * s, **describe(floor_bins)),
        real=dict(x1_cells=c_round(0 / s), x2_cells=c_round(cells), roi_cells=c_round(cells) + 1,
                  bin_cells=(c_round(cells) + 1) / k, **describe(real_bins)),
        roialign=dict(bin_cells=cells / k, bins_px=list(zip(al[0][0].tolist(), al[1][0].tolist())),
                      centre_err_px=[0.0] * k),
        true_bins_px=true,
    )


def run_level1(n_boxes: int, bins: int = 7, seed: int = 0) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    img = 64 + 64 + int(max(BOX_SIZES) * 2 ** 0.25) + 96
    for stride in tqdm(STRIDES, desc="level 1 (geometry)", leave=False):
        mh = mw = img // stride
        for size in BOX_SIZES:
            boxes = random_boxes(n_boxes, size, gen)
            x0, x1, y0, y1, ne = roipool_bins(boxes, stride, bins, (mh, mw))
            rp = geometry_metrics(boxes, x0 * stride, x1 * stride, y0 * stride, y1 * stride, ne, bins)
            rows.append(dict(stride=stride, size=size, op="RoIPool", **rp))
            for aligned in (True, False):
                ax0, ax1, ay0, ay1 = roialign_bins(boxes, stride, bins, aligned)
                m = geometry_metrics(boxes, ax0, ax1, ay0, ay1, None, bins)
                rows.append(dict(stride=stride, size=size, op=f"RoIAlign aligned={aligned}", **m))
    return dict(n_boxes=n_boxes, bins=bins, rows=rows, article=article_example())


# ============================================================================ level 2: features
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
    img = 64 + 64 + int(max(BOX_SIZES) * 2 ** 0.25) + 96
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
                else:
                    out = roiops.roi_align(feat, rois, bins, 1.0 / stride, o["sr"], o["aligned"], o["mode"])
                    target = "mean" if o["mode"] == "avg" else "max"
                signed = out - truth[target]
                err = signed.abs()
                rows.append(dict(stride=stride, size=size, op=name, target=target,
                                 err_px=float(err[:, :2].mean()), err_px_max=float(err[:, :2].max()),
                                 err_px_spread=float(signed[:, :2].std(dim=0).mean()),
                                 err_periodic=float(err[:, 2].mean())))
    return dict(n_boxes=n_boxes, bins=bins, rows=rows)


# ============================================================================ level 3: mask AP
@dataclass
class L3Op:
    name: str
    kind: str  # "pool" or "align"
    mode: str = "avg"
    aligned: bool = True
    sampling_ratio: int = 2

    def __call__(self, feats, rois, size, scale):
        if self.kind == "pool":
            return roiops.roi_pool(feats, rois, size, scale)
        return roiops.roi_align(feats, rois, size, scale, self.sampling_ratio, self.aligned, self.mode)


L3_OPS = [
    L3Op("RoIPool", "pool"),
    L3Op("RoIAlign avg", "align", "avg", True),
    L3Op("RoIAlign avg, aligned=False", "align", "avg", False),
    L3Op("RoIAlign max", "align", "max", True),
    L3Op("RoIAlign max, aligned=False", "align", "max", False),
]
QUICK_L3_OPS = ("RoIPool", "RoIAlign avg")


class FixedFeatures:
    """A fixed (never trained) feature extractor: a bank of hand-designed filters (the image, a Gaussian
    blur, Sobel x/y and gradient magnitude, a Laplacian of Gaussian) and seeded random zero-mean 5x5 filters
    with ReLU, all at full resolution, then average pooling over s x s cells (cell c = the mean over pixels
    [c s, (c + 1) s), the convention RoIAlign aligned=True assumes), plus (``moments``) the first spatial
    moments of three of them inside each cell. Channels are standardised with statistics of the training
    images."""

    def __init__(self, n_random: int = 10, seed: int = 1234, moments: bool = True):
        g = torch.Generator().manual_seed(seed)
        r = torch.arange(7, dtype=torch.float32) - 3
        gauss = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5 ** 2))
        gauss /= gauss.sum()
        sob = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]) / 8
        rr = r[:, None] ** 2 + r[None] ** 2
        log = (rr - 2 * 2.0 ** 2) * torch.exp(-rr / (2 * 2.0 ** 2))
        log -= log.mean()
        log /= log.abs().sum()
        bank = torch.zeros(5, 1, 7, 7)
        bank[0, 0, 3, 3] = 1.0
        bank[1, 0] = gauss
        bank[2, 0, 2:5, 2:5] = sob
        bank[3, 0, 2:5, 2:5] = sob.t()
        bank[4, 0] = log
        rnd = torch.randn(n_random, 1, 5, 5, generator=g)
        rnd -= rnd.mean(dim=(2, 3), keepdim=True)
        rnd /= rnd.abs().sum(dim=(2, 3), keepdim=True)
        self.bank, self.random = bank, F.pad(rnd, (1, 1, 1, 1))
        self.moments = moments
        self.channels = 5 + 1 + n_random + (6 if moments else 0)
        self.stats: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def full_res(self, images: torch.Tensor) -> torch.Tensor:
        x = images[:, None]
        a = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), self.bank)
        mag = (a[:, 2:3] ** 2 + a[:, 3:4] ** 2).sqrt()
        b = torch.relu(F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), self.random))
        return torch.cat([a, mag, b], 1)

    def __call__(self, images: torch.Tensor, stride: int, fit: bool = False) -> torch.Tensor:
        full = self.full_res(images)
        out = F.avg_pool2d(full, stride, stride)
        if self.moments:
            # first spatial moments inside each cell of a few channels (image, blur, gradient magnitude):
            # where in the cell the signal lies, as a CNN's deep features also encode; still fixed, not learned
            h, w = full.shape[-2:]
            ox = ((torch.arange(w) % stride) + 0.5) / stride - 0.5
            oy = ((torch.arange(h) % stride) + 0.5) / stride - 0.5
            base = full[:, [0, 1, 5]]
            mx = F.avg_pool2d(base * ox, stride, stride)
            my = F.avg_pool2d(base * oy[:, None], stride, stride)
            out = torch.cat([out, mx, my], 1)
        if fit or stride not in self.stats:
            self.stats[stride] = (out.mean(dim=(0, 2, 3), keepdim=True), out.std(dim=(0, 2, 3), keepdim=True) + 1e-6)
        m, s = self.stats[stride]
        return ((out - m) / s).contiguous()


def _local_head(in_channels, num_classes, conv_channels, num_convs):
    from roiops.models import MaskHead

    return MaskHead(in_channels, num_classes, conv_channels=conv_channels, num_convs=num_convs)


@dataclass
class L3Data:
    name: str
    images: torch.Tensor  # [N, H, W]
    masks: List[torch.Tensor]  # per image [G, H, W] float32
    labels: List[torch.Tensor]  # per image [G] (1-based)
    boxes: List[torch.Tensor]  # per image [G, 4] float32
    num_classes: int

    @staticmethod
    def from_samples(name, samples, num_classes):
        imgs = torch.stack([torch.from_numpy(s.image) for s in samples])
        masks, labels, boxes = [], [], []
        for s in samples:
            masks.append(torch.stack([torch.from_numpy(i.mask) for i in s.instances]).float()
                         if s.instances else torch.zeros(0, *s.image.shape))
            labels.append(torch.tensor([i.label for i in s.instances], dtype=torch.long))
            boxes.append(torch.tensor([i.box() for i in s.instances], dtype=torch.float32).reshape(-1, 4))
        return L3Data(name, imgs, masks, labels, boxes, num_classes)

    def flat(self):
        """(image index, instance index within the image) of every instance."""
        pairs = [(i, j) for i, b in enumerate(self.boxes) for j in range(len(b))]
        return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def jitter_boxes(boxes: torch.Tensor, sigma: float, gen: torch.Generator, hw: Tuple[int, int]) -> torch.Tensor:
    """Proposals: each side of a ground-truth box moved by sigma * (box side) * N(0, 1), kept in the image
    and at least 2 px wide."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    scale = torch.cat([w, h, w, h], 1)
    out = boxes + sigma * scale * torch.randn(boxes.shape, generator=gen)
    H, W = hw
    x1 = out[:, 0].clamp(0, W - 2)
    y1 = out[:, 1].clamp(0, H - 2)
    x2 = torch.maximum(out[:, 2].clamp(max=W), x1 + 2)
    y2 = torch.maximum(out[:, 3].clamp(max=H), y1 + 2)
    return torch.stack([x1, y1, x2, y2], 1)


def _rle(mask: np.ndarray):
    from pycocotools import mask as mask_util

    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def coco_gt(data: L3Data):
    from pycocotools.coco import COCO

    images, anns = [], []
    H, W = data.images.shape[1:]
    for i, (m, lab) in enumerate(zip(data.masks, data.labels)):
        images.append(dict(id=i + 1, height=H, width=W))
        for j in range(len(lab)):
            mk = m[j].numpy() > 0.5
            x1, y1, x2, y2 = data.boxes[i][j].tolist()
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(lab[j]), segmentation=_rle(mk),
                             area=float(mk.sum()), bbox=[x1, y1, x2 - x1, y2 - y1], iscrowd=0))
    coco = COCO()
    coco.dataset = dict(images=images, annotations=anns,
                        categories=[dict(id=k + 1, name=str(k + 1)) for k in range(data.num_classes)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_mask_ap(gt, dets) -> Dict[str, float]:
    from pycocotools.cocoeval import COCOeval

    if not dets:
        return dict(AP=0.0, AP50=0.0, AP75=0.0, APs=0.0, APm=0.0, APl=0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(keys, ev.stats[:6])}


@dataclass
class L3Config:
    steps: int = 300
    batch: int = 32
    lr: float = 3e-3
    conv_channels: int = 16
    num_convs: int = 2
    jitter: float = 0.08
    pooled: int = 14
    mask: int = 28


def train_and_eval(op: L3Op, stride: int, seed: int, train: L3Data, test: L3Data, ftrain, ftest, gt,
                   cfg: L3Config) -> Dict[str, float]:
    from roiops.models import mask_loss, mask_targets, paste_masks

    torch.manual_seed(seed)
    head = _local_head(ftrain.shape[1], train.num_classes, cfg.conv_channels, cfg.num_convs)
    optim = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(1000 + seed)
    flat = train.flat()
    all_boxes = torch.cat(train.boxes)
    all_labels = torch.cat(train.labels)
    all_masks = torch.cat(train.masks)  # [M, H, W], in the order of train.flat()
    hw = tuple(train.images.shape[1:])
    scale = 1.0 / stride
    for _ in range(cfg.steps):
        pick = torch.randint(len(flat), (cfg.batch,), generator=gen)
        img_idx = flat[pick, 0]
        props = jitter_boxes(all_boxes[pick], cfg.jitter, gen, hw)
        with torch.no_grad():
            pooled = op(ftrain, torch.cat([img_idx[:, None].float(), props], 1), cfg.pooled, scale)
            # every training image has the same size: one call over the stack of all instance masks
            targets = mask_targets(all_masks, props, pick, cfg.mask)
        loss = mask_loss(head(pooled), all_labels[pick] - 1, targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    # evaluation: the same proposals for every op (they depend on the seed only)
    egen = torch.Generator().manual_seed(2000 + seed)
    dets = []
    head.eval()
    with torch.no_grad():
        for i in range(len(test.images)):
            if len(test.boxes[i]) == 0:
                continue
            props = jitter_boxes(test.boxes[i], cfg.jitter, egen, tuple(test.images.shape[1:]))
            rois = torch.cat([torch.full((len(props), 1), float(i)), props], 1)
            logits = head(op(ftest, rois, cfg.pooled, scale))
            lab = test.labels[i]
            probs = torch.sigmoid(logits[torch.arange(len(lab)), lab - 1])
            pasted = paste_masks(probs, props, tuple(test.images.shape[1:]), threshold=0.5)
            fg = probs > 0.5
            score = torch.where(fg.any(dim=(1, 2)), (probs * fg).sum(dim=(1, 2)) / fg.sum(dim=(1, 2)).clamp(min=1),
                                probs.amax(dim=(1, 2)))
            for j in range(len(lab)):
                dets.append(dict(image_id=i + 1, category_id=int(lab[j]), segmentation=_rle(pasted[j].numpy()),
                                 score=float(score[j])))
    return coco_mask_ap(gt, dets)


def load_l3_datasets(quick: bool, real: bool, log) -> List[Tuple[L3Data, L3Data]]:
    from . import data as bdata

    n_train, n_test = (16, 8) if quick else (48, 24)
    syn_train = bdata.make_shapes(n_train, seed=100)
    syn_test = bdata.make_shapes(n_test, seed=200)
    k = len(bdata.SHAPE_CLASSES)
    sets = [(L3Data.from_samples("synthetic", syn_train, k), L3Data.from_samples("synthetic", syn_test, k))]
    if real:
        try:
            tr, te = bdata.load_stardist()
        except (FileNotFoundError, ImportError) as e:
            log(f"[misalign] skipping the real (stardist) data: {e}")
        else:
            # only the flips/rotations that keep the image shape, so the training features stack
            tr = [t for t in tr if t.image.shape == tr[0].image.shape]
            if quick:
                tr = tr[:2]
            sets.append((L3Data.from_samples("stardist", tr, 1), L3Data.from_samples("stardist", te, 1)))
    return sets


def run_level3(strides: Sequence[int], ops: Sequence[L3Op], seeds: int, cfg: L3Config, quick: bool, real: bool,
               log=print) -> Dict[str, object]:
    sets = load_l3_datasets(quick, real, log)
    extractor = FixedFeatures()
    runs = []
    total = len(sets) * len(strides) * len(ops) * seeds
    bar = tqdm(total=total, desc="level 3 (mask AP)", leave=False)
    info = {}
    for train, test in sets:
        gt = coco_gt(test)
        areas = [float(a) for m in test.masks for a in m.flatten(1).sum(1).tolist()]
        info[train.name] = dict(train_images=len(train.images), test_images=len(test.images),
                                train_instances=sum(len(b) for b in train.boxes),
                                test_instances=sum(len(b) for b in test.boxes),
                                test_small=sum(a < 32 ** 2 for a in areas),
                                test_medium=sum(32 ** 2 <= a < 96 ** 2 for a in areas),
                                test_large=sum(a >= 96 ** 2 for a in areas),
                                image_size=list(train.images.shape[1:]))
        for stride in strides:
            ftrain = extractor(train.images, stride, fit=True)
            ftest = extractor(test.images, stride)
            for seed in range(seeds):
                for op in ops:
                    t0 = time.perf_counter()
                    ap = train_and_eval(op, stride, seed, train, test, ftrain, ftest, gt, cfg)
                    runs.append(dict(dataset=train.name, stride=stride, op=op.name, seed=seed,
                                     seconds=time.perf_counter() - t0, **ap))
                    bar.update(1)
    bar.close()
    return dict(config=cfg.__dict__, datasets=info, runs=runs, ops=[o.__dict__ for o in ops],
                strides=list(strides), seeds=seeds, summary=summarize_l3(runs))


METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def summarize_l3(runs) -> List[dict]:
    """Mean and 95% CI per (dataset, stride, op), plus the gap to RoIPool paired by seed."""
    out = []
    keys = sorted({(r["dataset"], r["stride"]) for r in runs}, key=lambda k: (k[0] != "synthetic", k[0], k[1]))
    for ds, stride in keys:
        by_op: Dict[str, Dict[int, dict]] = {}
        for r in runs:
            if r["dataset"] == ds and r["stride"] == stride:
                by_op.setdefault(r["op"], {})[r["seed"]] = r
        base = by_op.get("RoIPool")
        for op, per_seed in by_op.items():
            row = dict(dataset=ds, stride=stride, op=op, n=len(per_seed))
            for m in METRICS:
                row[m], row[m + "_ci"] = mean_ci([100 * r[m] for r in per_seed.values()])
                if base is not None and op != "RoIPool":
                    diffs = [100 * (per_seed[s][m] - base[s][m]) for s in per_seed if s in base]
                    row["gap_" + m], row["gap_" + m + "_ci"] = mean_ci(diffs)
            out.append(row)
    return out


# ============================================================================ output
def _fmt(m, ci=None, nd=1):
    if m != m:
        return "–"
    return f"{m:.{nd}f}" if ci is None or ci != ci else f"{m:.{nd}f} ± {ci:.{nd}f}"


def level1_table(res) -> List[str]:
    lines = ["| stride | box px | RoIPool centre err (px) | RoIPool centre spread (px) | RoIPool worst bin (px) | "
             "RoIPool edge err (px) | RoIPool region IoU | RoIPool bin IoU | RoIAlign aligned=False centre err (px) | "
             "RoIAlign aligned=False centre spread (px) | RoIAlign aligned=False bin IoU | "
             "RoIAlign aligned=True centre err (px) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = res["rows"]
    for stride in STRIDES:
        for size in BOX_SIZES:
            g = {r["op"]: r for r in rows if r["stride"] == stride and r["size"] == size}
            p, u, a = g["RoIPool"], g["RoIAlign aligned=False"], g["RoIAlign aligned=True"]
            lines.append(f"| {stride} | {size} | {p['centre_err']:.2f} | {p['centre_spread']:.2f} | "
                         f"{p['centre_err_max']:.1f} | {p['edge_err']:.2f} | {p['region_iou']:.3f} | "
                         f"{p['bin_iou']:.3f} | {u['centre_err']:.2f} | {u['centre_spread']:.2f} | "
                         f"{u['bin_iou']:.3f} | {a['centre_err']:.2g} |")
    return lines


def article_lines(ex) -> List[str]:
    fl, rl = ex["floor"], ex["real"]
    s = ex["stride"]
    return [
        f"Article example: {ex['image']}x{ex['image']} image, {ex['box']}x{ex['box']} box at (0, 0), stride {s}, "
        f"{ex['bins']}x{ex['bins']} bins.",
        f"- feature map {ex['image']}/{s} = {ex['map_cells']:g} cells; box {ex['box']}/{s} = {ex['box_cells']:.2f} cells.",
        f"- article's description (floor, floor): box -> {fl['box_cells']} cells (lost {fl['box_err_cells']:.2f} cells "
        f"= {fl['box_err_px']:.1f} px); bin {fl['box_cells']}/{ex['bins']} = {fl['bin_cells']:.2f} -> "
        f"{fl['bin_cells_q']} cells (lost {fl['bin_err_cells']:.2f} cells = {fl['bin_err_px']:.1f} px per bin); the 7 bins "
        f"cover pixels [{fl['region_px'][0]}, {fl['region_px'][1]}) of the box's [0, {ex['box']}) "
        f"(right edge {fl['right_edge_err_px']:+d} px); bin-centre errors (px): "
        + ", ".join(f"{e:.1f}" for e in fl["centre_err_px"]) + ".",
        f"- the real RoIPool rule (C round, then floor/ceil bin edges; read from roiops.roi_pool): x2 = "
        f"round({ex['box_cells']:.2f}) = {rl['x2_cells']}, the RoI spans {rl['roi_cells']} cells (inclusive end), "
        f"bin = {rl['roi_cells']}/{ex['bins']} = {rl['bin_cells']:.3f} cells; bins (cells) "
        + ", ".join(f"[{a},{b})" for a, b in rl["bins_cells"])
        + f"; region [{rl['region_px'][0]}, {rl['region_px'][1]}) px (right edge {rl['right_edge_err_px']:+d} px); "
        "bin-centre errors (px): " + ", ".join(f"{e:.1f}" for e in rl["centre_err_px"]) + ".",
        f"- RoIAlign (aligned=True): bin = {ex['box_cells']:.2f}/{ex['bins']} = {ex['roialign']['bin_cells']:.3f} cells "
        f"= {ex['box'] / ex['bins']:.2f} px, no rounding: every bin-centre error is 0.",
    ]


def level2_table(res, ops_shown=None) -> List[str]:
    ops_shown = ops_shown or ["RoIPool (max)", "RoIPool bins, avg", "RoIAlign avg aligned=True sr=2",
                              "RoIAlign avg aligned=False sr=2", "RoIAlign avg aligned=True sr=adaptive",
                              "RoIAlign max aligned=True sr=2"]
    head = "| stride | box px | " + " | ".join(ops_shown) + " |"
    lines = ["Mean |error| for f = x, y, in pixels / for the periodic f (amplitude 1, period = box size):", "",
             head, "|" + "---|" * (2 + len(ops_shown))]
    rows = res["rows"]
    for stride in STRIDES:
        for size in BOX_SIZES:
            g = {r["op"]: r for r in rows if r["stride"] == stride and r["size"] == size}
            cells = [f"{g[o]['err_px']:.2f} / {g[o]['err_periodic']:.3f}" for o in ops_shown]
            lines.append(f"| {stride} | {size} | " + " | ".join(cells) + " |")
    return lines


def level2_sampling_table(res) -> List[str]:
    """Errors averaged over box sizes, by stride, for every RoIAlign variant."""
    rows = res["rows"]
    ops = [o for o, _ in level2_ops()]
    lines = ["| op | target | " + " | ".join(f"s={s} px / periodic" for s in STRIDES) + " |",
             "|---|---|" + "---|" * len(STRIDES)]
    for o in ops:
        cells = []
        tgt = ""
        for s in STRIDES:
            rs = [r for r in rows if r["op"] == o and r["stride"] == s]
            tgt = rs[0]["target"]
            cells.append(f"{statistics.fmean(r['err_px'] for r in rs):.2f} / "
                         f"{statistics.fmean(r['err_periodic'] for r in rs):.3f}")
        lines.append(f"| {o} | {tgt} | " + " | ".join(cells) + " |")
    return lines


def level3_table(res) -> List[str]:
    lines = ["| data | stride | op | AP | AP50 | AP75 | APs | APm | APl | ΔAP vs RoIPool | ΔAP50 | ΔAP75 | ΔAPs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        gaps = [_fmt(r.get("gap_" + m, float("nan")), r.get("gap_" + m + "_ci")) for m in ("AP", "AP50", "AP75", "APs")]
        lines.append(f"| {r['dataset']} | {r['stride']} | {r['op']} | "
                     + " | ".join(_fmt(r[m], r[m + "_ci"]) for m in METRICS) + " | " + " | ".join(gaps) + " |")
    return lines


def gap_table(res) -> List[str]:
    """RoIAlign (avg, aligned) minus RoIPool, beside the paper's numbers."""
    paper = {16: (3.4, 2.4, 5.1), 32: (7.3, 5.3, 10.5)}
    lines = ["| data | stride | ΔAP | ΔAP50 | ΔAP75 | ΔAPs | ΔAPm | ΔAPl | paper ΔAP / ΔAP50 / ΔAP75 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        if r["op"] != "RoIAlign avg":
            continue
        p = paper.get(r["stride"])
        ptxt = f"{p[0]:+.1f} / {p[1]:+.1f} / {p[2]:+.1f}" if p else "–"
        lines.append(f"| {r['dataset']} | {r['stride']} | "
                     + " | ".join(_fmt(r.get("gap_" + m, float("nan")), r.get("gap_" + m + "_ci"))
                                  for m in METRICS) + f" | {ptxt} |")
    return lines


# ---------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_level1(res, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    rows = res["rows"]
    colors = dict(zip(STRIDES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for stride in STRIDES:
        for op, ls in (("RoIPool", "-"), ("RoIAlign aligned=False", "--")):
            rs = [r for r in rows if r["stride"] == stride and r["op"] == op]
            lab = f"{op.replace('RoIAlign aligned=False', 'RoIAlign (not aligned)')}, stride {stride}"
            axes[0].plot([r["size"] for r in rs], [r["centre_err"] for r in rs], ls, marker="o", ms=3,
                         color=colors[stride], label=lab)
            axes[1].plot([r["size"] for r in rs], [r["edge_err"] for r in rs], ls, marker="o", ms=3,
                         color=colors[stride])
            axes[2].plot([r["size"] for r in rs], [max(r["centre_spread"], 1e-2) for r in rs], ls, marker="o", ms=3,
                         color=colors[stride])
            axes[3].plot([r["size"] for r in rs], [r["bin_iou"] for r in rs], ls, marker="o", ms=3,
                         color=colors[stride])
    titles = ("mean |bin-centre error| (px)", "mean |edge error| of pooled region (px)",
              "box-to-box spread of bin-centre error (px)\n(a constant offset can be learned; this cannot)",
              "mean bin IoU with true bin")
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("box size (px)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Level 1: where the pooled bins are (RoIAlign aligned=True: error 0, bin IoU 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_level2(res, path):
    plt = _plt()
    shown = ["RoIPool (max)", "RoIPool bins, avg", "RoIAlign avg aligned=True sr=2", "RoIAlign avg aligned=False sr=2",
             "RoIAlign avg aligned=True sr=1", "RoIAlign max aligned=True sr=2"]
    fig, axes = plt.subplots(2, len(STRIDES), figsize=(4 * len(STRIDES), 7), sharey="row")
    rows = res["rows"]
    for j, stride in enumerate(STRIDES):
        for o in shown:
            rs = [r for r in rows if r["stride"] == stride and r["op"] == o]
            axes[0, j].plot([r["size"] for r in rs], [max(r["err_px"], 1e-3) for r in rs], marker="o", ms=3, label=o)
            axes[1, j].plot([r["size"] for r in rs], [max(r["err_periodic"], 1e-4) for r in rs], marker="o", ms=3)
        axes[0, j].set_title(f"stride {stride}")
        for i in range(2):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_yscale("log")
            axes[i, j].grid(alpha=0.3)
            axes[1, j].set_xlabel("box size (px)")
    axes[0, 0].set_ylabel("f = x, y: mean |error| (px)")
    axes[1, 0].set_ylabel("periodic f: mean |error|")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Level 2: pooled value vs the exact bin mean (avg ops) / bin max (max ops)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_level3(res, path):
    plt = _plt()
    summary = res["summary"]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    ops = list(dict.fromkeys(r["op"] for r in summary))
    strides = sorted({r["stride"] for r in summary})
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 4 * len(datasets)), squeeze=False)
    width = 0.8 / len(ops)
    for i, ds in enumerate(datasets):
        for j, m in enumerate(("AP", "AP50", "AP75")):
            ax = axes[i, j]
            for k, op in enumerate(ops):
                rs = {r["stride"]: r for r in summary if r["dataset"] == ds and r["op"] == op}
                xs = [n + (k - (len(ops) - 1) / 2) * width for n in range(len(strides))]
                ax.bar(xs, [rs[s][m] for s in strides], width, yerr=[rs[s][m + "_ci"] for s in strides],
                       capsize=2, label=op)
            ax.set_xticks(range(len(strides)))
            ax.set_xticklabels([f"stride {s}" for s in strides])
            ax.set_title(f"{ds}: mask {m} (mean ± 95% CI, {res['seeds']} seeds)")
            ax.grid(axis="y", alpha=0.3)
        axes[i, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_article(ex, path):
    plt = _plt()
    from matplotlib.patches import Rectangle

    s, box, k = ex["stride"], ex["box"], ex["bins"]
    boxes = torch.tensor([[0.0, 0.0, float(box), float(box)]], dtype=torch.float64)
    x0, x1, _, _ = roialign_bins(boxes, s, k, aligned=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
    for ax, key, title in ((axes[0], "floor", "article's description: floor(665/32) = 20, floor(20/7) = 2"),
                           (axes[1], "real", "real RoIPool rule: round(20.78) = 21, 22 cells, floor/ceil bin edges")):
        n = ex["image"] // s
        for c in range(n + 1):
            ax.axvline(c * s, color="0.88", lw=0.6, zorder=0)
            ax.axhline(c * s, color="0.88", lw=0.6, zorder=0)
        bins = ex[key]["bins_px"]
        for a, b in bins:  # the pooled bins: column a..b of every row of bins
            for c, d in bins:
                ax.add_patch(Rectangle((a, c), b - a, d - c, fill=True, alpha=0.07, color="tab:blue", lw=0))
                ax.add_patch(Rectangle((a, c), b - a, d - c, fill=False, ec="tab:blue", lw=0.8, alpha=0.7))
        ax.add_patch(Rectangle((0, 0), box, box, fill=False, ec="tab:red", lw=2.2, label=f"box {box}x{box}"))
        # RoIAlign bins and its 2x2 sample points per bin
        edges = [x0[0, 0].item()] + x1[0].tolist()
        for e in edges:
            ax.plot([e, e], [0, box], color="tab:green", lw=0.6, ls=":")
            ax.plot([0, box], [e, e], color="tab:green", lw=0.6, ls=":")
        bw = box / k
        pts = [(i * bw + (q + 0.5) * bw / 2) for i in range(k) for q in range(2)]
        px, py = np.meshgrid(pts, pts)
        ax.scatter(px.ravel(), py.ravel(), s=6, color="tab:green", label="RoIAlign samples (2x2 per bin)", zorder=3)
        ax.plot([], [], color="tab:blue", label="RoIPool bins")
        ax.set_xlim(-10, 740)
        ax.set_ylim(740, -10)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("800x800 image, 665x665 box, stride 32 (grey: 32 px feature cells), 7x7 bins")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- report
def write_report(results, out_dir) -> str:
    L = ["# Misalignment benchmark: what RoIPool's quantization costs", ""]
    meta = results["meta"]
    L += [f"Generated by `roiops-bench misalign{' --quick' if meta['quick'] else ''}` "
          f"(roiops {meta['roiops']}, torch {meta['torch']}, {meta['machine']}, {meta['threads']} threads); "
          f"total {meta['seconds']:.0f} s.", ""]
    L += ["Conventions: image pixel j covers [j, j+1); feature cell c at stride s covers pixels [cs, (c+1)s) and "
          "holds their average. Under this convention RoIAlign with aligned=True is exact, and aligned=False "
          "is shifted by half a cell.", ""]
    if "level1" in results:
        r1 = results["level1"]
        L += ["## Level 1: geometry", "",
              f"{r1['n_boxes']} random boxes per cell (side = size x 2^U(-0.25, 0.25), top-left corner uniform over "
              f"64 px so every sub-stride phase occurs), {r1['bins']}x{r1['bins']} bins. RoIPool's bins are read "
              "from `roiops.roi_pool` run on an index map; errors are in input pixels.", ""]
        L += article_lines(r1["article"]) + ["", "![article example](article_example.png)", ""]
        L += level1_table(r1) + ["", "![level 1](level1_geometry.png)", ""]
    if "level2" in results:
        r2 = results["level2"]
        L += ["## Level 2: feature values", "",
              f"Feature maps whose cells hold the exact average of f over the cell; {r2['n_boxes']} boxes per cell. "
              "Avg ops are compared with the exact mean of f over the true bin, max ops with its exact maximum "
              "(so max aggregation carries an intrinsic bias: e.g. half a bin for f = x, whatever the sampling). "
              "'RoIPool bins, avg' averages the cells of RoIPool's quantized bins: quantization without max.", ""]
        L += level2_table(r2) + ["", "Averaged over box sizes, every variant:", ""] + level2_sampling_table(r2)
        L += ["", "![level 2](level2_features.png)", ""]
    if "level3" in results:
        r3 = results["level3"]
        cfg = r3["config"]
        L += ["## Level 3: mask AP", "",
              f"A Mask R-CNN mask head (`roiops.models.MaskHead`, {cfg['num_convs']} convs x {cfg['conv_channels']} "
              f"channels, {cfg['pooled']}x{cfg['pooled']} pooled -> {cfg['mask']}x{cfg['mask']} masks, loss "
              "`roiops.models.mask_loss`, targets `mask_targets`, pasting `paste_masks`) trained for "
              f"{cfg['steps']} Adam steps of {cfg['batch']} RoIs on fixed (non-learned) features (hand-designed and "
              "seeded random 7x7/5x5 filters, then average pooling to the stride). Proposals are ground-truth boxes "
              f"with each side moved by {cfg['jitter']} x side x N(0, 1), re-drawn every step in training; the test "
              "proposals depend only on the seed, so every op sees the same ones. One detection per test instance "
              "with its class given; score = mean mask probability over the predicted foreground. COCO mask AP via "
              f"pycocotools, {r3['seeds']} seeds (head init, training sampling, test proposals), mean ± 95% CI "
              "(Student t); gaps are paired by seed.", ""]
        for name, d in r3["datasets"].items():
            L.append(f"- {name}: {d['train_images']} training image(s), {d['train_instances']} instances; "
                     f"{d['test_images']} test image(s) ({d['image_size'][0]}x{d['image_size'][1]}), "
                     f"{d['test_instances']} instances ({d['test_small']} small, {d['test_medium']} medium, "
                     f"{d['test_large']} large by COCO area).")
        if results.get("notes"):
            L += [""] + [f"- {n}" for n in results["notes"]]
        L += ["", "### Gap: RoIAlign (avg, aligned) minus RoIPool, mask AP points", ""] + gap_table(r3)
        L += ["", "Paper (Mask R-CNN, COCO minival, ResNet-50): stride 16 (C4) RoIPool 26.9 / 48.8 / 26.4 -> RoIAlign "
              "30.3 / 51.2 / 31.5 (AP / AP50 / AP75); stride 32 (C5) 23.6 / 46.5 / 21.6 -> 30.9 / 51.8 / 32.1.", ""]
        L += ["### All ops", ""] + level3_table(r3) + ["", "![level 3](level3_mask_ap.png)", ""]
    if results.get("findings"):
        L += ["## Findings", ""] + [f"- {f}" for f in results["findings"]] + [""]
    path = os.path.join(out_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path


def findings(results) -> List[str]:
    """Plain statements derived from the numbers (no interpretation beyond what they show)."""
    out = []
    if "level1" in results:
        rows = results["level1"]["rows"]
        for s in (4, 32):
            small = [r for r in rows if r["op"] == "RoIPool" and r["stride"] == s and r["size"] == 16][0]
            big = [r for r in rows if r["op"] == "RoIPool" and r["stride"] == s and r["size"] == 512][0]
            out.append(f"Level 1, stride {s}: RoIPool's mean bin-centre error is {small['centre_err']:.1f} px for 16 px "
                       f"boxes (bin IoU {small['bin_iou']:.2f}) and {big['centre_err']:.1f} px for 512 px boxes "
                       f"(bin IoU {big['bin_iou']:.2f}).")
    if "level3" in results:
        summ = results["level3"]["summary"]
        for ds in dict.fromkeys(r["dataset"] for r in summ):
            g = {r["stride"]: r for r in summ if r["dataset"] == ds and r["op"] == "RoIAlign avg"}
            if len(g) < 2:
                continue
            st = sorted(g)
            grows = all(g[a]["gap_AP"] <= g[b]["gap_AP"] for a, b in zip(st, st[1:]))
            n75 = sum(g[x]["gap_AP75"] > g[x]["gap_AP50"] for x in st)
            sm = [(x, g[x]["gap_APs"], g[x]["gap_APm"]) for x in st if g[x]["gap_APm"] == g[x]["gap_APm"]]
            if sm:
                out.append(f"Level 3, {ds}: gap on small vs medium objects (APs / APm) by stride: "
                           + ", ".join(f"{x}: {a:+.1f} / {b:+.1f}" for x, a, b in sm)
                           + f" - small objects gain more at {sum(a > b for _, a, b in sm)} of {len(sm)} strides "
                           "(the paper expects small objects to gain most).")
            out.append(f"Level 3, {ds}: the AP gap (RoIAlign avg - RoIPool) by stride {st} is "
                       + ", ".join(f"{g[x]['gap_AP']:+.1f}" for x in st)
                       + (" - it grows with stride, as in the paper." if grows else
                          " - it does NOT grow monotonically with stride here (the paper: +3.4 at 16, +7.3 at 32).")
                       + f" The AP75 gap exceeds the AP50 gap at {n75} of {len(st)} strides.")
            if not grows and st[-1] == 32:
                out.append(
                    f"Why the stride-32 gap can be smaller here ({ds}): the fixed features average everything inside "
                    "a 32 px cell into a few channels, so an object of 1-3 cells leaves both ops with almost no shape "
                    "information; the head then predicts a shape prior in box coordinates, which is the same "
                    "whichever op pooled the features (compare the absolute AP75, low for every op at stride 32). "
                    "The paper's C5 features (2048 learned channels, large receptive fields) keep sub-cell detail, "
                    "so there the misalignment, not the feature resolution, is the binding limit. Levels 1-2 show "
                    "the geometric error itself does double with each doubling of the stride.")
        for r in summ:
            if r["op"] == "RoIAlign avg":
                out.append(f"Level 3, {r['dataset']}, stride {r['stride']}: RoIAlign - RoIPool = "
                           f"{_fmt(r['gap_AP'], r['gap_AP_ci'])} AP, {_fmt(r['gap_AP50'], r['gap_AP50_ci'])} AP50, "
                           f"{_fmt(r['gap_AP75'], r['gap_AP75_ci'])} AP75, {_fmt(r['gap_APs'], r['gap_APs_ci'])} APs.")
    return out


def _jsonable(x):
    """NaN (e.g. APl with no large test objects) -> null; tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x


# ============================================================================ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a small run (CI): fewer boxes, 2 ops x 2 strides x 2 seeds at level 3 (~1 min)")
    parser.add_argument("--out", default="misalign_report", help="report folder (REPORT.md + PNGs + results.json)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per level-3 configuration (default 3; quick 2)")
    parser.add_argument("--levels", default="1,2,3", help="comma-separated levels to run (default 1,2,3)")
    parser.add_argument("--no-real", action="store_true", help="skip the real (stardist) image at level 3")
    parser.add_argument("--strides", default=None, help="level-3 strides (default 8,16,32; quick 16,32)")
    parser.add_argument("--steps", type=int, default=None, help="level-3 training steps (default 300; quick 120)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the level-3 head is tiny, and extra threads only add "
                             "synchronisation, badly so on a busy machine)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="re-render the report and plots of an earlier run's results.json into --out (no compute)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _unjson(x):
    if isinstance(x, dict):
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return float("nan") if x is None else x


def render(results, out_dir, plots=True) -> str:
    """The PNG plots and REPORT.md of a results dict."""
    if plots:
        if "level1" in results:
            plot_level1(results["level1"], os.path.join(out_dir, "level1_geometry.png"))
            plot_article(results["level1"]["article"], os.path.join(out_dir, "article_example.png"))
        if "level2" in results:
            plot_level2(results["level2"], os.path.join(out_dir, "level2_features.png"))
        if "level3" in results:
            plot_level3(results["level3"], os.path.join(out_dir, "level3_mask_ap.png"))
    return write_report(results, out_dir)


def _run(args) -> int:
    t_start = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as f:
            results = _unjson(json.load(f))
        os.makedirs(args.out, exist_ok=True)
        results["findings"] = findings(results)
        print(f"report: {render(results, args.out, not args.no_plots)}")
        return 0
    torch.manual_seed(0)
    levels = {int(x) for x in str(args.levels).split(",") if x.strip()}
    quick = bool(args.quick)
    os.makedirs(args.out, exist_ok=True)
    results: Dict[str, object] = {}
    notes: List[str] = []

    def log(msg):
        print(msg, flush=True)
        if msg.startswith("[misalign]"):
            notes.append(msg[len("[misalign] "):])

    if 1 in levels:
        t0 = time.perf_counter()
        results["level1"] = run_level1(n_boxes=100 if quick else 1000)
        print("\n== Level 1: geometry (input pixels) ==")
        print("\n".join(article_lines(results["level1"]["article"])))
        print("\n".join(level1_table(results["level1"])))
        print(f"(level 1: {time.perf_counter() - t0:.1f} s)")
    if 2 in levels:
        t0 = time.perf_counter()
        results["level2"] = run_level2(n_boxes=40 if quick else 300)
        print("\n== Level 2: feature error ==")
        print("\n".join(level2_table(results["level2"])))
        print("\n".join(level2_sampling_table(results["level2"])))
        print(f"(level 2: {time.perf_counter() - t0:.1f} s)")
    if 3 in levels:
        t0 = time.perf_counter()
        strides = ([int(s) for s in args.strides.split(",")] if args.strides else ([16, 32] if quick else [8, 16, 32]))
        ops = [o for o in L3_OPS if o.name in QUICK_L3_OPS] if quick else list(L3_OPS)
        seeds = args.seeds if args.seeds else (2 if quick else 3)
        cfg = L3Config(steps=args.steps if args.steps else (120 if quick else 300))
        results["level3"] = run_level3(strides, ops, seeds, cfg, quick, not args.no_real, log)
        print("\n== Level 3: mask AP (x100, mean ± 95% CI over seeds) ==")
        print("\n".join(gap_table(results["level3"])))
        print("\n".join(level3_table(results["level3"])))
        print(f"(level 3: {time.perf_counter() - t0:.1f} s)")
    results["notes"] = notes
    results["findings"] = findings(results)
    results["meta"] = dict(quick=quick, roiops=roiops.__version__, torch=torch.__version__,
                           machine=f"{platform.machine()} {os.cpu_count()} CPUs", threads=torch.get_num_threads(),
                           seconds=time.perf_counter() - t_start, levels=sorted(levels))
    if not args.no_plots:
        render(results, args.out, True)  # plots (the report is rewritten below with the final time)
    results["meta"]["seconds"] = time.perf_counter() - t_start
    report = write_report(results, args.out)
    blob = json.dumps(_jsonable(results), indent=1, allow_nan=False)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        f.write(blob)
    if args.json:
        with open(args.json, "w") as f:
            f.write(blob)
    print(f"\nreport: {report}  ({results['meta']['seconds']:.0f} s)")
    return 0
