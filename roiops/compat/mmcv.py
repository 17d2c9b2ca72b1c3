"""mmcv's ``RoIAlign`` / ``RoIPool`` / ``RoIAlignRotated`` / ``PrRoIPool`` modules and functional forms
(mmcv.ops), on roiops kernels."""

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import _validation as v
from .._validation import BoxesArg
from ..prroi_pool import prroi_pool as _prroi_pool
from ..roi_align import roi_align as _roi_align
from ..roi_align_rotated import roi_align_rotated as _roi_align_rotated
from ..roi_pool import RoIPool as _RoIPool
from ..roi_pool import roi_pool as _roi_pool
from ._boxes import rois_like

torch.fx.wrap("rois_like")  # a leaf under torch.fx: its branches look at the tensors

__all__ = [
    "PrRoIPool",
    "RoIAlign",
    "RoIAlignRotated",
    "RoIPool",
    "prroi_pool",
    "roi_align",
    "roi_align_rotated",
    "roi_pool",
]


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


def _degrees(rois: Tensor, input: Tensor) -> Tensor:
    """mmcv's rotated rois (angle in radians) as roiops takes them (degrees), cast as rois_like does. The
    kernels turn degrees back into radians in float64 before rounding to the compute type, so an angle
    comes out within one unit in the last place of mmcv's."""
    if input.dtype == torch.float32 or input.dtype == torch.float64:
        rois = rois.to(input.dtype)
    if not (rois.dim() == 2 and rois.shape[1] == 6):
        return rois  # (roiops' own check names the shape)
    return torch.cat([rois[:, :5], rois[:, 5:] * (180.0 / math.pi)], dim=1)


torch.fx.wrap("_degrees")  # a leaf under torch.fx: its branches look at the tensors


def _renamed(new: Optional[object], old: Optional[object], new_name: str, old_name: str, default):
    """The value of an argument that mmcv renamed (old keyword accepted, with a warning as mmcv gives)."""
    if old is None:
        return default if new is None else new
    if new is not None:
        raise TypeError(f"roi_align_rotated: got both {new_name} and its old name {old_name}")
    warnings.warn(f'"{old_name}" is deprecated, please use "{new_name}" instead', DeprecationWarning, stacklevel=3)
    return old


def _rotated(
    input: Tensor,
    rois: Tensor,
    output_size: BroadcastingList2[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    clockwise: bool,
) -> Tensor:
    return _roi_align_rotated(
        input, _degrees(rois, input), output_size, spatial_scale, sampling_ratio, aligned, clockwise
    )


def roi_align_rotated(
    input: Tensor,
    rois: Tensor,
    output_size=None,
    spatial_scale: float = 1.0,
    sampling_ratio: Optional[int] = None,
    aligned: bool = True,
    clockwise: bool = False,
    *,
    out_size=None,
    sample_num: Optional[int] = None,
) -> Tensor:
    """``roi_align_rotated(input, rois, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True,
    clockwise=False)``, rois Tensor[K, 6] (batch index, centre x, centre y, width, height, angle in
    **radians**), as mmcv.ops.roi_align_rotated; mmcv's old keywords ``out_size`` and ``sample_num`` are
    accepted (with a DeprecationWarning)."""
    output_size = _renamed(output_size, out_size, "output_size", "out_size", None)
    if output_size is None:
        raise TypeError("roi_align_rotated: missing the argument output_size")
    sampling_ratio = _renamed(sampling_ratio, sample_num, "sampling_ratio", "sample_num", 0)
    return _rotated(input, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise)


class RoIAlignRotated(nn.Module):
    """``RoIAlignRotated(output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True, clockwise=False)``;
    ``forward(input, rois)`` with rois Tensor[K, 6] (angle in radians; counter-clockwise unless
    ``clockwise``). ``aligned=False`` is mmcv's legacy rule: no half-cell offset, sizes at least one cell.
    The old keywords ``out_size`` and ``sample_num`` are accepted (with a DeprecationWarning)."""

    def __init__(
        self,
        output_size=None,
        spatial_scale: float = 1.0,
        sampling_ratio: Optional[int] = None,
        aligned: bool = True,
        clockwise: bool = False,
        *,
        out_size=None,
        sample_num: Optional[int] = None,
    ):
        super().__init__()
        op = "RoIAlignRotated"
        output_size = _renamed(output_size, out_size, "output_size", "out_size", None)
        if output_size is None:
            raise TypeError(f"{op}: missing the argument output_size")
        sampling_ratio = _renamed(sampling_ratio, sample_num, "sampling_ratio", "sample_num", 0)
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        self.aligned = v.check_bool(op, "aligned", aligned)
        self.clockwise = v.check_bool(op, "clockwise", clockwise)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return _rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise})"
        )


def prroi_pool(
    input: Tensor, rois: BoxesArg, output_size: BroadcastingList2[int], spatial_scale: float = 1.0
) -> Tensor:
    """``prroi_pool(input, rois, output_size, spatial_scale=1.0)``: mmcv's Precise RoI Pooling conventions
    (docs/semantics.md): no half-cell offset (``roiops.prroi_pool(..., aligned=False)``), cells outside
    the map count as 0, a bin of no area (an empty or inverted box) gives 0. Gradients reach ``input``
    and the box coordinates."""
    return _prroi_pool(input, rois_like(rois, input), output_size, spatial_scale, False)


class PrRoIPool(nn.Module):
    """``PrRoIPool(output_size, spatial_scale=1.0)``: module form of :func:`prroi_pool`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float = 1.0):
        super().__init__()
        op = "PrRoIPool"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"
