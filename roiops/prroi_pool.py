import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _fx
from . import _validation as v
from ._validation import BoxesArg


@torch.fx.wrap
def prroi_pool(
    input: Tensor,
    rois: BoxesArg,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    """Precise RoI Pooling (IoU-Net): each bin is the exact mean, over the bin, of the feature map
    interpolated bilinearly between cell centres (cells outside the map count as 0). No sampling ratio:
    the integral is computed in closed form (docs/semantics.md, "Precise RoI Pooling"). The output is
    differentiable with respect to ``input`` **and** the box coordinates (for box refinement by
    gradient, as in IoU-Net, or trackers such as ATOM / DiMP). ``roiops.compat.mmcv`` has mmcv's
    ``PrRoIPool`` / ``prroi_pool`` with its conventions.

    Scriptable (TorchScript) and an FX leaf function. Not exportable to ONNX (no standard operator
    computes it: export raises).

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout (channels_last stays
            channels_last).
        rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4] (the boxes of
            each image), in input-image coordinates; same dtype and device as ``input``. If they
            require grad, they get one (the batch index column gets 0).
        output_size: int or (h, w): the number of bins per box.
        spatial_scale: feature-map cells per image pixel (1 / stride).
        aligned: shift the box by -0.5 cell, so that cell c's value sits at the centre of the pixels it
            covers (the exact geometry, as roi_align's aligned=True); False: no shift (mmcv's and the
            original implementation's convention).

    Returns:
        Tensor[K, C, h, w]. A box of no area (x2 <= x1 or y2 <= y1) gives 0.
    """
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, rois):
            return _fx.record_call(prroi_pool, (input, rois, output_size, spatial_scale, aligned))
        op = "prroi_pool"
        v.check_input(op, input)
        if input.is_quantized:
            raise TypeError(f"{op}: input must be a floating-point tensor (quantized input is not supported)")
        v.check_boxes(op, rois, input)
        output_size = v.output_size_pair(op, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        aligned = v.check_bool(op, "aligned", aligned)
        r = v.boxes_to_rois(rois, input, 5)
        args = (input, r, spatial_scale, output_size[0], output_size[1], aligned)
        return v.call_kernel(op, torch.ops.roiops.prroi_pool, *args)[0]
    r = v.boxes_to_rois(rois, input, 5)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.prroi_pool(input, r, spatial_scale, size[0], size[1], aligned)
    return output


class PrRoIPool(nn.Module):
    """Module form of :func:`prroi_pool`."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float = 1.0, aligned: bool = True):
        super().__init__()
        op = "PrRoIPool"
        self.output_size = v.output_size_pair(op, output_size)
        self.spatial_scale = v.check_spatial_scale(op, spatial_scale)
        self.aligned = v.check_bool(op, "aligned", aligned)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale, self.aligned)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, aligned={self.aligned}"
