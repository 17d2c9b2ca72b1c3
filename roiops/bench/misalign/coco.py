"""COCO mask AP of the level-3 detections, by pycocotools."""
import contextlib
import io
from typing import Dict

import numpy as np

from .data import L3Data


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
