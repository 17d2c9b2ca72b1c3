"""detectron2's ``ROIAlign`` and ``ROIAlignRotated`` (detectron2.layers), on roiops kernels."""

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import _validation as v
from .._validation import BoxesArg
from ..roi_align import roi_align
from ..roi_align_rotated import roi_align_rotated
from ._boxes import rois_like

torch.fx.wrap("rois_like")  # a leaf under torch.fx: its branches look at the tensors

__all__ = ["ROIAlign", "ROIAlignRotated"]


class ROIAlign(nn.Module):
    """``ROIAlign(output_size, spatial_scale, sampling_ratio, aligned=True)``; ``forward(input, rois)``
    with rois Tensor[K, 5] (batch index, x1, y1, x2, y2). Average pooling only, as in detectron2."""

    def __init__(
        self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int, aligned: bool = True
    ):
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
        return roi_align(
            input, rois_like(rois, input), self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )


class ROIAlignRotated(nn.Module):
    """``ROIAlignRotated(output_size, spatial_scale, sampling_ratio)``; ``forward(input, rois)`` with rois
    Tensor[K, 6] (batch index, centre x, centre y, width, height, angle in degrees, counter-clockwise).
    detectron2's conventions: always the half-cell offset (roiops ``aligned=True``), never clockwise.
    detectron2 refuses boxes of negative size on the CPU (an assert); roiops pools them by the formula,
    as detectron2's CUDA kernel does (docs/semantics.md)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        op = "ROIAlignRotated"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if not (isinstance(rois, Tensor) and rois.dim() == 2 and rois.shape[1] == 6):
                shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
                raise v.BoxesShapeError(f"ROIAlignRotated: rois must be a Tensor[K, 6], but got {shape}")
        return roi_align_rotated(
            input, rois_like(rois, input), self.output_size, self.spatial_scale, self.sampling_ratio, True, False
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio})"
        )
