"""Drop-in adapters with the names, argument orders and defaults of detectron2 and mmcv modules,
running on roiops kernels (no detectron2 / mmcv code or install needed).

    from roiops.compat import ROIAlign        # detectron2.layers.ROIAlign
    from roiops.compat import RoIAlign, RoIPool  # mmcv.ops.RoIAlign / mmcv.ops.RoIPool

Both RoIAlign flavours take rois as Tensor[K, 5] (batch index, x1, y1, x2, y2) (a list of Tensor[L, 4]
works too) and follow the torchvision/roiops semantics, which detectron2 and mmcv share:
``aligned=True`` shifts boxes by half a pixel, ``sampling_ratio <= 0`` samples adaptively.
"""
from typing import Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from . import _validation as v
from ._validation import BoxesArg
from .roi_align import roi_align as _roi_align
from .roi_pool import roi_pool as _roi_pool

__all__ = ["ROIAlign", "RoIAlign", "RoIPool", "roi_align", "roi_pool"]

OutputSize = Union[int, Tuple[int, int]]


@torch.fx.wrap  # a leaf under FX: its branches look at the tensors
def _rois_like(rois: BoxesArg, input: Tensor) -> BoxesArg:
    # detectron2 and mmcv accept rois whose dtype differs from the features' (e.g. fp32 boxes with fp16
    # features under autocast): cast them to the features' dtype
    if not input.is_floating_point():
        return rois
    if isinstance(rois, Tensor):
        return rois.to(input.dtype)
    return [r.to(input.dtype) for r in rois]


class ROIAlign(nn.Module):
    """detectron2-style ``ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=True)``;
    ``forward(input, rois)`` with rois Tensor[K, 5]. Average pooling only, as in detectron2."""

    def __init__(self, output_size: OutputSize, spatial_scale: float, sampling_ratio: int, aligned: bool = True):
        super().__init__()
        op = "ROIAlign"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        self.aligned = v.check_aligned(op, aligned)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        if not torch.jit.is_scripting():
            if isinstance(rois, Tensor) and not (rois.dim() == 2 and rois.shape[1] == 5):
                raise v.BoxesShapeError(f"ROIAlign: rois must be a Tensor[K, 5], but got shape {tuple(rois.shape)}")
        return _roi_align(
            input, _rois_like(rois, input), self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


def roi_align(
    input: Tensor,
    rois: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    pool_mode: str = "avg",
    aligned: bool = True,
) -> Tensor:
    """mmcv-style functional ``roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
    pool_mode='avg', aligned=True)``."""
    return _roi_align(input, _rois_like(rois, input), output_size, spatial_scale, sampling_ratio, aligned, pool_mode)


class RoIAlign(nn.Module):
    """mmcv-style ``RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode='avg',
    aligned=True, use_torchvision=False)``; ``pool_mode`` is "avg" or "max" (max over the bilinear
    samples of a bin, the aggregation of the Mask R-CNN paper). ``use_torchvision`` is accepted for
    signature compatibility and ignored: roiops kernels are always used."""

    def __init__(
        self,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        pool_mode: str = "avg",
        aligned: bool = True,
        use_torchvision: bool = False,
    ):
        super().__init__()
        op = "RoIAlign"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        self.pool_mode = v.check_pool_mode(op, pool_mode)
        self.aligned = v.check_aligned(op, aligned)
        self.use_torchvision = bool(use_torchvision)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.pool_mode, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, pool_mode={self.pool_mode}, aligned={self.aligned})"
        )


def roi_pool(input: Tensor, rois: BoxesArg, output_size: BroadcastingList2[int], spatial_scale: float = 1.0) -> Tensor:
    """mmcv-style functional ``roi_pool(input, rois, output_size, spatial_scale=1.0)``."""
    return _roi_pool(input, _rois_like(rois, input), output_size, spatial_scale)


class RoIPool(nn.Module):
    """mmcv-style ``RoIPool(output_size, spatial_scale=1.0)`` (quantizing max pooling of Fast R-CNN)."""

    def __init__(self, output_size: OutputSize, spatial_scale: float = 1.0):
        super().__init__()
        self.output_size = v.output_size_pair("RoIPool", output_size)
        self.spatial_scale = v.check_spatial_scale("RoIPool", spatial_scale)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
