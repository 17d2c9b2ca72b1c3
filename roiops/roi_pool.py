from typing import Tuple, Union

from torch import Tensor, nn

from . import _validation as v
from ._ops import ops

OutputSize = Union[int, Tuple[int, int]]


def roi_pool(input: Tensor, boxes: v.BoxesArg, output_size: OutputSize, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN): rounds each box to whole feature cells, splits it into output_size bins
    whose edges are rounded again, and takes each bin's maximum. A drop-in for ``torchvision.ops.roi_pool``.

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout.
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4]; same dtype and
            device as ``input``. No gradient flows to boxes.
        output_size: int or (h, w).
        spatial_scale: feature-map cells per image pixel (1 / stride).

    Returns:
        Tensor[K, C, h, w]; an empty bin gives 0.
    """
    op = "roi_pool"
    v.check_input(op, input)
    rois = v.boxes_to_rois(op, boxes, input)
    pooled_height, pooled_width = v.output_size_pair(op, output_size)
    output, _ = ops.roi_pool(input, rois, v.check_spatial_scale(op, spatial_scale), pooled_height, pooled_width)
    return output


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (torchvision.ops.RoIPool signature)."""

    def __init__(self, output_size: OutputSize, spatial_scale: float = 1.0):
        super().__init__()
        self.output_size = v.output_size_pair("RoIPool", output_size)
        self.spatial_scale = v.check_spatial_scale("RoIPool", spatial_scale)

    def forward(self, input: Tensor, rois: v.BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
