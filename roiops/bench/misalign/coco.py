"""COCO mask AP of the level-3 detections: pycocotools matches detections to objects; AP is accumulated here from
that matching so that it can be recomputed for bootstrap resamples of the test images."""

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import L3Data


def _rle(mask: np.ndarray):
    from pycocotools import mask as mask_util

    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def coco_gt(data: L3Data, area: str = "mask"):
    """The test set as a pycocotools ground truth. ``area`` = "mask" gives COCO's object area (mask pixels),
    "box" the box area, which then decides the size ranges of ``match_detections``."""
    from pycocotools.coco import COCO

    images, anns = [], []
    H, W = data.images.shape[1:]
    for i, (m, lab) in enumerate(zip(data.masks, data.labels)):
        images.append(dict(id=i + 1, height=H, width=W))
        for j in range(len(lab)):
            mk = m[j].numpy() > 0.5
            x1, y1, x2, y2 = data.boxes[i][j].tolist()
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=i + 1,
                    category_id=int(lab[j]),
                    segmentation=_rle(mk),
                    area=float(mk.sum()) if area == "mask" else (x2 - x1) * (y2 - y1),
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    iscrowd=0,
                )
            )
    coco = COCO()
    coco.dataset = dict(
        images=images, annotations=anns, categories=[dict(id=k + 1, name=str(k + 1)) for k in range(data.num_classes)]
    )
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
class MatchTable:
    """pycocotools' per-image matching of detections to ground truth, flattened so that AP can be recomputed
    for any weighting of the test images (a bootstrap resample is a vector of image counts).

    ``cells[k][a]`` holds, for category k and size range a, the detections of every image sorted by score as
    COCOeval.accumulate sorts them: ``image`` [D] (test image index), ``tp`` / ``fp`` [T, D] (matched / unmatched
    and not ignored, at each IoU threshold), and ``gt`` [I] (non-ignored ground truths per image)."""

    cells: List[List[Dict[str, np.ndarray]]]
    recall_thresholds: np.ndarray  # [R]
    iou_thresholds: np.ndarray  # [T]
    n_images: int


def match_detections(gt, dets, size_edges: Sequence[float], det_areas: Optional[Sequence[float]] = None) -> MatchTable:
    """Run pycocotools' matching (segm IoU, at most 100 detections per image) for all objects and for each
    size range [size_edges[i], size_edges[i + 1]) of sqrt(area) in pixels, area as the ground truth defines it.

    ``det_areas`` (one per detection) replaces the area pycocotools gives each detection (its mask's): an
    unmatched detection then counts as a false positive in the size range of the object it was made for."""
    from pycocotools.cocoeval import COCOeval

    ranges = [[0.0, 1e10]] + [[lo**2, hi**2] for lo, hi in zip(size_edges[:-1], size_edges[1:])]
    img_ids = sorted(gt.getImgIds())
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets) if dets else _empty_results(gt)
        if det_areas is not None:
            for ann, a in zip(dt.dataset["annotations"], det_areas):  # the same dicts as dt.anns, in order
                ann["area"] = float(a)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.areaRng = ranges
        ev.params.areaRngLbl = [str(i) for i in range(len(ranges))]
        ev.params.maxDets = [100]
        ev.params.imgIds = img_ids
        ev.evaluate()
    n_t, n_a, n_i = len(ev.params.iouThrs), len(ranges), len(img_ids)
    cells = []
    for k in range(len(ev.params.catIds)):
        row = []
        for a in range(n_a):
            evals = ev.evalImgs[(k * n_a + a) * n_i : (k * n_a + a + 1) * n_i]
            image, score, matched, ignored = [], [], [], []
            gt_count = np.zeros(n_i)
            for i, e in enumerate(evals):
                if e is None:
                    continue
                gt_count[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                image.append(np.full(len(e["dtScores"]), i))
                score.append(np.asarray(e["dtScores"], dtype=float))
                matched.append(np.asarray(e["dtMatches"]).reshape(n_t, -1) > 0)
                ignored.append(np.asarray(e["dtIgnore"]).reshape(n_t, -1).astype(bool))
            if image:
                image, score = np.concatenate(image), np.concatenate(score)
                matched, ignored = np.concatenate(matched, 1), np.concatenate(ignored, 1)
            else:
                image, score = np.zeros(0, int), np.zeros(0)
                matched = ignored = np.zeros((n_t, 0), bool)
            order = np.argsort(-score, kind="mergesort")  # COCOeval.accumulate's order, ties included
            row.append(
                dict(
                    image=image[order],
                    tp=(matched & ~ignored)[:, order],
                    fp=(~matched & ~ignored)[:, order],
                    gt=gt_count,
                )
            )
        cells.append(row)
    return MatchTable(cells, np.asarray(ev.params.recThrs), np.asarray(ev.params.iouThrs), n_i)


def _empty_results(gt):
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = dict(images=gt.dataset["images"], annotations=[], categories=gt.dataset["categories"])
    empty.createIndex()
    return empty


def weighted_precision(cell: Dict[str, np.ndarray], weights: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """Interpolated precision [B, T, R] of one (category, size range) cell with the test images weighted by each
    row of ``weights`` [B, I] (all ones reproduces COCOeval.accumulate); NaN where a row has no ground truth.

    A weight of 2 counts an image's detections twice in one step of the cumulative sums rather than as two
    neighbouring entries: the precision envelope, and so AP, is the same either way."""
    w = weights[:, cell["image"]]  # [B, D]
    tp = np.cumsum(w[:, None, :] * cell["tp"][None], axis=-1)  # [B, T, D]
    fp = np.cumsum(w[:, None, :] * cell["fp"][None], axis=-1)
    n_gt = weights @ cell["gt"]  # [B]
    n_b, n_t, n_d = tp.shape
    out = np.zeros((n_b, n_t, len(recall_thresholds)))
    if n_d:
        recall = tp / np.maximum(n_gt, 1e-12)[:, None, None]
        precision = tp / (tp + fp + np.spacing(1))
        # the envelope: precision at a recall is the best precision at that recall or any higher one
        envelope = np.flip(np.maximum.accumulate(np.flip(precision, -1), -1), -1)
        # first detection whose recall reaches each threshold: np.searchsorted(row, thresholds, "left") for
        # every row at once, each row lifted by 2 x its index (recall is in [0, 1]) so the rows stay apart
        lift = 2.0 * np.arange(n_b * n_t).reshape(n_b, n_t, 1)
        first = np.searchsorted(
            (np.minimum(recall, 1.0) + lift).ravel(), (recall_thresholds + lift).ravel(), side="left"
        )
        first = first.reshape(n_b, n_t, -1) - n_d * np.arange(n_b * n_t).reshape(n_b, n_t, 1)  # [B, T, R]
        reached = first < n_d
        picked = np.take_along_axis(envelope, np.minimum(first, n_d - 1), axis=-1)
        out = np.where(reached, picked, 0.0)
    out[n_gt == 0] = np.nan
    return out


def average_precision(table: MatchTable, weights: np.ndarray, size_range: int = 0) -> Dict[str, np.ndarray]:
    """AP, AP50 and AP75 (fractions) per row of ``weights`` [B, I], averaged over categories as COCO does
    (a category without ground truth in a row is left out); size_range 0 is all objects, i > 0 the i-th range."""
    # in chunks of resamples: the [B, T, D] arrays of a few thousand resamples would take gigabytes
    per_cat = np.stack(
        [
            np.concatenate(
                [
                    weighted_precision(row[size_range], weights[i : i + 250], table.recall_thresholds)
                    for i in range(0, len(weights), 250)
                ]
            )
            for row in table.cells
        ]
    )  # [K, B, T, R]
    t50 = int(np.argmin(np.abs(table.iou_thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(table.iou_thresholds - 0.75)))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row (no object of this size) is NaN
        return dict(
            AP=np.nanmean(per_cat, axis=(0, 2, 3)),
            AP50=np.nanmean(per_cat[:, :, t50], axis=(0, 2)),
            AP75=np.nanmean(per_cat[:, :, t75], axis=(0, 2)),
        )


def constant_score_ap(table: MatchTable, weights: np.ndarray) -> Dict[str, np.ndarray]:
    """AP, AP50, AP75 (fractions) of the same matches with every detection given one score: the
    precision-recall curve is then one point (recall R, precision P over all detections), and COCO's
    interpolated precision is P at the recall thresholds up to R, 0 above. Over all objects, averaged over
    categories as ``average_precision`` does; the difference to it is what the ranking by score adds."""
    per_cat = []
    for row in table.cells:
        cell = row[0]
        w = weights[:, cell["image"]]  # [B, D]
        tp = w @ cell["tp"].T.astype(float)  # [B, T]
        fp = w @ cell["fp"].T.astype(float)
        n_gt = weights @ cell["gt"]  # [B]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / n_gt[:, None]
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        reached = (table.recall_thresholds[None, None, :] <= recall[..., None]).mean(-1)  # [B, T]
        ap = precision * reached
        ap[n_gt == 0] = np.nan
        per_cat.append(ap)
    per_cat = np.stack(per_cat)  # [K, B, T]
    t50 = int(np.argmin(np.abs(table.iou_thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(table.iou_thresholds - 0.75)))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dict(
            AP=np.nanmean(per_cat, axis=(0, 2)),
            AP50=np.nanmean(per_cat[:, :, t50], axis=0),
            AP75=np.nanmean(per_cat[:, :, t75], axis=0),
        )
