import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _fx
from . import _validation as v
from ._validation import BoxesArg


@torch.fx.wrap
def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign (Mask R-CNN): pools each box of `input` into an output_size grid of bins without
    quantizing the box; every bin aggregates a grid of bilinearly interpolated samples.

    A drop-in for ``torchvision.ops.roi_align`` (same arguments, order and defaults), plus ``pool_mode``.
    Scriptable (TorchScript), an FX leaf function, and exportable to ONNX (see README "Deploy").

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout (channels_last stays
            channels_last); or a per-tensor-affine quantized CPU tensor (the result is quantized
            with the input's scale and zero point).
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
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, boxes):
            return _fx.record_call(
                roi_align, (input, boxes, output_size, spatial_scale, sampling_ratio, aligned, pool_mode)
            )
        op = "roi_align"
        v.check_input(op, input)
        v.check_boxes(op, boxes, input)
        output_size = v.output_size_pair(op, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        aligned = v.check_aligned(op, aligned)
        pool_mode = v.check_pool_mode(op, pool_mode)
        rois = v.boxes_to_rois(boxes, input)
        args = (input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned, pool_mode)
        return v.call_kernel(op, torch.ops.roiops.roi_align, *args)[0]
    rois = v.boxes_to_rois(boxes, input)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.roi_align(
        input, rois, spatial_scale, size[0], size[1], sampling_ratio, aligned, pool_mode
    )
    return output


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision.ops.RoIAlign signature, plus ``pool_mode``)."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
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

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.pool_mode
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, pool_mode={self.pool_mode!r}"
        )
