import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from . import _fx
from . import _validation as v
from ._validation import BoxesArg


@torch.fx.wrap
def roi_pool(input: Tensor, boxes: BoxesArg, output_size: BroadcastingList2[int], spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN): rounds each box to whole feature cells, splits it into output_size bins
    whose edges are rounded again, and takes each bin's maximum. A drop-in for ``torchvision.ops.roi_pool``;
    scriptable, an FX leaf function, and exportable to ONNX (MaxRoiPool).

    Args:
        input: Tensor[N, C, H, W], float32/float64/float16/bfloat16, any layout; or a per-tensor-affine
            quantized CPU tensor.
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[L, 4]; same dtype and
            device as ``input``. No gradient flows to boxes.
        output_size: int or (h, w).
        spatial_scale: feature-map cells per image pixel (1 / stride).

    Returns:
        Tensor[K, C, h, w]; an empty bin gives 0.
    """
    if not torch.jit.is_scripting():
        if _fx.has_proxy(input, boxes):
            return _fx.record_call(roi_pool, (input, boxes, output_size, spatial_scale))
        op = "roi_pool"
        v.check_input(op, input)
        v.check_boxes(op, boxes, input)
        output_size = v.output_size_pair(op, output_size)
        spatial_scale = v.check_spatial_scale(op, spatial_scale)
        rois = v.boxes_to_rois(boxes, input)
        args = (input, rois, spatial_scale, output_size[0], output_size[1])
        return v.call_kernel(op, torch.ops.roiops.roi_pool, *args)[0]
    rois = v.boxes_to_rois(boxes, input)
    size = _pair(output_size)
    output, _ = torch.ops.roiops.roi_pool(input, rois, spatial_scale, size[0], size[1])
    return output


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (torchvision.ops.RoIPool signature)."""

    def __init__(self, output_size: BroadcastingList2[int], spatial_scale: float = 1.0):
        super().__init__()
        self.output_size = v.output_size_pair("RoIPool", output_size)
        self.spatial_scale = v.check_spatial_scale("RoIPool", spatial_scale)

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
