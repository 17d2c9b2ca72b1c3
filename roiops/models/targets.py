"""Training targets and losses of the Mask R-CNN RoI heads.

L = L_cls (cross-entropy over K + 1 classes) + L_box (smooth L1 on the deltas of the ground-truth class,
positive RoIs only) + L_mask (mean per-pixel sigmoid BCE on the ground-truth class's mask only).

Box deltas are the standard (dx, dy, dw, dh) parameterisation, divided by weights (10, 10, 5, 5) on
encoding; widths are x2 - x1 (continuous coordinates).
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..roi_align import roi_align

__all__ = [
    "BOX_WEIGHTS",
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "match_proposals",
    "sample_proposals",
    "mask_targets",
    "mask_loss",
    "box_loss",
]

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# largest log-scale change of a decoded box (a box can grow at most 1000/16 times per side)
DELTA_CLAMP = math.log(1000.0 / 16)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix [len(a), len(b)] of (x1, y1, x2, y2) boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def _centre_size(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(gt: Tensor, proposals: Tensor, weights: Sequence[float] = BOX_WEIGHTS) -> Tensor:
    """Deltas [N, 4] that turn each proposal into its ground-truth box (both [N, 4])."""
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(gt)
    return torch.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=-1
    )


def decode_boxes(
    deltas: Tensor, proposals: Tensor, weights: Sequence[float] = BOX_WEIGHTS, clamp: float = DELTA_CLAMP
) -> Tensor:
    """Inverse of :func:`encode_boxes`. deltas [N, 4 * C] (C boxes per proposal) -> boxes [N, C, 4];
    dw, dh are clamped to ``clamp`` so that exp() cannot overflow."""
    wx, wy, ww, wh = weights
    d = deltas.reshape(deltas.shape[0], -1, 4).to(proposals.dtype)
    px, py, pw, ph = _centre_size(proposals[:, None, :])
    cx = d[..., 0] / wx * pw + px
    cy = d[..., 1] / wy * ph + py
    w = torch.exp((d[..., 2] / ww).clamp(max=clamp)) * pw
    h = torch.exp((d[..., 3] / wh).clamp(max=clamp)) * ph
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def match_proposals(proposals: Tensor, gt_boxes: Tensor, fg_iou: float = 0.5, bg_iou: float = 0.5) -> Tensor:
    """Index of the best-overlapping ground-truth box per proposal; -1 for background (IoU < bg_iou),
    -2 for ignored (bg_iou <= IoU < fg_iou)."""
    if gt_boxes.numel() == 0:
        return torch.full((proposals.shape[0],), -1, dtype=torch.long, device=proposals.device)
    best, idx = box_iou(proposals, gt_boxes).max(dim=1)
    idx = idx.clone()
    idx[best < fg_iou] = -2
    idx[best < bg_iou] = -1
    return idx


def sample_proposals(
    matched_idxs: Tensor, batch_size: int = 512, positive_fraction: float = 0.25, generator=None
) -> Tuple[Tensor, Tensor]:
    """Random positive and negative proposal indices (at most ``batch_size`` in all, at most
    ``positive_fraction`` of them positive)."""
    pos = torch.nonzero(matched_idxs >= 0).squeeze(1)
    neg = torch.nonzero(matched_idxs == -1).squeeze(1)
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:num_neg].to(neg.device)]
    return pos, neg


def _mask_targets_one(gt_masks: Tensor, proposals: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    if gt_masks.dim() != 3:
        raise ValueError(f"mask_targets: gt_masks must be [G, H, W], got {tuple(gt_masks.shape)}")
    if proposals.dim() != 2 or proposals.shape[1] != 4:
        raise ValueError(f"mask_targets: proposals must be [P, 4], got {tuple(proposals.shape)}")
    dtype = proposals.dtype if proposals.is_floating_point() else torch.float32
    masks = gt_masks[:, None].to(dtype)
    rois = torch.cat([matched_idxs.to(dtype)[:, None], proposals.to(dtype)], dim=1)
    # mask pixel (i, j) covers [j, j + 1) x [i, i + 1): aligned=True puts cell centres at +0.5
    return roi_align(masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0]


def mask_targets(
    gt_masks: Union[Tensor, List[Tensor]],
    proposals: Union[Tensor, List[Tensor]],
    matched_idxs: Union[Tensor, List[Tensor]],
    size: int = 28,
) -> Tensor:
    """Soft mask targets [P, size, size] in [0, 1]: each proposal's matched instance mask (a full-image
    binary mask [H, W]) resampled into the proposal box with ``roiops.roi_align`` (aligned, adaptive
    sampling): each target cell averages bilinear samples of the mask taken inside the cell, so cells
    well inside the instance are 1, cells outside are 0, and cells on its boundary are fractional.

    Args:
        gt_masks: Tensor[G, H, W] of one image (or a list, one per image).
        proposals: Tensor[P, 4] (x1, y1, x2, y2) (or a list).
        matched_idxs: Tensor[P] of indices into gt_masks (or a list); each must be in [0, G).
        size: output mask size M.
    """
    if isinstance(gt_masks, Tensor):
        return _mask_targets_one(gt_masks, proposals, matched_idxs, size)
    parts = [_mask_targets_one(g, p, m, size) for g, p, m in zip(gt_masks, proposals, matched_idxs)]
    if not parts:
        raise ValueError("mask_targets: empty lists")
    return torch.cat(parts, dim=0)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean per-pixel sigmoid binary cross-entropy between ``mask_logits[r, labels[r]]`` and
    ``targets[r]``: only the channel of each RoI's ground-truth class is trained (no competition
    between classes). mask_logits [R, C, M, M], labels [R] (channel indices), targets [R, M, M].
    Zero RoIs give a zero loss that still connects to ``mask_logits``."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    labels = labels.to(device=mask_logits.device, dtype=torch.long)
    picked = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), labels]
    return F.binary_cross_entropy_with_logits(picked, targets.to(picked.dtype))


def box_loss(
    class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression_targets: Tensor, beta: float = 1.0 / 9
) -> Tuple[Tensor, Tensor]:
    """(L_cls, L_box): cross-entropy over all sampled RoIs; smooth L1 between the predicted deltas of
    each positive RoI's ground-truth class and its regression targets, summed and divided by the number
    of sampled RoIs. labels [R] (0 = background), regression_targets [R, 4]."""
    labels = labels.to(torch.long)
    loss_cls = F.cross_entropy(class_logits, labels)
    pos = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[pos, labels[pos]]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[pos], beta=beta, reduction="sum")
    return loss_cls, loss_box / max(1, labels.numel())
