"""detectron2's ``ROIAlign`` (detectron2.layers), on roiops kernels."""

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from .. import _validation as v
from .._validation import BoxesArg
from ..roi_align import roi_align
from ._boxes import rois_like

torch.fx.wrap("rois_like")  # a leaf under torch.fx: its branches look at the tensors

__all__ = ["ROIAlign"]


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
