"""A small Mask R-CNN RoI-head stage: pooling, box head, mask head; losses in training, detections
with full-resolution masks in inference."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..paste import paste_masks
from .targets import (
    BOX_WEIGHTS,
    box_iou,
    box_loss,
    decode_boxes,
    encode_boxes,
    mask_loss,
    mask_targets,
    match_proposals,
    sample_proposals,
)

__all__ = ["RoIHeads", "nms", "batched_nms"]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, by decreasing score."""
    try:  # the compiled torchvision kernel when it is there
        import torchvision

        return torchvision.ops.nms(boxes, scores, iou_threshold)
    except (ImportError, RuntimeError):
        pass
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes[order], boxes[order])
    n = order.numel()
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for i in range(n):  # over kept candidates only (detections, not RoIs of the heads)
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= iou_threshold
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each class: boxes of different classes are moved apart so that they never overlap."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou_threshold)


class RoIHeads(nn.Module):
    """Mask R-CNN second stage.

    Args:
        box_pooler: callable (features, boxes list, image_shapes) -> [R, C, 7, 7], e.g.
            ``roiops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)``.
        box_head: :class:`BoxHead` (class 0 = background, classes 1..K).
        mask_pooler, mask_head: the same for masks (14x14 -> K x 28x28), or None for boxes only.
        num_classes: K.

    forward(features, proposals: list of Tensor[P_i, 4], image_shapes: list of (h, w), targets=None)
      training: targets is a list of dicts with "boxes" [G, 4], "labels" [G] in 1..K and "masks" [G, H, W];
        returns {"loss_classifier", "loss_box_reg", "loss_mask"}.
      eval: returns one dict per image with "boxes" [D, 4], "labels" [D], "scores" [D] and "masks"
        [D, H, W] pasted at the image size (bool if ``mask_threshold`` is set, else probabilities).
    """

    def __init__(
        self,
        box_pooler,
        box_head: nn.Module,
        mask_pooler=None,
        mask_head: Optional[nn.Module] = None,
        *,
        num_classes: int,
        fg_iou: float = 0.5,
        bg_iou: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        box_weights: Sequence[float] = BOX_WEIGHTS,
        mask_threshold: Optional[float] = 0.5,
    ):
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.num_classes = num_classes
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.add_gt_as_proposals = add_gt_as_proposals
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.box_weights = tuple(box_weights)
        self.mask_threshold = mask_threshold

    @property
    def has_mask(self) -> bool:
        return self.mask_pooler is not None and self.mask_head is not None

    def select_training_samples(self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]):
        """Per image: sampled proposals, their labels (0 = background), regression targets and matched
        ground-truth indices (-1 for background)."""
        out_props, out_labels, out_regs, out_matched = [], [], [], []
        for props, tgt in zip(proposals, targets):
            gt_boxes = tgt["boxes"].to(props.dtype)
            if self.add_gt_as_proposals:
                props = torch.cat([props, gt_boxes], dim=0)
            matched = match_proposals(props, gt_boxes, self.fg_iou, self.bg_iou)
            pos, neg = sample_proposals(matched, self.batch_size_per_image, self.positive_fraction)
            keep = torch.cat([pos, neg])
            props, matched = props[keep], matched[keep]
            is_pos = matched >= 0
            safe = matched.clamp(min=0)
            labels = torch.where(
                is_pos,
                tgt["labels"].to(torch.long)[safe] if gt_boxes.numel() else torch.zeros_like(matched),
                torch.zeros_like(matched),
            )
            regs = torch.zeros_like(props)
            if gt_boxes.numel():
                regs[is_pos] = encode_boxes(gt_boxes[safe[is_pos]], props[is_pos], self.box_weights)
            out_props.append(props)
            out_labels.append(labels)
            out_regs.append(regs)
            out_matched.append(torch.where(is_pos, matched, torch.full_like(matched, -1)))
        return out_props, out_labels, out_regs, out_matched

    def forward(
        self,
        features,
        proposals: List[Tensor],
        image_shapes: List[Tuple[int, int]],
        targets: Optional[List[Dict[str, Tensor]]] = None,
    ):
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads: targets are required in training mode")
            return self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes)

    def _losses(self, features, proposals, image_shapes, targets) -> Dict[str, Tensor]:
        props, labels, regs, matched = self.select_training_samples(proposals, targets)
        class_logits, box_deltas = self.box_head(self.box_pooler(features, props, image_shapes))
        loss_cls, loss_box = box_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(regs))
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if self.has_mask:
            pos = [torch.nonzero(m >= 0).squeeze(1) for m in matched]
            pos_props = [p[i] for p, i in zip(props, pos)]
            mask_logits = self.mask_head(self.mask_pooler(features, pos_props, image_shapes))
            size = mask_logits.shape[-1]
            tgts = [mask_targets(t["masks"], p, m[i], size) for t, p, m, i in zip(targets, pos_props, matched, pos)]
            pos_labels = torch.cat([lab[i] for lab, i in zip(labels, pos)])
            mask_tgts = torch.cat(tgts) if tgts else mask_logits.new_zeros((0, size, size))
            # mask channel k holds class k + 1 (class 0 is background)
            losses["loss_mask"] = mask_loss(mask_logits, pos_labels - 1, mask_tgts)
        return losses

    @torch.no_grad()
    def _detect(self, features, proposals, image_shapes) -> List[Dict[str, Tensor]]:
        class_logits, box_deltas = self.box_head(self.box_pooler(features, proposals, image_shapes))
        scores_all = torch.softmax(class_logits, dim=-1)
        counts = [p.shape[0] for p in proposals]
        boxes_all = decode_boxes(box_deltas, torch.cat(proposals), self.box_weights)  # [N, K + 1, 4]
        results = []
        for scores, boxes, (h, w) in zip(scores_all.split(counts), boxes_all.split(counts), image_shapes):
            boxes = torch.stack(
                [
                    boxes[..., 0].clamp(0, w),
                    boxes[..., 1].clamp(0, h),
                    boxes[..., 2].clamp(0, w),
                    boxes[..., 3].clamp(0, h),
                ],
                dim=-1,
            )
            labels = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = (
                (scores > self.score_thresh)
                & ((boxes[:, 2] - boxes[:, 0]) >= 1e-2)
                & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
            )
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
        if self.has_mask:
            det_boxes = [r["boxes"] for r in results]
            mask_logits = self.mask_head(self.mask_pooler(features, det_boxes, image_shapes))
            labels = torch.cat([r["labels"] for r in results])
            probs = torch.sigmoid(mask_logits[torch.arange(labels.numel(), device=labels.device), labels - 1])
            for r, p, (h, w) in zip(results, probs.split([b.shape[0] for b in det_boxes]), image_shapes):
                r["masks"] = paste_masks(p, r["boxes"], (h, w), self.mask_threshold)
        return results
