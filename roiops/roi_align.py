from typing import Tuple, Union


from torch import Tensor, nn

from . import _validation as v
from ._ops import ops

OutputSize = Union[int, Tuple[int, int]]


def roi_align(
    input: Tensor,
    boxes: v.BoxesArg,
    output_size: OutputSize,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign (Mask R-CNN): pools each box of `input` into an output_size grid of bins without
    quantizing the box; every bin aggregates a grid of bilinearly interpolated samples.

    A drop-in for ``torchvision.ops.roi_align`` (same arguments, order and defaults), plus ``pool_mode``.

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout (channels_last stays
            channels_last).
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4] (x1, y1, x2, y2),
            in input-image coordinates; same dtype and device as ``input``. No gradient flows to boxes.
        output_size: int or (h, w): the number of bins per box.
        spatial_scale: feature-map cells per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 means adaptive, ceil(box size / output size).
        aligned: shift the box by -0.5 cell so that sample points sit on pixel centres (recommended);
            False reproduces the original (Detectron v1) behaviour.
        pool_mode: "avg" averages a bin's samples (torchvision, detectron2); "max" takes their maximum
            (the aggregation of the Mask R-CNN paper) and routes the gradient to the winning sample.

    Returns:
        Tensor[K, C, h, w].
    """
    op = "roi_align"
    v.check_input(op, input)
    rois = v.boxes_to_rois(op, boxes, input)
    pooled_height, pooled_width = v.output_size_pair(op, output_size)
    output, _ = ops.roi_align(
        input,
        rois,
        v.check_spatial_scale(op, spatial_scale),
        pooled_height,
        pooled_width,
        v.check_sampling_ratio(op, sampling_ratio),
        v.check_aligned(op, aligned),
        v.check_pool_mode(op, pool_mode),
    )
    return output


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision.ops.RoIAlign signature, plus ``pool_mode``)."""

    def __init__(
        self,
        output_size: OutputSize,
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
        pool_mode: str = "avg",
    ):
        super().__init__()
        op = "RoIAlign"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        self.aligned = v.check_aligned(op, aligned)
        self.pool_mode = v.check_pool_mode(op, pool_mode)

    def forward(self, input: Tensor, rois: v.BoxesArg) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.pool_mode
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r}"
        )
