"""A small Mask R-CNN RoI-head stack on roiops: box and mask heads, targets and losses, mask pasting."""

from ..paste import paste_masks
from .grid import round_boxes_to_grid
from .heads import BoxHead, MaskHead
from .roi_heads import RoIHeads
from .targets import box_loss, decode_boxes, encode_boxes, mask_loss, mask_targets

__all__ = [
    "BoxHead",
    "MaskHead",
    "RoIHeads",
    "mask_targets",
    "mask_loss",
    "box_loss",
    "encode_boxes",
    "decode_boxes",
    "paste_masks",
    "round_boxes_to_grid",
]
