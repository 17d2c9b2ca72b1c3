"""Level 1, geometric: where RoIPool's and RoIAlign's bins really are, in input pixels.

The region RoIPool pools is read from ``roiops.roi_pool`` run on an index map (the operator itself is the one
source of truth) and compared with the true box and its true k x k bins, for strides 4/8/16/32 and box sizes
16..512; RoIAlign (aligned and not) beside it, from its definition. Includes the article's worked example
(800x800 image, 665x665 box, stride 32).
"""

import math
from typing import Dict, Tuple

import torch

import roiops

from .paper import ARTICLE
from .progress import tqdm

STRIDES = (4, 8, 16, 32)
BOX_SIZES = (16, 32, 64, 128, 256, 512)


def c_round(x: float) -> int:
    """C's round(): half away from zero (Python's round() rounds half to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def random_boxes(
    n: int, size: float, gen: torch.Generator, lo: float = 64.0, span: float = 64.0, spread: float = 0.25
) -> torch.Tensor:
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
    """RoIAlign's bins in image pixels from its definition (docs/semantics.md): continuous cell coordinate
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
        return dict(
            bins_cells=bins_cells,
            bins_px=px,
            centre_err_px=centre,
            region_px=(px[0][0], px[-1][1]),
            right_edge_err_px=px[-1][1] - box,
        )

    al = roialign_bins(boxes, s, k, aligned=True)
    return dict(
        image=img,
        box=box,
        stride=s,
        bins=k,
        map_cells=img / s,
        box_cells=cells,
        floor=dict(
            box_cells=fl_cells,
            box_err_cells=cells - fl_cells,
            box_err_px=(cells - fl_cells) * s,
            bin_cells=fl_cells / k,
            bin_cells_q=fl_bin,
            bin_err_cells=fl_cells / k - fl_bin,
            bin_err_px=(fl_cells / k - fl_bin) * s,
            **describe(floor_bins),
        ),
        real=dict(
            x1_cells=c_round(0 / s),
            x2_cells=c_round(cells),
            roi_cells=c_round(cells) + 1,
            bin_cells=(c_round(cells) + 1) / k,
            **describe(real_bins),
        ),
        roialign=dict(
            bin_cells=cells / k, bins_px=list(zip(al[0][0].tolist(), al[1][0].tolist())), centre_err_px=[0.0] * k
        ),
        true_bins_px=true,
    )


def run_level1(n_boxes: int, bins: int = 7, seed: int = 0) -> Dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    img = 64 + 64 + int(max(BOX_SIZES) * 2**0.25) + 96
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
