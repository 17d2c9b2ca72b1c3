"""Position-sensitive RoIAlign and RoIPool (R-FCN): drop-ins for ``torchvision.ops.ps_roi_align`` /
``ps_roi_pool`` and their modules (same arguments, order, defaults and results; see
docs/semantics.md for where torchvision's RoIPool variant differs at the map's last row and column)."""

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _fx
from . import _validation as v
from ._validation import BoxesArg


def _check_ps_input(op: str, input: Tensor, output_size) -> None:
    if input.is_quantized:
        raise TypeError(
            f"{op}: input must be a floating-point tensor (quantized input is not supported), but got {input.dtype}"
        )
    v.check_ps_channels(op, input.shape[1], output_size)


@torch.fx.wrap
def ps_roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign (R-FCN): bin (i, j) of output channel c is RoIAlign's average (boxes
    shifted by half a cell, as ``aligned=True``) over input channel (c * h + i) * w + j.

    Args:
        input: Tensor[N, C, H, W] with C a multiple of h * w; float32/float64/float16/bfloat16, any layout.
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4]; same dtype and
            device as ``input``. No gradient flows to boxes.
        output_size: int or (h, w).
        spatial_scale: feature-map cells per image pixel (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 means adaptive, ceil(box size / output size).

    Returns:
        Tensor[K, C / (h * w), h, w].
    """
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, boxes):
            return _fx.record_call(ps_roi_align, (input, boxes, output_size, spatial_scale, sampling_ratio))
        op = "ps_roi_align"
        v.check_input(op, input)
        v.check_boxes(op, boxes, input)
        output_size = v.output_size_pair(op, output_size)
        _check_ps_input(op, input, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)
        rois = v.boxes_to_rois(boxes, input)
        args = (input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio)
        return v.call_kernel(op, torch.ops.roiops.ps_roi_align, *args)[0]
    rois = v.boxes_to_rois(boxes, input)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.ps_roi_align(input, rois, spatial_scale, size[0], size[1], sampling_ratio)
    return output


@torch.fx.wrap
def ps_roi_pool(
    input: Tensor, boxes: BoxesArg, output_size: BroadcastingList2[int], spatial_scale: float = 1.0
) -> Tensor:
    """Position-sensitive RoIPool (R-FCN): each box is rounded to whole cells and cut into h x w bins with
    rounded edges (as RoIPool), and bin (i, j) of output channel c is the *average* of input channel
    (c * h + i) * w + j over the bin's cells (an empty bin gives 0).

    Args:
        input: Tensor[N, C, H, W] with C a multiple of h * w; float32/float64/float16/bfloat16, any layout.
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4].
        output_size: int or (h, w).
        spatial_scale: feature-map cells per image pixel (1 / stride).

    Returns:
        Tensor[K, C / (h * w), h, w].
    """
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, boxes):
            return _fx.record_call(ps_roi_pool, (input, boxes, output_size, spatial_scale))
        op = "ps_roi_pool"
        v.check_input(op, input)
        v.check_boxes(op, boxes, input)
        output_size = v.output_size_pair(op, output_size)
        _check_ps_input(op, input, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        rois = v.boxes_to_rois(boxes, input)
        args = (input, rois, spatial_scale, output_size[0], output_size[1])
        return v.call_kernel(op, torch.ops.roiops.ps_roi_pool, *args)[0]
    rois = v.boxes_to_rois(boxes, input)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.ps_roi_pool(input, rois, spatial_scale, size[0], size[1])
    return output


class PSRoIAlign(nn.Module):
    """Module form of :func:`ps_roi_align` (torchvision.ops.PSRoIAlign signature)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        op = "PSRoIAlign"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.sampling_ratio = v.check_sampling_ratio(op, sampling_ratio)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}"
        )


class PSRoIPool(nn.Module):
    """Module form of :func:`ps_roi_pool` (torchvision.ops.PSRoIPool signature)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float):
        super().__init__()
        self.output_size = v.output_size_pair("PSRoIPool", output_size)
        self.spatial_scale = v.check_spatial_scale("PSRoIPool", spatial_scale)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
