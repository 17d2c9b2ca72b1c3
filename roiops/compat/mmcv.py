"""mmcv's ``RoIAlign`` / ``RoIPool`` modules and functional forms (mmcv.ops), on roiops kernels."""

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import _validation as v
from .._validation import BoxesArg
from ..roi_align import roi_align as _roi_align
from ..roi_pool import RoIPool as _RoIPool
from ..roi_pool import roi_pool as _roi_pool
from ._boxes import rois_like

torch.fx.wrap("rois_like")  # a leaf under torch.fx: its branches look at the tensors

__all__ = ["RoIAlign", "RoIPool", "roi_align", "roi_pool"]


def roi_align(
    input: Tensor,
    rois: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    pool_mode: str = "avg",
    aligned: bool = True,
) -> Tensor:
    """``roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode='avg',
    aligned=True)``: mmcv's argument order and defaults (``pool_mode`` before ``aligned``)."""
    return _roi_align(input, rois_like(rois, input), output_size, spatial_scale, sampling_ratio, aligned, pool_mode)


def roi_pool(input: Tensor, rois: BoxesArg, output_size: BroadcastingList2[int], spatial_scale: float = 1.0) -> Tensor:
    """``roi_pool(input, rois, output_size, spatial_scale=1.0)``."""
    return _roi_pool(input, rois_like(rois, input), output_size, spatial_scale)


class RoIAlign(nn.Module):
    """``RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode='avg', aligned=True,
    use_torchvision=False)``; ``pool_mode`` is "avg" or "max" (max over the bilinear samples of a bin,
    the aggregation of the Mask R-CNN paper). ``use_torchvision`` is accepted for signature
    compatibility and ignored: roiops kernels are always used."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
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


class RoIPool(_RoIPool):
    """``RoIPool(output_size, spatial_scale=1.0)`` (the quantizing max pooling of Fast R-CNN)."""

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
