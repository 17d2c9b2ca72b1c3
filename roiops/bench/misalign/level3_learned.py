"""Level 3, task: a small Mask R-CNN second stage on a learned backbone, trained end to end once per pooling op.

The backbone is a few conv + BatchNorm + ReLU layers that downsample by 2x2 stride-2 convolutions. Those tile
the image without overlap, so feature cell c at stride s is centred on the pixels [c s, (c + 1) s) (the padded
3x3 convs widen what it sees, symmetrically about that centre): where RoIAlign with aligned=True puts it. On it, the project's own Mask R-CNN stage (``roiops.models.RoIHeads``: ``BoxHead`` on 7x7 and
``MaskHead`` on 14x14 pooled features, their targets and losses) pools with ``roiops.MultiScaleRoIAlign``
set to the op under test. Everything else is identical between ops: data, proposals (ground-truth boxes
jittered, re-drawn every step in training and fixed at test), initialisation and optimisation per seed.

The shapes form one category. Telling an ellipse from a ring or a star polygon is beyond a few hundred steps of
a small network for objects of one or two cells (the box head's class accuracy stayed near chance in trials),
and would make AP measure classification; with one category AP ranks by the box head's object score.

Inference: each test proposal gives one detection (the box head's most likely class, its probability as the
score, its refined box) and the mask head's mask in that box. AP / AP50 / AP75 come from pycocotools' matching
(coco.py), and the mean mask IoU of each object with the detection made from its own proposal.
"""

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from roiops import MultiScaleRoIAlign
from roiops.models import BoxHead, MaskHead, RoIHeads, decode_boxes, paste_masks, round_boxes_to_grid

from . import data as bdata
from .coco import _rle, average_precision, coco_gt, constant_score_ap, match_detections
from .data import L3Data, jitter_boxes


@dataclass(frozen=True)
class PoolOp:
    """One pooling op of the comparison, as a ``MultiScaleRoIAlign`` setting (plus RoIWarp's box rounding).
    ``across_strides``: trained at every stride with ``Config.seeds`` seeds; otherwise at the finest stride only,
    with ``Config.seeds_single`` (the ops that answer one question of Table 2c, not the stride comparison)."""

    name: str
    op: str = "roi_align"  # or "roi_pool", "prroi_pool"
    aligned: bool = True
    mode: str = "avg"
    round_boxes: bool = False  # RoIWarp: round the boxes to the feature grid first
    across_strides: bool = False


# The op table: a new op is one row here, and costs its own runs only (seeds x strides it trains at).
OPS = (
    PoolOp("RoIPool", op="roi_pool", across_strides=True),
    PoolOp("RoIWarp", round_boxes=True, across_strides=True),
    PoolOp("RoIAlign aligned=False", aligned=False),
    PoolOp("RoIAlign max", mode="max"),
    PoolOp("RoIAlign avg", across_strides=True),
    PoolOp("PrRoIPool", op="prroi_pool", across_strides=True),  # the exact bin integral (no sampling)
)
EXACT = "PrRoIPool"  # does exact integration beat REFERENCE's 2x2 sampling?
BASELINE = "RoIPool"
REFERENCE = "RoIAlign avg"  # the op whose gap to the baseline is the headline number


@dataclass
class Config:
    """Level-3 settings. Sizes in pixels; an object's size is the geometric mean of its box's sides."""

    dataset: str = "synthetic"  # or "stardist"
    seeds: int = 2  # seeds per (op, stride) for the ops with across_strides; --seeds overrides
    seeds_single: int = 2  # seeds of the other ops (finest stride only)
    image_size: int = 160
    train_images: int = 256
    test_images: int = 160
    objects_per_image: Tuple[int, int] = (2, 5)
    diameter: Tuple[float, float] = (12.0, 150.0)
    # test objects' diameters stratified log-uniformly (each of n equal slices of log diameter gets its share)
    stratify_test: bool = True
    steps: int = 300  # at the finest stride (16)
    steps_coarse: Optional[int] = None  # at every coarser stride (32); None: the same as ``steps``
    curve_points: int = 4  # learning curve: the runs of k/curve_points of the steps (k = 1..) scored (point values)
    # the plateau check: the first plateau_seeds seeds of REFERENCE train on for plateau_checkpoints more
    # checkpoints (to 1.5x the steps by default); their result is still the run of the nominal steps (a branch of
    # the same trunk, see ``train``), so the check costs only the longer trunk and its cool-down
    plateau_seeds: int = 3
    plateau_checkpoints: int = 2
    warmup: float = 0.1  # fraction of the (nominal) steps with a linear warm-up
    # fraction of each run's steps, at its end, over which the rate decays linearly to ~0; 0: constant to the end
    # (then the EMA weights at step n are the run of n steps, and the learning curve costs no extra steps)
    cooldown: float = 0.0
    images_per_step: int = 4
    rois_per_image: int = 32
    random_boxes_per_image: int = 6
    jitter: float = 0.08
    lr: float = 3e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    # one width per stage; the stride-32 stage is 4x the stride-16 one, so both feature maps hold the same number
    # of values per image pixel (equal capacity per pixel, as the stride comparison needs)
    widths: Tuple[int, ...] = (8, 16, 32, 64, 64, 256)
    head_channels: int = 32
    fc_dim: int = 256
    sampling_ratio: int = 2
    # octaves of object size in px: at stride 16 and 32 the same octaves in cells, one range apart
    size_edges: Tuple[float, ...] = (0.0, 16.0, 32.0, 64.0, 1e4)
    bootstrap: int = 2000
    # stardist (data.stardist_tiles): the image upscaled, training crops and test tiles, in upscaled pixels
    stardist_scale: int = 3
    stardist_crop: int = 192
    stardist_crops: int = 256
    stardist_tile: int = 256

    def steps_at(self, stride: int) -> int:
        return self.steps if stride <= 16 or self.steps_coarse is None else self.steps_coarse

    def trains(self, op: "PoolOp", stride: int) -> bool:
        return stride <= 16 or op.across_strides

    def seeds_for(self, op: "PoolOp") -> int:
        return self.seeds if op.across_strides else min(self.seeds, self.seeds_single)

    def extends(self, op: "PoolOp", seed: int) -> bool:
        """Whether this run trains on past its nominal steps for the plateau check."""
        return op.name == REFERENCE and seed < self.plateau_seeds and self.plateau_checkpoints > 0

    def checkpoints(self, stride: int, extended: bool = False) -> List[int]:
        """The steps at which a run's EMA weights are scored; the last one is where it stops."""
        steps = self.steps_at(stride)
        k_max = self.curve_points + (self.plateau_checkpoints if extended else 0)
        return sorted({max(1, round(k * steps / self.curve_points)) for k in range(1, k_max + 1)})


# ----------------------------------------------------------------------------------------- model
def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    # kernel 3 is padded to keep the grid; kernel 2 with stride 2 maps pixels [2c, 2c + 2) to cell c exactly
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2 if kernel == 3 else 0, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Grey image [B, 1, H, W] -> features [B, C, H / stride, W / stride]; one stage (2x2 stride-2 conv, then a
    3x3 conv) per factor of two, so the stride-32 network is the stride-16 one plus a stage, as C5 is C4's."""

    def __init__(self, stride: int, widths: Sequence[int]):
        super().__init__()
        stages = int(round(math.log2(stride)))
        if 2**stages != stride or stages >= len(widths):
            raise ValueError(f"Backbone: stride must be a power of two below 2^{len(widths)}, got {stride}")
        layers = [_conv_bn(1, widths[0], 3)]
        for i in range(stages):
            layers += [_conv_bn(widths[i], widths[i + 1], 2, 2), _conv_bn(widths[i + 1], widths[i + 1], 3)]
        self.body = nn.Sequential(*layers)
        self.out_channels = widths[stages]

    def forward(self, x):
        return self.body(x)


class GridRoundedPooler(nn.Module):
    """RoIWarp: the wrapped single-level pooler run on boxes rounded to its feature grid."""

    def __init__(self, pooler: MultiScaleRoIAlign, stride: int):
        super().__init__()
        self.pooler, self.stride = pooler, stride

    def forward(self, features, boxes, image_shapes):
        return self.pooler(features, [round_boxes_to_grid(b, 1.0 / self.stride) for b in boxes], image_shapes)


def make_pooler(op: PoolOp, output_size: int, stride: int, sampling_ratio: int) -> nn.Module:
    pooler = MultiScaleRoIAlign(["0"], output_size, sampling_ratio, aligned=op.aligned, pool_mode=op.mode, op=op.op)
    return GridRoundedPooler(pooler, stride) if op.round_boxes else pooler


class MaskRCNNStage(nn.Module):
    """Backbone + ``roiops.models.RoIHeads`` with both poolers set to one op."""

    def __init__(self, op: PoolOp, stride: int, num_classes: int, cfg: Config):
        super().__init__()
        self.backbone = Backbone(stride, cfg.widths)
        c = self.backbone.out_channels
        self.heads = RoIHeads(
            make_pooler(op, 7, stride, cfg.sampling_ratio),
            BoxHead(c, num_classes, 7, cfg.fc_dim),
            make_pooler(op, 14, stride, cfg.sampling_ratio),
            MaskHead(c, num_classes, conv_channels=cfg.head_channels, num_convs=2),
            num_classes=num_classes,
            batch_size_per_image=cfg.rois_per_image,
            positive_fraction=0.5,
            add_gt_as_proposals=False,
        )
        # channels-last features: the convolutions and the pooling ops run on contiguous channel vectors
        # (a step takes about 4/5 of its NCHW time on the CPU); the numbers do not depend on it beyond rounding
        self.to(memory_format=torch.channels_last)

    def features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"0": self.backbone(images[:, None])}

    def forward(self, images, proposals, targets):
        shapes = [tuple(images.shape[-2:])] * len(images)
        return self.heads(self.features(images), proposals, shapes, targets)


# ----------------------------------------------------------------------------------------- data
def make_datasets(cfg: Config) -> Tuple[L3Data, L3Data]:
    """The train and test sets of ``cfg.dataset``, one category "object". Synthetic: different seeds, so no
    test image is seen in training; every shape (ellipse, star polygon, ring) is an object. stardist: see
    ``data.stardist_tiles`` (raises FileNotFoundError without the package)."""
    if cfg.dataset == "stardist":
        train, test = bdata.stardist_tiles(cfg.stardist_scale, cfg.stardist_crop, cfg.stardist_crops, cfg.stardist_tile)
        return L3Data.from_samples("stardist", train, 1), L3Data.from_samples("stardist", test, 1)
    if cfg.dataset != "synthetic":
        raise ValueError(f"level 3: unknown dataset {cfg.dataset!r} (synthetic or stardist)")
    kw = dict(
        size=cfg.image_size,
        min_diameter=cfg.diameter[0],
        max_diameter=cfg.diameter[1],
        instances_per_image=cfg.objects_per_image,
    )
    sets = []
    for n, seed, stratify in ((cfg.train_images, 100, False), (cfg.test_images, 200, cfg.stratify_test)):
        samples = bdata.make_shapes(n, seed=seed, stratify=stratify, **kw)
        for s in samples:  # one category: see the module docstring
            for inst in s.instances:
                inst.label = 1
        sets.append(L3Data.from_samples("synthetic", samples, 1))
    return sets[0], sets[1]


def random_boxes(n: int, hw: Tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Background candidates: n boxes of log-uniform side (8 px to the image) anywhere in the image."""
    h, w = hw
    side = torch.exp(torch.empty(n, 2).uniform_(math.log(8.0), math.log(min(h, w)), generator=gen))
    x1 = torch.rand(n, generator=gen) * (w - side[:, 0])
    y1 = torch.rand(n, generator=gen) * (h - side[:, 1])
    return torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1)


def fixed_test_proposals(test: L3Data, jitter: float) -> List[torch.Tensor]:
    """One jittered box per test object, the same for every op and seed."""
    gen = torch.Generator().manual_seed(4242)
    hw = tuple(test.images.shape[1:])
    return [jitter_boxes(b, jitter, gen, hw) if len(b) else b.new_zeros(0, 4) for b in test.boxes]


# ----------------------------------------------------------------------------------------- training
def lr_factor(step: int, end: int, warm: int, cooldown: float) -> float:
    """The learning rate of step ``step`` (1-based) of a run of ``end`` steps, as a fraction of ``Config.lr``:
    a linear warm-up over ``warm`` steps, constant, then a linear cool-down over the last ``cooldown`` fraction
    of the run, to 1 / (the cool-down's steps) of the peak at the last step. Warm-up, stable, decay: up to the
    start of its cool-down a run is the same as a run of any other length."""
    f = min(1.0, step / warm)
    start = round((1.0 - cooldown) * end)
    if step > start:
        f *= (end - step + 1) / (end - start)
    return f


class _Run:
    """The training state that a cool-down branch copies: model, EMA weights, optimizer and data stream."""

    def __init__(self, model: nn.Module, cfg: Config, seed: int):
        self.model = model
        self.ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        # fused: one kernel over all parameters (the per-parameter loop is a sixth of a stride-32 step on CPU)
        self.optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.gen = torch.Generator().manual_seed(10_000 + seed)
        self.step = 0

    def branch(self) -> "_Run":
        gen, self.gen = self.gen, None  # a Generator does not deep-copy: its state is carried over instead
        twin = copy.deepcopy(self)
        self.gen, twin.gen = gen, torch.Generator()
        twin.gen.set_state(gen.get_state())
        return twin


def _train_to(run: _Run, end: int, lr: Callable[[int], float], data: L3Data, cfg: Config) -> None:
    hw = tuple(data.images.shape[1:])
    with_objects = [i for i, b in enumerate(data.boxes) if len(b)]
    run.model.train()
    while run.step < end:
        run.step += 1
        for group in run.optim.param_groups:
            group["lr"] = cfg.lr * lr(run.step)
        gen = run.gen
        pick = [with_objects[int(i)] for i in torch.randint(len(with_objects), (cfg.images_per_step,), generator=gen)]
        proposals = [
            torch.cat(
                [
                    jitter_boxes(data.boxes[i], cfg.jitter, gen, hw),
                    jitter_boxes(data.boxes[i], cfg.jitter, gen, hw),
                    random_boxes(cfg.random_boxes_per_image, hw, gen),
                ]
            )
            for i in pick
        ]
        targets = [dict(boxes=data.boxes[i], labels=data.labels[i], masks=data.masks[i]) for i in pick]
        losses = run.model(data.images[pick], proposals, targets)
        run.optim.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        run.optim.step()
        run.ema.update_parameters(run.model)


def train(
    op: PoolOp,
    stride: int,
    seed: int,
    data: L3Data,
    cfg: Config,
    at_checkpoint: Optional[Callable] = None,
    extended: bool = False,
) -> nn.Module:
    """AdamW with a warm-up, a constant rate and a linear cool-down to about 0 over the last ``cfg.cooldown`` of
    the run (``lr_factor``); returns the exponential moving average of the weights (BatchNorm statistics averaged
    with them), which is what is evaluated. The cool-down is what lets a run converge by its last step; the
    constant phase before it is what makes the learning curve cheap and exact: the run for checkpoint n (of
    ``cfg.checkpoints(stride, extended)``) branches off the constant-rate trunk where its cool-down starts, so
    ``at_checkpoint(n, ema_model)``, called at every checkpoint but the last, sees the weights of a run of n
    steps (same warm-up, data stream and schedule), and the returned model is the run of the last one."""
    torch.manual_seed(seed)
    trunk = _Run(MaskRCNNStage(op, stride, data.num_classes, cfg), cfg, seed)
    # the warm-up depends on the nominal steps only, so every checkpoint's run shares it
    warm = max(1, round(cfg.warmup * cfg.steps_at(stride)))
    *earlier, last = cfg.checkpoints(stride, extended)
    for n in earlier:
        _train_to(trunk, round((1.0 - cfg.cooldown) * n), lambda i: lr_factor(i, 1 << 62, warm, 0.0), data, cfg)
        if at_checkpoint is None:
            continue
        run = trunk.branch() if cfg.cooldown else trunk  # without a cool-down the trunk is the run of n steps
        _train_to(run, n, lambda i, n=n: lr_factor(i, n, warm, cfg.cooldown), data, cfg)
        at_checkpoint(n, run.ema.module.eval())
    _train_to(trunk, last, lambda i: lr_factor(i, last, warm, cfg.cooldown), data, cfg)
    return trunk.ema.module.eval()


@torch.no_grad()
def detect(model: MaskRCNNStage, test: L3Data, proposals: List[torch.Tensor], chunk: int = 16) -> List[dict]:
    """Per test image: boxes [P, 4], labels [P] (1..K), scores [P] and boolean masks [P, H, W], one per proposal."""
    heads = model.heads
    hw = tuple(test.images.shape[1:])
    out = []
    for start in range(0, len(test.images), chunk):
        feats = model.features(test.images[start : start + chunk])
        props = proposals[start : start + chunk]
        shapes = [hw] * len(props)
        logits, deltas = heads.box_head(heads.box_pooler(feats, props, shapes))
        probs = torch.softmax(logits, -1)[:, 1:]
        scores, labels = probs.max(-1)
        labels = labels + 1
        rows = torch.arange(len(labels))
        boxes = decode_boxes(deltas, torch.cat(props), heads.box_weights)[rows, labels]
        boxes = torch.stack(
            [
                boxes[:, 0].clamp(0, hw[1]),
                boxes[:, 1].clamp(0, hw[0]),
                boxes[:, 2].clamp(0, hw[1]),
                boxes[:, 3].clamp(0, hw[0]),
            ],
            1,
        )
        counts = [len(p) for p in props]
        per_image = list(boxes.split(counts))
        mask_logits = heads.mask_head(heads.mask_pooler(feats, per_image, shapes))
        mask_probs = torch.sigmoid(mask_logits[rows, labels - 1])
        for b, lab, sc, mp in zip(per_image, labels.split(counts), scores.split(counts), mask_probs.split(counts)):
            masks = paste_masks(mp, b, hw, 0.5) if len(b) else torch.zeros(0, *hw, dtype=torch.bool)
            out.append(dict(boxes=b, labels=lab, scores=sc, masks=masks))
    return out


def mask_ious(dets: List[dict], test: L3Data) -> List[np.ndarray]:
    """Per test image, the mask IoU of every object with the detection made from its own proposal."""
    out = []
    for d, gt in zip(dets, test.masks):
        pred = d["masks"].flatten(1).float()
        true = (gt > 0.5).flatten(1).float()
        inter = (pred * true).sum(1)
        out.append((inter / (pred.sum(1) + true.sum(1) - inter).clamp(min=1)).numpy())
    return out


def coco_results(dets: List[dict]) -> List[dict]:
    return [
        dict(image_id=i + 1, category_id=int(lab), segmentation=_rle(m.numpy()), score=float(s))
        for i, d in enumerate(dets)
        for lab, s, m in zip(d["labels"], d["scores"], d["masks"])
    ]


# ----------------------------------------------------------------------------------------- scoring
class Scorer:
    """Scores one run's detections on the fixed test set: point estimates, and the same statistics on
    bootstrap resamples of the test images (the resamples are shared by every run, so gaps stay paired)."""

    def __init__(self, test: L3Data, cfg: Config):
        self.test, self.cfg = test, cfg
        self.gt = coco_gt(test, area="box")
        n = len(test.images)
        rng = np.random.default_rng(7)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=cfg.bootstrap).astype(float)
        # row 0: every image once (the point estimate); rows 1..: resamples
        self.weights = np.concatenate([np.ones((1, n)), counts])
        self.areas = [((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).numpy() for b in test.boxes]
        sizes = [np.sqrt(a) for a in self.areas]
        edges = np.asarray(cfg.size_edges)
        self.bins = [np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2) for s in sizes]

    @property
    def n_bins(self) -> int:
        return len(self.cfg.size_edges) - 1

    def score(self, dets: List[dict], resamples: bool = True) -> Dict[str, np.ndarray]:
        """metric -> [1 + bootstrap] values (row 0 the point estimate; only it when not ``resamples``), in points
        (x100): AP, AP50, AP75, mIoU, the same AP with every score equal (constAP, constAP50, constAP75: what
        is left without the ranking), and per size bin i: AP@i, mIoU@i."""
        weights = self.weights if resamples else self.weights[:1]
        # each detection comes from one object's proposal: it counts in that object's size range
        table = match_detections(self.gt, coco_results(dets), self.cfg.size_edges, np.concatenate(self.areas))
        out = {k: 100 * v for k, v in average_precision(table, weights).items()}
        out.update({"const" + k: 100 * v for k, v in constant_score_ap(table, weights).items()})
        ious = mask_ious(dets, self.test)
        out["mIoU"] = 100 * self._weighted_mean(ious, None, weights)
        for b in range(self.n_bins):
            out[f"AP@{b}"] = 100 * average_precision(table, weights, size_range=b + 1)["AP"]
            out[f"mIoU@{b}"] = 100 * self._weighted_mean(ious, b, weights)
        return out

    def _weighted_mean(self, ious: List[np.ndarray], size_bin: Optional[int], weights: np.ndarray) -> np.ndarray:
        total, count = np.zeros(len(ious)), np.zeros(len(ious))
        for i, (v, b) in enumerate(zip(ious, self.bins)):
            keep = np.ones(len(v), bool) if size_bin is None else b == size_bin
            total[i], count[i] = v[keep].sum(), keep.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ total) / (weights @ count)

    def describe(self) -> dict:
        sizes = np.sqrt(np.concatenate(self.areas))
        bins = np.concatenate(self.bins)
        medians = [
            float(np.median(sizes[bins == b])) if (bins == b).any() else float("nan") for b in range(self.n_bins)
        ]
        return dict(
            test_images=len(self.test.images),
            test_objects=int(len(sizes)),
            size_edges=list(self.cfg.size_edges),
            objects_per_bin=np.bincount(bins, minlength=self.n_bins).tolist(),
            bin_median_px=medians,
            size_median=float(np.median(sizes)),
        )
