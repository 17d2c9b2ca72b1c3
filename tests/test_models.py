"""roiops.models: heads, box coding, mask targets and losses, paste_masks, RoIHeads, and roiops poolers
inside torchvision's Mask R-CNN."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roiops.models import BoxHead, MaskHead, RoIHeads, decode_boxes, encode_boxes, mask_loss, mask_targets, paste_masks
from roiops.models.targets import box_iou, box_loss, match_proposals
from roiops.poolers import MultiScaleRoIAlign


# ----------------------------------------------------------------------------------------- heads
def test_head_shapes():
    mh = MaskHead(8, 3, conv_channels=16)
    assert mh(torch.randn(5, 8, 14, 14)).shape == (5, 3, 28, 28)
    assert mh(torch.zeros(0, 8, 14, 14)).shape == (0, 3, 28, 28)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in mh.modules()) == 4
    bh = BoxHead(8, 3)
    logits, deltas = bh(torch.randn(6, 8, 7, 7))
    assert logits.shape == (6, 4) and deltas.shape == (6, 16)
    assert bh.fc1.out_features == bh.fc2.out_features == 1024


# ------------------------------------------------------------------------------------ box coding
def test_box_coding_roundtrip_and_hand_case():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    proposals = torch.cat([p, p + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 80], 1)
    q = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    gt = torch.cat([q, q + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 80], 1)
    d = encode_boxes(gt, proposals)
    torch.testing.assert_close(decode_boxes(d, proposals)[:, 0], gt)
    # proposal centred at (10, 20) of size 10 x 20, gt shifted by (1, 2) and twice as wide
    d = encode_boxes(torch.tensor([[1.0, 12, 21, 32]]), torch.tensor([[5.0, 10, 15, 30]]))
    torch.testing.assert_close(d, torch.tensor([[10 * 1 / 10, 10 * 2 / 20, 5 * math.log(2), 0.0]]))
    # huge dw is clamped: the box grows by at most 1000/16
    big = decode_boxes(torch.tensor([[0.0, 0, 500, 500]]), torch.tensor([[0.0, 0, 16, 16]]))
    torch.testing.assert_close(big[0, 0, 2] - big[0, 0, 0], torch.tensor(1000.0))


def test_box_loss_against_formula():
    logits = torch.randn(4, 3)
    deltas = torch.randn(4, 12)
    labels = torch.tensor([0, 2, 1, 0])
    regs = torch.randn(4, 4)
    lc, lb = box_loss(logits, deltas, labels, regs, beta=1.0 / 9)
    assert torch.allclose(lc, F.cross_entropy(logits, labels))

    def sl1(x):
        a = x.abs()
        return torch.where(a < 1 / 9, 0.5 * a * a * 9, a - 0.5 / 9).sum()

    want = (sl1(deltas[1, 8:12] - regs[1]) + sl1(deltas[2, 4:8] - regs[2])) / 4
    assert torch.allclose(lb, want)


def test_match_proposals():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    props = torch.tensor([[0.0, 0, 10, 10], [21, 21, 40, 40], [0, 0, 10, 30], [100, 100, 110, 110]])
    assert match_proposals(props, gt, 0.5, 0.3).tolist() == [0, 1, -2, -1]
    torch.testing.assert_close(box_iou(props[:2], gt), torch.tensor([[1.0, 0.0], [0.0, 361 / 400]]))


# ------------------------------------------------------------------------------ mask targets/loss
def test_mask_targets_exact_crop():
    # a box of exactly size x size pixels: each target cell samples its pixel's centre -> a crop
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(3, 60, 50, generator=g) > 0.5).float()
    props = torch.tensor([[4.0, 6, 32, 34], [10, 20, 38, 48], [0, 0, 28, 28]])
    matched = torch.tensor([2, 0, 1])
    t = mask_targets(masks, props, matched, size=28)
    assert t.shape == (3, 28, 28)
    torch.testing.assert_close(t[0], masks[2, 6:34, 4:32])
    torch.testing.assert_close(t[1], masks[0, 20:48, 10:38])
    torch.testing.assert_close(t[2], masks[1, :28, :28])
    # list form (one entry per image) concatenates
    t2 = mask_targets([masks, masks[:1]], [props[:2], props[2:]], [matched[:2], torch.tensor([0])], 28)
    torch.testing.assert_close(t2[:2], t[:2])
    torch.testing.assert_close(t2[2], masks[0, :28, :28])


def test_mask_targets_downsampling_uses_roi_align():
    g = torch.Generator().manual_seed(2)
    masks = (torch.rand(2, 70, 90, generator=g) > 0.3).float()
    props = torch.tensor([[3.5, 2.25, 80, 66], [10, 10, 20.5, 15]])
    t = mask_targets(masks, props, torch.tensor([1, 0]), size=14)
    from roiops.reference import roi_align_reference

    rois = torch.tensor([[1.0, 3.5, 2.25, 80, 66], [0, 10, 10, 20.5, 15]])
    want = roi_align_reference(masks[:, None], rois, 14, 1.0, 0, True)[:, 0]
    torch.testing.assert_close(t, want)
    assert t.min() >= 0 and t.max() <= 1


def test_mask_loss_uses_only_the_gt_channel():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 6, 6, generator=g, requires_grad=True)
    labels = torch.tensor([2, 0, 3])
    tg = torch.rand(3, 6, 6, generator=g)
    loss = mask_loss(logits, labels, tg)
    x = torch.stack([logits[0, 2], logits[1, 0], logits[2, 3]])
    want = (torch.clamp(x, min=0) - x * tg + torch.log1p(torch.exp(-x.abs()))).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    grad_mask = torch.zeros(3, 4, 1, 1)
    grad_mask[0, 2] = grad_mask[1, 0] = grad_mask[2, 3] = 1
    assert (logits.grad * (1 - grad_mask)).abs().max() == 0
    assert (logits.grad * grad_mask).abs().sum() > 0
    empty = mask_loss(
        torch.zeros(0, 4, 6, 6, requires_grad=True), torch.zeros(0, dtype=torch.long), torch.zeros(0, 6, 6)
    )
    assert empty.item() == 0 and empty.requires_grad


# ---------------------------------------------------------------------------------- paste_masks
def test_paste_full_mask_reproduces_integer_boxes():
    g = torch.Generator().manual_seed(4)
    h, w = 47, 63
    xy = torch.randint(0, 40, (40, 2), generator=g)
    wh = torch.randint(1, 25, (40, 2), generator=g)
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]))], 1).float()
    for size in (28, 7, 1, 3):
        pasted = paste_masks(torch.ones(40, size, size), boxes, (h, w))
        assert pasted.dtype == torch.bool and pasted.shape == (40, h, w)
        for m, b in zip(pasted, boxes.long().tolist()):
            want = torch.zeros(h, w, dtype=torch.bool)
            want[b[1] : b[3], b[0] : b[2]] = True
            assert torch.equal(m, want), (size, b)


def test_paste_matches_grid_sample_and_inverts_crop():
    g = torch.Generator().manual_seed(5)
    h, w = 40, 52
    masks = torch.rand(6, 28, 28, generator=g, dtype=torch.float64)
    xy = torch.rand(6, 2, generator=g, dtype=torch.float64) * 30 - 5
    boxes = torch.cat([xy, xy + 3 + torch.rand(6, 2, generator=g, dtype=torch.float64) * 30], 1)
    got = paste_masks(masks, boxes, (h, w), threshold=None)
    # oracle: grid_sample at every pixel centre (j + 0.5, i + 0.5), normalised to the box, clamped to
    # the mask's outer cells inside the box and 0 outside it
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    gx = (xs[None] - boxes[:, 0, None, None]) / (boxes[:, 2] - boxes[:, 0])[:, None, None] * 2 - 1
    gy = (ys[None] - boxes[:, 1, None, None]) / (boxes[:, 3] - boxes[:, 1])[:, None, None] * 2 - 1
    want = F.grid_sample(masks[:, None], torch.stack([gx, gy], -1), align_corners=False, padding_mode="border")[:, 0]
    inside = (gx >= -1) & (gx < 1) & (gy >= -1) & (gy < 1)
    want = want * inside
    assert (inside.sum((1, 2)) > 0).sum() >= 4 and (~inside).any()
    torch.testing.assert_close(got, want)
    # a 28 x 28 integer box: pasting is the exact inverse of cropping the image into the box
    img = torch.rand(h, w, generator=g, dtype=torch.float64)
    box = torch.tensor([[7.0, 5, 35, 33]], dtype=torch.float64)
    crop = img[5:33, 7:35][None]
    back = paste_masks(crop, box, (h, w), threshold=None)[0]
    torch.testing.assert_close(back[5:33, 7:35], crop[0])
    assert back.sum() == pytest.approx(crop.sum().item())
    # chunking gives the same answer
    torch.testing.assert_close(paste_masks(masks, boxes, (h, w), None, chunk_pixels=h * w * 2), got)
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)


# ---------------------------------------------------------------------- overfitting the heads
def _synthetic(n_img=3, size=64, seed=0):
    """Images with an ellipse (class 1) in the left half and a diamond (class 2) in the right half."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images, targets = [], []
    for _ in range(n_img):
        img = torch.rand(3, size, size, generator=g) * 0.2
        boxes, masks = [], []
        for k in range(2):
            w, h = (torch.rand(2, generator=g) * 14 + 16).tolist()
            cx = 2 + k * 30 + w / 2 + torch.rand(1, generator=g).item() * (30 - w - 2)
            cy = 2 + h / 2 + torch.rand(1, generator=g).item() * (size - h - 4)
            if k == 0:
                m = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1
            else:
                m = (xs - cx).abs() / (w / 2) + (ys - cy).abs() / (h / 2) <= 1
            idx = m.nonzero()
            boxes.append(
                torch.tensor([idx[:, 1].min(), idx[:, 0].min(), idx[:, 1].max() + 1, idx[:, 0].max() + 1]).float()
            )
            img[k][m] += 0.8
            masks.append(m)
        images.append(img)
        targets.append(
            {"boxes": torch.stack(boxes), "labels": torch.tensor([1, 2]), "masks": torch.stack(masks).float()}
        )
    return torch.stack(images), targets


def _jittered(boxes, g, n=4, amount=0.1, size=64):
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(n, 2)
    b = boxes.repeat(n, 1) + (torch.rand(n * boxes.shape[0], 4, generator=g) * 2 - 1) * amount * wh
    rand = torch.rand(8, 4, generator=g) * size
    rand = torch.cat([torch.minimum(rand[:, :2], rand[:, 2:]), torch.maximum(rand[:, :2], rand[:, 2:]) + 1], 1)
    return torch.cat([b, rand]).clamp(0, size)


@pytest.fixture
def one_thread():
    # tiny tensors: threads only add synchronisation, which is very slow on a loaded 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("op", ["roi_align"])
def test_heads_overfit_synthetic_instances(op, one_thread):
    torch.manual_seed(0)
    images, targets = _synthetic()
    c = 16
    backbone = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1),
        nn.ReLU(),
    )
    heads = RoIHeads(
        MultiScaleRoIAlign(["0"], 7, 2, aligned=True, op=op),
        BoxHead(c, 2, fc_dim=64),
        MultiScaleRoIAlign(["0"], 14, 2, aligned=True, op=op),
        MaskHead(c, 2, conv_channels=16, num_convs=2),
        num_classes=2,
        batch_size_per_image=32,
    )
    params = list(backbone.parameters()) + list(heads.parameters())
    opt = torch.optim.Adam(params, lr=5e-3)
    shapes = [(64, 64)] * len(images)
    g = torch.Generator().manual_seed(1)
    first = None
    for _ in range(150):
        feats = {"0": backbone(images)}
        losses = heads(feats, [_jittered(t["boxes"], g) for t in targets], shapes, targets)
        loss = sum(losses.values())
        first = first if first is not None else {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert losses["loss_mask"].item() < 0.5 * first["loss_mask"]
    assert losses["loss_classifier"].item() < 0.2 * first["loss_classifier"]

    heads.eval()
    with torch.no_grad():
        feats = {"0": backbone(images)}
        dets = heads(feats, [t["boxes"] for t in targets], shapes)
    gt_masks = torch.cat([t["masks"] for t in targets]).bool()
    ious = []
    for d, t in zip(dets, targets):
        assert d["masks"].shape[1:] == (64, 64) and d["masks"].dtype == torch.bool
        for k in range(2):
            # the best-scoring detection of each class sits on the instance and its pasted mask fits it
            i = torch.nonzero(d["labels"] == k + 1)[0, 0]
            assert box_iou(d["boxes"][i : i + 1], t["boxes"][k : k + 1]).item() > 0.8
            m, gm = d["masks"][i], t["masks"][k].bool()
            ious.append(((m & gm).sum() / (m | gm).sum()).item())
    assert min(ious) > 0.85 and sum(ious) / len(ious) > 0.9, ious
    assert len(gt_masks) == len(ious)


# ------------------------------------------------------- roiops poolers inside torchvision Mask R-CNN
tv_detection = pytest.importorskip("torchvision.models.detection")


def _tv_maskrcnn(seed=0):
    torch.manual_seed(seed)
    return tv_detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=128,
        max_size=160,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        box_batch_size_per_image=64,
        box_detections_per_img=10,
        box_score_thresh=0.0,
    )


def _swap_poolers(model):
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    model.roi_heads.mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    return model


def _tv_batch():
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 128, 160, generator=g)]
    targets = []
    for boxes in ([[10.0, 12, 70, 90], [80, 20, 150, 60]], [[30.0, 40, 100, 120]]):
        b = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), 128, 160, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, b.long().tolist()):
            m[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3] = 1
        targets.append({"boxes": b, "labels": torch.tensor([1, 2][: len(boxes)]), "masks": masks})
    return images, targets


@pytest.mark.slow
def test_torchvision_maskrcnn_trains_with_roiops_poolers():
    model = _swap_poolers(_tv_maskrcnn())
    model.train()
    images, targets = _tv_batch()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.roi_heads.parameters() if p.requires_grad]
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    # gradients flow through the roiops poolers into the FPN
    fpn_grads = [p.grad for p in model.backbone.fpn.parameters()]
    assert any(gr is not None and gr.abs().sum() > 0 for gr in fpn_grads)


@pytest.mark.slow
def test_torchvision_maskrcnn_eval_same_as_torchvision_poolers():
    images, _ = _tv_batch()
    theirs = _tv_maskrcnn(seed=1).eval()
    ours = _swap_poolers(_tv_maskrcnn(seed=1)).eval()
    with torch.no_grad():
        a = ours(images)
        b = theirs(images)
    for ra, rb, img in zip(a, b, images):
        n = ra["boxes"].shape[0]
        assert n > 0
        assert ra["boxes"].shape == (n, 4) and ra["labels"].shape == (n,) and ra["scores"].shape == (n,)
        assert ra["masks"].shape == (n, 1) + tuple(img.shape[-2:])
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(ra[key], rb[key], rtol=1e-4, atol=1e-4)
