"""Boxes rounded to a feature map's grid: what RoIWarp does before it resamples.

RoIWarp (Dai et al., "Instance-aware Semantic Segmentation via Multi-task Network Cascades", 2016; compared in
Mask R-CNN's Table 2c) resamples the features bilinearly, like RoIAlign, but first quantizes the box to the
feature grid, as RoIPool does. RoIAlign with ``aligned=True`` on the boxes returned here is therefore RoIWarp:
the only thing it does differently from RoIAlign is that rounding.
"""

import torch
from torch import Tensor

__all__ = ["round_boxes_to_grid"]


def round_boxes_to_grid(boxes: Tensor, spatial_scale: float) -> Tensor:
    """Boxes [N, 4] (x1, y1, x2, y2, input coordinates) with every coordinate moved to the nearest boundary of
    the feature cells of a map at ``spatial_scale`` (cell c covers [c, c + 1) / spatial_scale):
    x -> round(x * spatial_scale) / spatial_scale, halves rounded away from zero as RoIPool rounds them.

    A box that would collapse (x2 rounding onto x1) keeps one cell, as RoIPool pools at least one cell.
    The result has the dtype of ``boxes``; ``roi_align(x, round_boxes_to_grid(b, s), size, s, aligned=True)``
    is RoIWarp.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"round_boxes_to_grid: boxes must be a floating-point Tensor[N, 4], got {tuple(boxes.shape)}")
    if not spatial_scale > 0:
        raise ValueError(f"round_boxes_to_grid: spatial_scale must be positive, got {spatial_scale}")
    cells = boxes * spatial_scale
    # C's round(): Python's and torch.round's round half to even would move 2.5 cells to 2, not 3
    rounded = torch.sign(cells) * torch.floor(cells.abs() + 0.5)
    x1, y1, x2, y2 = rounded.unbind(-1)
    x2 = torch.maximum(x2, x1 + 1)
    y2 = torch.maximum(y2, y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=-1) / spatial_scale
