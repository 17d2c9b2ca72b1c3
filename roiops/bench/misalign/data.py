"""Data for the misalignment benchmark (level 3): a seeded synthetic instance-segmentation set, and the
one real 2-D image (fluorescence microscopy, labelled nuclei) that the ``stardist`` package ships.

Both come out in the same form: a list of :class:`Sample` (one grey image in [0, 1] and its instances,
each a boolean visible mask plus a class id starting at 1). Level 3 uses the stardist image as
:func:`stardist_tiles`: upscaled (its nuclei are ~24 px, under one cell at stride 32), the left half cut into
random training crops of its 8 flips/rotations, the right half into test tiles that hold every nucleus whole.
"""

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch

SHAPE_CLASSES = ("ellipse", "polygon", "ring")


@dataclass
class Instance:
    mask: np.ndarray  # bool [H, W], the visible part
    label: int  # 1-based class id

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def box(self) -> Tuple[float, float, float, float]:
        """Tight box (x1, y1, x2, y2) in continuous pixel coordinates (pixel j covers [j, j+1))."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@dataclass
class Sample:
    image: np.ndarray  # float32 [H, W] in [0, 1]
    instances: List[Instance] = field(default_factory=list)


def _ellipse(xx, yy, cx, cy, a, b, theta):
    c, s = math.cos(theta), math.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _star_polygon(xx, yy, cx, cy, r, n_vertices, rng):
    """A star-convex polygon: vertices at sorted random angles and radii in [0.55 r, r]; a pixel is inside
    when its distance from the centre is below the straight edge between the two vertices around its angle."""
    # keep the angular gaps below pi so the centre stays inside
    angles = (
        np.linspace(0, 2 * math.pi, n_vertices, endpoint=False)
        + rng.uniform(-0.35, 0.35, n_vertices) * (2 * math.pi / n_vertices)
        + rng.uniform(0, 2 * math.pi)
    )
    angles = np.sort(np.mod(angles, 2 * math.pi))
    radii = r * rng.uniform(0.55, 1.0, n_vertices)
    px = cx + radii * np.cos(angles)
    py = cy + radii * np.sin(angles)
    inside = np.ones(xx.shape, dtype=bool)
    for i in range(n_vertices):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % n_vertices], py[(i + 1) % n_vertices]
        # the centre is on the left of every edge of a counter-clockwise star-convex polygon with gaps < pi
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


def make_shapes(
    n_images: int,
    size: int = 256,
    seed: int = 0,
    min_diameter: float = 10.0,
    max_diameter: float = 200.0,
    instances_per_image: Tuple[int, int] = (4, 9),
    min_visible: float = 0.45,
    stratify: bool = False,
) -> List[Sample]:
    """Seeded synthetic instances: ellipses (class 1), star-convex polygons (2) and rings (3) of log-uniform
    diameter, drawn in sequence so that later shapes occlude earlier ones (an instance keeps only its visible
    part; one left with less than ``min_visible`` of its area, or under 12 pixels, is dropped).
    Each instance has its own brightness and a faint texture; the background is dim and noisy.
    ``stratify``: each diameter is a random point of one of n equal slices of log diameter, the slices taken
    without replacement (n = the most objects the images can hold), so every size range gets close to its
    share of objects, up to the ones dropped by occlusion."""
    rng = np.random.default_rng(seed)
    log_lo, log_hi = math.log(min_diameter), math.log(max_diameter)
    if stratify:
        n = n_images * instances_per_image[1]  # at most this many draws
        u = (np.random.default_rng(seed + 1).permutation(n) + np.random.default_rng(seed + 2).random(n)) / n
        log_d = iter(log_lo + u * (log_hi - log_lo))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    samples = []
    for _ in range(n_images):
        image = 0.08 + 0.04 * rng.standard_normal((size, size)).astype(np.float32)
        owner = np.zeros((size, size), dtype=np.int32)  # 0 = background, k = k-th drawn shape
        drawn = []
        for k in range(1, int(rng.integers(instances_per_image[0], instances_per_image[1] + 1)) + 1):
            label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
            d = math.exp(next(log_d) if stratify else rng.uniform(log_lo, log_hi))
            r = d / 2
            cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
            # rasterise inside the shape's bounding square only
            y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
            x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
            sx, sy = xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]
            if label == 1:
                sub = _ellipse(sx, sy, cx, cy, r, r * rng.uniform(0.45, 1.0), rng.uniform(0, math.pi))
            elif label == 2:
                sub = _star_polygon(sx, sy, cx, cy, r, int(rng.integers(3, 8)), rng)
            else:
                a, b, th = r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
                t = rng.uniform(0.35, 0.6)
                sub = _ellipse(sx, sy, cx, cy, a, b, th) & ~_ellipse(sx, sy, cx, cy, a * t, b * t, th)
            m = np.zeros((size, size), dtype=bool)
            m[y0:y1, x0:x1] = sub
            full_area = int(m.sum())
            if full_area < 12:
                continue
            owner[m] = k
            brightness = rng.uniform(0.35, 1.0)
            fx, fy, ph = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 2 * math.pi)
            texture = 0.12 * np.sin(fx * sx + fy * sy + ph)
            patch = image[y0:y1, x0:x1]
            patch[sub] = (brightness + texture)[sub]
            drawn.append((k, label, full_area))
        image = image + 0.03 * rng.standard_normal((size, size)).astype(np.float32)
        instances = []
        for k, label, full_area in drawn:
            vis = owner == k
            a = int(vis.sum())
            if a >= 12 and a >= min_visible * full_area:
                instances.append(Instance(vis, label))
        samples.append(Sample(np.clip(image, 0, 1).astype(np.float32), instances))
    return samples


def stardist_paths() -> Optional[Tuple[str, str]]:
    """Paths of stardist's img2d.tif / mask2d.tif, found without importing stardist (whose import needs
    scipy, tensorflow-free extras, ...); None when the package is not installed."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = os.path.join(list(spec.submodule_search_locations)[0], "data", "images")
    img, mask = os.path.join(root, "img2d.tif"), os.path.join(root, "mask2d.tif")
    if not (os.path.exists(img) and os.path.exists(mask)):
        return None
    return img, mask


def _normalize(image: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    a, b = np.percentile(image, [lo, hi])
    return np.clip((image.astype(np.float32) - a) / max(b - a, 1e-6), 0, 1).astype(np.float32)


def _instances_from_labels(labels: np.ndarray, min_area: int = 12) -> List[Instance]:
    out = []
    for i in np.unique(labels):
        if i == 0:
            continue
        m = labels == i
        if m.sum() >= min_area:
            out.append(Instance(m, 1))
    return out


def _dihedral_array(a: np.ndarray, k: int) -> np.ndarray:
    a = np.rot90(a, k % 4)
    return np.ascontiguousarray(a[:, ::-1] if k >= 4 else a)


def dihedral(sample: Sample, k: int) -> Sample:
    """The k-th (0..7) of the 8 flips/rotations of a sample (image and masks together)."""
    t = lambda a: _dihedral_array(a, k)  # noqa: E731
    return Sample(t(sample.image), [Instance(t(i.mask), i.label) for i in sample.instances])


def _stardist_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """stardist's 2-D image (normalised to [0, 1]) and its nucleus label image (0 = background)."""
    import tifffile

    paths = stardist_paths()
    if paths is None:
        raise FileNotFoundError("the stardist package (pip install --no-deps stardist) is not installed")
    return _normalize(tifffile.imread(paths[0])), tifffile.imread(paths[1]).astype(np.int32)


def load_stardist(augment: bool = True) -> Tuple[List[Sample], List[Sample]]:
    """The stardist 2-D image split into a training region (left half) and a test region (right half).
    Nuclei cut by the split keep their visible part when at least 12 pixels remain. With ``augment`` the
    training region is expanded to its 8 flips/rotations. Raises FileNotFoundError without stardist."""
    image, labels = _stardist_arrays()
    w = image.shape[1] // 2
    train = Sample(np.ascontiguousarray(image[:, :w]), _instances_from_labels(labels[:, :w]))
    test = Sample(np.ascontiguousarray(image[:, w:]), _instances_from_labels(labels[:, w:]))
    train_set = [dihedral(train, k) for k in range(8)] if augment else [train]
    return train_set, [test]


def upscale(image: np.ndarray, labels: np.ndarray, factor: int) -> Tuple[np.ndarray, np.ndarray]:
    """Image bilinearly (pixel centres kept: pixel j covers [j, j+1)), labels by nearest: pixel j becomes
    pixels [factor j, factor (j + 1)), so a mask's box scales exactly by ``factor``."""
    img = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    big = torch.nn.functional.interpolate(img, scale_factor=factor, mode="bilinear", align_corners=False)
    return big[0, 0].clamp(0, 1).numpy(), labels.repeat(factor, 0).repeat(factor, 1)


def _window(
    image: np.ndarray, labels: np.ndarray, y0: int, x0: int, size: int, keep
) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """The size x size window at (y0, x0) (zero outside the arrays) and the label ids among ``keep`` in it."""
    h, w = labels.shape
    img, lab = np.zeros((size, size), np.float32), np.zeros((size, size), np.int32)
    ya, yb, xa, xb = max(y0, 0), min(y0 + size, h), max(x0, 0), min(x0 + size, w)
    img[ya - y0 : yb - y0, xa - x0 : xb - x0] = image[ya:yb, xa:xb]
    lab[ya - y0 : yb - y0, xa - x0 : xb - x0] = labels[ya:yb, xa:xb]
    return img, lab, [int(i) for i in np.unique(lab) if i and i in keep]


def _sample(img: np.ndarray, lab: np.ndarray, ids, full_area: np.ndarray, min_visible: float) -> Sample:
    """A window as a Sample: each nucleus of ``ids`` with at least ``min_visible`` of its whole area (and 12
    pixels) inside, as its visible part; the other nuclei stay in the image, unlabelled."""
    out = []
    for i in ids:
        m = lab == i
        a = int(m.sum())
        if a >= 12 and a >= min_visible * full_area[i]:
            out.append(Instance(m, 1))
    return Sample(img, out)


def stardist_tiles(
    scale: int = 3, crop: int = 192, n_crops: int = 256, tile: int = 256, seed: int = 0, min_visible: float = 0.45
) -> Tuple[List[Sample], List[Sample]]:
    """Level 3's stardist data: the image upscaled by ``scale``, split into a left (training) and a right (test)
    half. Training: ``n_crops`` crop x crop windows at random places in the 8 flips/rotations of the left half.
    Test: the right half's tile x tile cores, each widened on every side by the largest nucleus half-extent so
    that every nucleus whose box centre lies in a core is whole in its tile; it is labelled there only (a
    nucleus cut by the split keeps its visible part if at least ``min_visible`` of it is in the right half),
    and the neighbours' nuclei in the margin stay unlabelled, so each nucleus is scored once. In both, a
    nucleus's size is its size in the upscaled image. Raises FileNotFoundError without stardist."""
    image, labels = upscale(*_stardist_arrays(), scale)
    full_area = np.bincount(labels.ravel())
    w = labels.shape[1] // 2
    rng = np.random.default_rng(seed)
    views = [(_dihedral_array(image[:, :w], k), _dihedral_array(labels[:, :w], k)) for k in range(8)]
    every = set(np.unique(labels).tolist()) - {0}
    train = []
    for _ in range(n_crops):
        img, lab = views[int(rng.integers(8))]
        y0, x0 = int(rng.integers(0, lab.shape[0] - crop + 1)), int(rng.integers(0, lab.shape[1] - crop + 1))
        train.append(_sample(*_window(img, lab, y0, x0, crop, every), full_area, min_visible))
    img, lab = image[:, w:], labels[:, w:]
    centres, margin = {}, 0
    for i in every & set(np.unique(lab).tolist()):
        ys, xs = np.nonzero(lab == i)
        centres[i] = ((ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2)
        margin = max(margin, int(math.ceil(max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) / 2)))
    test = []
    for y0 in range(0, lab.shape[0], tile):
        for x0 in range(0, lab.shape[1], tile):
            own = {i for i, (cy, cx) in centres.items() if y0 <= cy < y0 + tile and x0 <= cx < x0 + tile}
            test.append(
                _sample(*_window(img, lab, y0 - margin, x0 - margin, tile + 2 * margin, own), full_area, min_visible)
            )
    return train, test


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
            masks.append(
                torch.stack([torch.from_numpy(i.mask) for i in s.instances]).float()
                if s.instances
                else torch.zeros(0, *s.image.shape)
            )
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
