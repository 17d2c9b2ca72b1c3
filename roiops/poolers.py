"""Multi-scale (FPN) RoI pooling on roiops kernels, a drop-in for ``torchvision.ops.MultiScaleRoIAlign``.

Each box goes to one pyramid level by a level rule (LEVEL_RULES), torchvision's by default,

    level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped to the levels present,

computed with the same tensor operations as torchvision's, on the boxes' device, so that the assignment
matches bit for bit. All levels are pooled by one call of the multilevel_pool op (forward and backward:
no per-level calls, no nonzero, no host sync); TorchScript and ONNX export take the per-level
composition instead, which is also the op's reference. The scale of every feature map is inferred
from its size and the largest image size, rounded to a power of two, in Python arithmetic.

When torchvision is installed, ``MultiScaleRoIAlign`` subclasses torchvision's, so torchvision's
detection constructors (which check ``isinstance``) accept it and its feature extraction treats it as
a leaf module. It scripts (TorchScript), and under torch.fx its steps are leaf functions.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from . import _validation as v
from .prroi_pool import prroi_pool
from .roi_align import roi_align
from .roi_pool import roi_pool

__all__ = ["MultiScaleRoIAlign", "infer_scale", "assign_levels", "POOL_OPS", "LEVEL_RULES"]

POOL_OPS = ("roi_align", "roi_pool", "prroi_pool")
# torchvision's MultiScaleRoIAlign (LevelMapper), detectron2's ROIPooler (assign_boxes_to_levels: +1e-8
# inside the log) and mmdet's SingleRoIExtractor (map_roi_levels: floor(log2(sqrt(area) / 56 + 1e-6)),
# finest_scale 56 by default, counted from the first level present).
LEVEL_RULES = ("torchvision", "detectron2", "mmdet")


def _base_class() -> type:
    try:
        from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler
    except Exception:  # not installed, or installed but broken (e.g. built for another torch)
        return nn.Module
    return TorchvisionPooler


def infer_scale(feature_size: List[int], image_size: List[int]) -> float:
    """Spatial scale of a feature map of ``feature_size`` (h, w) for images padded to ``image_size``:
    2 ** round(log2(h / H)), taken from the height as torchvision does."""
    approx = float(feature_size[0]) / float(image_size[0])
    if approx <= 0:
        raise ValueError(
            f"MultiScaleRoIAlign: cannot infer a scale from feature size {feature_size} and image size {image_size}"
        )
    return 2.0 ** float(round(_log2(approx)))


def _log2(x: float) -> float:
    # (math.log2 does not script.) Callers round the result: it is exact to ~1e-15 for a power of two.
    return math.log(x) / math.log(2.0)


def assign_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    rule: str = "torchvision",
) -> Tensor:
    """Pyramid level of each (x1, y1, x2, y2) box [N, 4] minus k_min (an index into the levels), int64,
    by one of LEVEL_RULES (for mmdet, canonical_scale is its finest_scale and canonical_level unused)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    if rule == "detectron2":
        lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale + 1e-8))
    elif rule == "mmdet":
        lvl = torch.floor(torch.log2(s / canonical_scale + 1e-6)) + k_min
    else:
        lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (lvl.clamp(min=k_min, max=k_max) - k_min).to(torch.int64)


@torch.fx.wrap
def _filter_features(x: Dict[str, Tensor], featmap_names: List[str]) -> List[Tensor]:
    feats: List[Tensor] = []
    for name, feature in x.items():
        if name in featmap_names:
            feats.append(feature)
    if len(feats) == 0:
        raise ValueError(
            f"MultiScaleRoIAlign: none of featmap_names {featmap_names} is in the features (keys {list(x.keys())})"
        )
    return feats


@torch.fx.wrap
def _infer_scales(features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> List[float]:
    if len(image_shapes) == 0:
        raise ValueError("MultiScaleRoIAlign: image_shapes must not be empty")
    max_h = 0
    max_w = 0
    for shape in image_shapes:
        max_h = max(max_h, int(shape[0]))
        max_w = max(max_w, int(shape[1]))
    return [infer_scale([int(f.shape[-2]), int(f.shape[-1])], [max_h, max_w]) for f in features]


def _boxes_to_rois(boxes: List[Tensor], first: Tensor) -> Tensor:
    # rois keep the boxes' dtype (levels are assigned from it, as torchvision does); each level's
    # rois are cast to that level's feature dtype (they differ under autocast)
    if not torch.jit.is_scripting():
        if isinstance(boxes, Tensor) or not isinstance(boxes, (list, tuple)):
            raise TypeError(
                f"MultiScaleRoIAlign: boxes must be a list of Tensor[L, 4], one per image, but got {type(boxes).__name__}"
            )
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4 or not b.is_floating_point():
                got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise v.BoxesShapeError(
                    f"MultiScaleRoIAlign: boxes[{i}] must be a floating-point Tensor[L, 4], but got {got}"
                )
    return v.boxes_to_rois(boxes, first)


@torch.fx.wrap
def _multiscale_pool(
    features: List[Tensor],
    boxes: List[Tensor],
    scales: List[float],
    output_size: List[int],
    sampling_ratio: int,
    canonical_scale: int,
    canonical_level: int,
    aligned: bool,
    pool_mode: str,
    op: str,
    level_rule: str,
) -> Tensor:
    first = features[0]
    rois = _boxes_to_rois(boxes, first)
    if len(features) == 1:
        return _pool_level(first, rois.to(first.dtype), scales[0], output_size, sampling_ratio, aligned, pool_mode, op)
    k_min = int(round(-_log2(scales[0])))
    k_max = int(round(-_log2(scales[-1])))
    levels = assign_levels(rois[:, 1:], k_min, k_max, float(canonical_scale), canonical_level, rule=level_rule)
    # (multilevel_pool pools by RoIAlign or RoIPool; Precise RoI Pooling goes level by level.)
    if not torch.jit.is_scripting() and op != "prroi_pool":
        if not torch.onnx.is_in_onnx_export():
            mode = "roi_pool" if op == "roi_pool" else pool_mode
            args = (features, rois.to(first.dtype), levels, scales, output_size[0], output_size[1])
            return v.call_kernel(
                "multilevel_pool", torch.ops.roiops.multilevel_pool, *args, sampling_ratio, aligned, mode
            )[0]
    return _pool_per_level(features, rois, levels, scales, output_size, sampling_ratio, aligned, pool_mode, op)


def _pool_per_level(
    features: List[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: List[float],
    output_size: List[int],
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
    op: str,
) -> Tensor:
    """The per-level composition (TorchScript, ONNX export, and the reference of multilevel_pool)."""
    first = features[0]
    result = torch.zeros(
        (rois.shape[0], first.shape[1], output_size[0], output_size[1]), dtype=first.dtype, device=first.device
    )
    for level, feature in enumerate(features):
        idx = torch.nonzero(levels == level).squeeze(1)
        pooled = _pool_level(
            feature,
            rois.index_select(0, idx).to(feature.dtype),
            scales[level],
            output_size,
            sampling_ratio,
            aligned,
            pool_mode,
            op,
        )
        result = result.index_copy(0, idx, pooled.to(result.dtype))
    return result


def _pool_level(
    feature: Tensor,
    rois: Tensor,
    scale: float,
    output_size: List[int],
    sampling_ratio: int,
    aligned: bool,
    pool_mode: str,
    op: str,
) -> Tensor:
    if op == "roi_pool":
        return roi_pool(feature, rois, output_size, scale)
    if op == "prroi_pool":
        return prroi_pool(feature, rois, output_size, scale, aligned)
    return roi_align(feature, rois, output_size, scale, sampling_ratio, aligned, pool_mode)


_BASE = _base_class()


class MultiScaleRoIAlign(_BASE):
    """FPN RoI pooling: torchvision's constructor and call, plus ``aligned``, ``pool_mode`` and ``op``.

    Args:
        featmap_names: keys of the feature dict to pool from, finest level first (dict order is used).
        output_size: int or (h, w).
        sampling_ratio: samples per bin and axis (<= 0: adaptive).
        canonical_scale, canonical_level: the FPN level rule (a 224x224 box goes to level 4).
    level_rule: "torchvision" (default), "detectron2" or "mmdet" (LEVEL_RULES; for "mmdet" set
        canonical_scale to its finest_scale, 56).
        aligned: half-pixel-corrected RoIAlign (default False, as torchvision's pooler).
        pool_mode: "avg" or "max" aggregation of a bin's samples (RoIAlign only).
        op: "roi_align" (default), "roi_pool" (quantizing Fast R-CNN pooling, for comparisons) or
            "prroi_pool" (Precise RoI Pooling, the exact bin integral; ``aligned`` is its offset,
            ``sampling_ratio`` and ``pool_mode`` do not apply; pooled level by level).

    Call: ``pooler(features: dict[str, Tensor], boxes: list[Tensor[L, 4]], image_shapes: list[(h, w)])``
    -> Tensor[sum L, C, h, w]. Unlike torchvision, scales are inferred again on every call (cheap
    integer arithmetic) instead of being frozen at the first call; ``scales`` holds the last call's.
    """

    __annotations__ = {"scales": Optional[List[float]]}

    def __init__(
        self,
        featmap_names: List[str],
        output_size: BroadcastingList2[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        pool_mode: str = "avg",
        op: str = "roi_align",
        level_rule: str = "torchvision",
    ):
        name = type(self).__name__
        if isinstance(featmap_names, str) or not all(isinstance(k, str) for k in featmap_names):
            raise TypeError(f"{name}: featmap_names must be a list of str, but got {featmap_names!r}")
        if len(featmap_names) == 0:
            raise ValueError(f"{name}: featmap_names must not be empty")
        if op not in POOL_OPS:
            raise ValueError(f"{name}: op must be one of {POOL_OPS}, but got {op!r}")
        if level_rule not in LEVEL_RULES:
            raise ValueError(f"{name}: level_rule must be one of {LEVEL_RULES}, but got {level_rule!r}")
        output_size = v.output_size_pair(name, output_size)
        sampling_ratio = v.check_sampling_ratio(name, sampling_ratio)
        if _BASE is nn.Module:
            nn.Module.__init__(self)
        else:  # a fully initialized torchvision pooler: its inherited methods find all their state
            _BASE.__init__(
                self,
                list(featmap_names),
                output_size,
                sampling_ratio,
                canonical_scale=canonical_scale,
                canonical_level=canonical_level,
            )
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = v.check_aligned(name, aligned)
        self.pool_mode = v.check_pool_mode(name, pool_mode)
        self.op = op
        self.level_rule = level_rule
        self.scales = None

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = _filter_features(x, self.featmap_names)
        scales = _infer_scales(features, image_shapes)
        self.scales = scales
        return _multiscale_pool(
            features,
            boxes,
            scales,
            [self.output_size[0], self.output_size[1]],
            self.sampling_ratio,
            self.canonical_scale,
            self.canonical_level,
            self.aligned,
            self.pool_mode,
            self.op,
            self.level_rule,
        )

    @torch.jit.unused
    def setup(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tuple[List[float], int, int]:
        """(scales, k_min, k_max) for these feature maps and image sizes."""
        scales = _infer_scales(features, image_shapes)
        return scales, int(round(-_log2(scales[0]))), int(round(-_log2(scales[-1])))

    @torch.jit.unused
    def levels(self, boxes: List[Tensor], image_shapes: List[Tuple[int, int]], features: Dict[str, Tensor]) -> Tensor:
        """Index (into the pooled levels) that each box is pooled from, int64 [sum L]."""
        feats = _filter_features(features, self.featmap_names)
        _, k_min, k_max = self.setup(feats, image_shapes)
        rois = _boxes_to_rois(boxes, feats[0])
        return assign_levels(
            rois[:, 1:], k_min, k_max, float(self.canonical_scale), self.canonical_level, rule=self.level_rule
        )

    def __repr__(self) -> str:
        # torchvision's repr, extended only by the options that differ from their defaults
        extra = ""
        if self.aligned:
            extra += f", aligned={self.aligned}"
        if self.pool_mode != "avg":
            extra += f", pool_mode={self.pool_mode!r}"
        if self.op != "roi_align":
            extra += f", op={self.op!r}"
        if self.level_rule != "torchvision":
            extra += f", level_rule={self.level_rule!r}"
        return (
            f"{type(self).__name__}(featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}{extra})"
        )
