"""Level 3 on fixed features: a Mask R-CNN mask head (``roiops.models.MaskHead``) trained with each pooling op
on the same fixed (non-learned) features, data and proposals (ground-truth boxes with jitter), scored with COCO
mask AP (pycocotools) over several seeds, on a synthetic shapes set and on the real image shipped by stardist.
"""
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

import roiops

from .coco import _rle, coco_gt, coco_mask_ap
from .data import L3Data, jitter_boxes
from .progress import tqdm
from .stats import mean_ci


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
