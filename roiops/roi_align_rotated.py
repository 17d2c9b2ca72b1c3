import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _fx
from . import _validation as v
from ._validation import BoxesArg


@torch.fx.wrap
def roi_align_rotated(
    input: Tensor,
    rois: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign: pools each oriented box of `input` into an output_size grid of bins; each bin
    averages a grid of bilinear samples laid out in the box and turned with it about its centre
    (docs/semantics.md, "Rotated RoIAlign"). detectron2's and mmcv's definition; roiops.compat has
    adapters with their exact signatures and angle units.

    Scriptable (TorchScript) and an FX leaf function. Not exportable to ONNX (no standard operator
    computes it: export raises).

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout (channels_last stays
            channels_last).
        rois: Tensor[K, 6] of (batch index, centre x, centre y, width, height, angle in degrees), or a
            list of N Tensor[L, 5] (the same without the batch index), in input-image coordinates; same
            dtype and device as ``input``. No gradient flows to rois.
        output_size: int or (h, w): the number of bins per box.
        spatial_scale: feature-map cells per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 means adaptive, ceil(box size / output size).
        aligned: shift the box centre by -0.5 cell so that samples sit on pixel centres (detectron2
            always does); False: no shift, and sizes below one cell count as one cell (mmcv's legacy).
        clockwise: a positive angle turns the box clockwise on the image (y pointing down) instead of
            counter-clockwise (mmcv's flag).

    Returns:
        Tensor[K, C, h, w].
    """
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, rois):
            return _fx.record_call(
                roi_align_rotated, (input, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise)
            )
        op = "roi_align_rotated"
        v.check_input(op, input)
        if input.is_quantized:
            raise TypeError(f"{op}: input must be a floating-point tensor (quantized input is not supported)")
        v.check_boxes(op, rois, input, width=6)
        output_size = v.output_size_pair(op, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        aligned = v.check_bool(op, "aligned", aligned)
        clockwise = v.check_bool(op, "clockwise", clockwise)
        r = v.boxes_to_rois(rois, input, 6)
        args = (input, r, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned, clockwise)
        return v.call_kernel(op, torch.ops.roiops.roi_align_rotated, *args)[0]
    r = v.boxes_to_rois(rois, input, 6)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.roi_align_rotated(
        input, r, spatial_scale, size[0], size[1], sampling_ratio, aligned, clockwise
    )
    return output


class RoIAlignRotated(nn.Module):
    """Module form of :func:`roi_align_rotated`."""

    def __init__(
        self,
        output_size: BroadcastingList2[int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        aligned: bool = True,
        clockwise: bool = False,
    ):
        super().__init__()
        op = "RoIAlignRotated"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        self.aligned = v.check_bool(op, "aligned", aligned)
        self.clockwise = v.check_bool(op, "clockwise", clockwise)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, self.clockwise
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise}"
        )
