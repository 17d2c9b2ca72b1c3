"""Multi-scale (FPN) RoI pooling on roiops kernels, a drop-in for ``torchvision.ops.MultiScaleRoIAlign``.

Each box goes to one pyramid level, by the FPN rule

    level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), clamped to the levels present,

(computed as torchvision computes it, so that the assignment matches bit for bit), and each level is
pooled with a single kernel call over all of its boxes. The scale of every feature map is inferred from
its size and the largest image size, rounded to a power of two.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import _validation as v
from .roi_align import roi_align
from .roi_pool import roi_pool

__all__ = ["MultiScaleRoIAlign", "infer_scale", "assign_levels", "POOL_OPS"]

POOL_OPS = ("roi_align", "roi_pool")


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """Spatial scale of a feature map of ``feature_size`` (h, w) for images padded to ``image_size``:
    2 ** round(log2(h / H)), taken from the height as torchvision does."""
    approx = float(feature_size[0]) / float(image_size[0])
    if approx <= 0:
        raise ValueError(f"MultiScaleRoIAlign: cannot infer a scale from feature size {tuple(feature_size)} "
                         f"and image size {tuple(image_size)}")
    return 2.0 ** round(math.log2(approx))


def assign_levels(
    boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """Pyramid level of each (x1, y1, x2, y2) box [N, 4] minus k_min (an index into the levels), int64."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (lvl.clamp(min=k_min, max=k_max) - k_min).to(torch.int64)


class MultiScaleRoIAlign(nn.Module):
    """FPN RoI pooling: torchvision's constructor and call, plus ``aligned``, ``pool_mode`` and ``op``.

    Args:
        featmap_names: keys of the feature dict to pool from, finest level first (dict order is used).
        output_size: int or (h, w).
        sampling_ratio: samples per bin and axis (<= 0: adaptive).
        canonical_scale, canonical_level: the FPN level rule (a 224x224 box goes to level 4).
        aligned: half-pixel-corrected RoIAlign (default False, as torchvision's pooler).
        pool_mode: "avg" or "max" aggregation of a bin's samples (RoIAlign only).
        op: "roi_align" (default) or "roi_pool" (quantizing Fast R-CNN pooling, for comparisons).

    Call: ``pooler(features: dict[str, Tensor], boxes: list[Tensor[L, 4]], image_shapes: list[(h, w)])``
    -> Tensor[sum L, C, h, w]. Unlike torchvision, scales are inferred again on every call (cheap
    integer arithmetic) instead of being frozen at the first call.
    """

    def __init__(
        self,
        featmap_names: List[str],
        output_size: Union[int, Tuple[int, int], List[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        pool_mode: str = "avg",
        op: str = "roi_align",
    ):
        super().__init__()
        name = type(self).__name__
        if isinstance(featmap_names, str) or not all(isinstance(k, str) for k in featmap_names):
            raise TypeError(f"{name}: featmap_names must be a list of str, but got {featmap_names!r}")
        if len(featmap_names) == 0:
            raise ValueError(f"{name}: featmap_names must not be empty")
        if op not in POOL_OPS:
            raise ValueError(f"{name}: op must be one of {POOL_OPS}, but got {op!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = v.output_size_pair(name, output_size)
        self.sampling_ratio = v.check_sampling_ratio(name, sampling_ratio)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = v.check_aligned(name, aligned)
        self.pool_mode = v.check_pool_mode(name, pool_mode)
        self.op = op
        self.scales: Optional[List[float]] = None  # scales of the last call (for inspection)

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.op == "roi_pool":
            return roi_pool(feature, rois, self.output_size, scale)
        return roi_align(
            feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned, self.pool_mode
        )

    def setup(self, features: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tuple[List[float], int, int]:
        """(scales, k_min, k_max) for these feature maps and image sizes."""
        if len(image_shapes) == 0:
            raise ValueError(f"{type(self).__name__}: image_shapes must not be empty")
        image_size = (max(int(s[0]) for s in image_shapes), max(int(s[1]) for s in image_shapes))
        scales = [infer_scale(f.shape[-2:], image_size) for f in features]
        k_min = int(-math.log2(scales[0]))
        k_max = int(-math.log2(scales[-1]))
        return scales, k_min, k_max

    def levels(self, boxes: List[Tensor], image_shapes: List[Tuple[int, int]], features: Dict[str, Tensor]) -> Tensor:
        """Index (into the pooled levels) that each box is pooled from, int64 [sum L]."""
        feats = self._filter(features)
        _, k_min, k_max = self.setup(feats, image_shapes)
        rois = self._rois(boxes, feats[0])
        return assign_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)

    def _rois(self, boxes: List[Tensor], first: Tensor) -> Tensor:
        # rois keep the boxes' dtype (levels are assigned from it, as torchvision does); each level's
        # rois are cast to that level's feature dtype (they differ under autocast)
        name = type(self).__name__
        if isinstance(boxes, Tensor) or not isinstance(boxes, (list, tuple)):
            raise TypeError(f"{name}: boxes must be a list of Tensor[L, 4], one per image, but got {type(boxes).__name__}")
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4 or not b.is_floating_point():
                got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{name}: boxes[{i}] must be a floating-point Tensor[L, 4], but got {got}")
        if len(boxes) == 0:
            return first.new_zeros((0, 5))
        index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
        return torch.cat([index, torch.cat(list(boxes), dim=0)], dim=1)

    def _filter(self, features: Dict[str, Tensor]) -> List[Tensor]:
        feats = [f for k, f in features.items() if k in self.featmap_names]
        if not feats:
            raise ValueError(
                f"{type(self).__name__}: none of featmap_names {self.featmap_names} is in the features "
                f"(keys {list(features.keys())})"
            )
        return feats

    def forward(
        self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tensor:
        feats = self._filter(x)
        scales, k_min, k_max = self.setup(feats, image_shapes)
        self.scales = scales
        first = feats[0]
        rois = self._rois(boxes, first)
        if len(feats) == 1:
            return self._pool(first, rois.to(first.dtype), scales[0])
        levels = assign_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level)
        result = first.new_zeros((rois.shape[0], first.shape[1]) + self.output_size)
        for level, (feature, scale) in enumerate(zip(feats, scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            pooled = self._pool(feature, rois.index_select(0, idx).to(feature.dtype), scale)
            result = result.index_copy(0, idx, pooled.to(result.dtype))
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r}, "
            f"op={self.op!r}"
        )
