"""roiops.MultiScaleRoIAlign: FPN level rule, scale inference, per-level pooling, torchvision parity."""

import math

import pytest
import torch

import roiops
from roiops.poolers import MultiScaleRoIAlign, assign_levels, infer_scale

NAMES = ["0", "1", "2", "3"]


def fpn_features(h, w, channels=3, batch=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {
        str(i): torch.randn(
            batch, channels, math.ceil(h / 2 ** (i + 2)), math.ceil(w / 2 ** (i + 2)), generator=g, dtype=dtype
        )
        for i in range(4)
    }
    feats["pool"] = torch.randn(batch, channels, 2, 3, generator=g, dtype=dtype)  # not pooled from
    return feats


def random_boxes(n, h, w, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype) * 0.9
    # squared uniform sizes spread the boxes over all four levels
    wh = torch.rand(n, 2, generator=g, dtype=dtype) ** 2 * torch.tensor([w, h], dtype=dtype) + 1
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h], dtype=dtype))], dim=1)


def expected_level(box, k_min=2, k_max=5, canonical_scale=224):
    s = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    return min(max(math.floor(4 + math.log2(s / canonical_scale) + 1e-6), k_min), k_max) - k_min


def test_level_rule_hand_checked():
    # a 224 x 224 box goes to the canonical level 4, halving/doubling the side moves one level
    boxes = torch.tensor(
        [
            [0, 0, 224, 224],
            [10, 10, 122, 122],
            [0, 0, 448, 448],
            [0, 0, 56, 56],
            [0, 0, 4, 4],
            [0, 0, 2000, 2000],
            [0, 0, 111.9, 112],
            [0, 0, 112, 448],
        ],
        dtype=torch.float32,
    )
    got = assign_levels(boxes, 2, 5).tolist()
    assert got == [2, 1, 3, 0, 0, 3, 0, 2]  # minus k_min = 2
    assert got == [expected_level(b) for b in boxes.tolist()]


def test_infer_scale_rounds_to_power_of_two():
    assert infer_scale((200, 272), (800, 1088)) == 0.25
    assert infer_scale((25, 33), (100, 130)) == 0.25  # ceil-divided odd sizes
    assert infer_scale((13, 17), (100, 130)) == 0.125
    assert infer_scale((7, 9), (100, 130)) == 0.0625


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(
    "op,pool_mode", [("roi_align", "avg"), ("roi_align", "max"), ("roi_pool", "avg"), ("prroi_pool", "avg")]
)
def test_each_box_pooled_from_its_level(op, pool_mode, aligned):
    # oracle: pool every box alone with the plain operator on the level the FPN rule gives it
    h, w = 150, 190
    feats = fpn_features(h, w, dtype=torch.float64)
    big = torch.tensor([[2.0, 3, 150, 140], [10.5, 0, 189, 130]], dtype=torch.float64)
    boxes = [random_boxes(20, h, w, 1, torch.float64), torch.cat([random_boxes(11, h, w, 2, torch.float64), big])]
    pooler = MultiScaleRoIAlign(NAMES, (5, 4), 2, aligned=aligned, pool_mode=pool_mode, op=op, canonical_scale=56)
    out = pooler(feats, boxes, [(h, w), (h - 7, w - 11)])
    assert out.shape == (33, 3, 5, 4)
    assert pooler.scales == [0.25, 0.125, 0.0625, 0.03125]
    k = 0
    for img, bs in enumerate(boxes):
        for b in bs:
            level = expected_level(b.tolist(), canonical_scale=56)
            roi = torch.cat([torch.tensor([float(img)], dtype=b.dtype), b])[None]
            feat = feats[str(level)]
            if op == "roi_pool":
                ref = roiops.roi_pool(feat, roi, (5, 4), 2.0 ** -(level + 2))
            elif op == "prroi_pool":
                ref = roiops.prroi_pool(feat, roi, (5, 4), 2.0 ** -(level + 2), aligned)
            else:
                ref = roiops.roi_align(feat, roi, (5, 4), 2.0 ** -(level + 2), 2, aligned, pool_mode)
            torch.testing.assert_close(out[k], ref[0], rtol=0, atol=0)
            k += 1
    levels = pooler.levels(boxes, [(h, w)], feats)
    assert levels.tolist() == [expected_level(b, canonical_scale=56) for b in torch.cat(boxes).tolist()]
    assert set(levels.tolist()) == {0, 1, 2, 3}  # the test really covers every level


def test_gradients_reach_every_level():
    h, w = 64, 80
    feats = {k: v.requires_grad_() for k, v in fpn_features(h, w, channels=2, dtype=torch.float64).items()}
    boxes = [
        torch.tensor([[1.0, 2, 9, 12], [0, 0, 60, 60], [3, 4, 40, 30.5]], dtype=torch.float64),
        torch.tensor([[5.0, 5, 79, 63]], dtype=torch.float64),
    ]
    pooler = MultiScaleRoIAlign(NAMES, 3, 2, canonical_scale=56, aligned=True)
    inputs = tuple(feats[k] for k in NAMES)
    assert torch.autograd.gradcheck(
        lambda *fs: pooler(dict(zip(NAMES, fs)), boxes, [(h, w)]), inputs, eps=1e-6, atol=1e-5, fast_mode=True
    )


def test_single_level_and_empty():
    feat = torch.randn(2, 4, 16, 20)
    pooler = MultiScaleRoIAlign(["p3"], 7, 0, aligned=True)
    boxes = [torch.tensor([[1.0, 1, 50, 40]]), torch.zeros(0, 4)]
    out = pooler({"p3": feat, "other": torch.randn(2, 4, 8, 10)}, boxes, [(128, 160)])
    ref = roiops.roi_align(feat, torch.tensor([[0.0, 1, 1, 50, 40]]), 7, 0.125, 0, True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    empty = MultiScaleRoIAlign(NAMES, 7, 2)(fpn_features(64, 64), [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 64)])
    assert empty.shape == (0, 3, 7, 7)


def test_argument_errors():
    with pytest.raises(ValueError, match="op"):
        MultiScaleRoIAlign(NAMES, 7, 2, op="roi_warp")
    with pytest.raises(ValueError, match="pool_mode"):
        MultiScaleRoIAlign(NAMES, 7, 2, pool_mode="sum")
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleRoIAlign(["p9"], 7, 2)({"0": torch.zeros(1, 1, 4, 4)}, [torch.zeros(0, 4)], [(16, 16)])
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        MultiScaleRoIAlign(NAMES, 7, 2)(fpn_features(64, 64), [torch.zeros(3, 5)], [(64, 64)])


tv_ops = pytest.importorskip("torchvision.ops")


@pytest.mark.parametrize("sampling_ratio,output_size", [(2, 7), (0, 14), (-1, (3, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchvision(sampling_ratio, output_size, dtype):
    h, w = 200, 264
    feats = fpn_features(h, w, channels=5, dtype=dtype, seed=3)
    boxes = [random_boxes(60, h, w, 4, dtype), random_boxes(40, h - 20, w, 5, dtype)]
    shapes = [(h, w), (h - 20, w - 8)]
    ours = MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)(feats, boxes, shapes)
    theirs = tv_ops.MultiScaleRoIAlign(NAMES, output_size, sampling_ratio)(feats, boxes, shapes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_level_assignment_matches_torchvision():
    from torchvision.ops import poolers as tvp

    h, w = 512, 640
    feats = fpn_features(h, w, channels=1)
    boxes = [random_boxes(500, h, w, 6), random_boxes(300, h, w, 7)]
    # boxes exactly at the level boundaries too (sides 56, 112, 224, 448)
    boxes.append(torch.tensor([[0, 0, s, s] for s in (56.0, 112.0, 224.0, 448.0, 111.99, 224.01)]))
    pooler = MultiScaleRoIAlign(NAMES, 7, 2)
    ours = pooler.levels(boxes, [(h, w)], feats)
    scales, mapper = tvp._setup_scales([feats[k] for k in NAMES], [(h, w)], 224, 4)
    assert pooler.setup([feats[k] for k in NAMES], [(h, w)])[0] == scales
    assert torch.equal(ours, mapper(boxes))


def test_is_a_fully_initialized_torchvision_pooler():
    tv_ops = pytest.importorskip("torchvision.ops")
    ours = MultiScaleRoIAlign(NAMES, 7, 2)
    theirs = tv_ops.MultiScaleRoIAlign(NAMES, 7, 2)
    assert isinstance(ours, tv_ops.MultiScaleRoIAlign)
    # Every attribute torchvision's __init__ sets is there for its inherited methods.
    assert set(vars(theirs)) <= set(vars(ours)), set(vars(theirs)) - set(vars(ours))
    for name in ("featmap_names", "sampling_ratio", "canonical_scale", "canonical_level"):
        assert getattr(ours, name) == getattr(theirs, name)
    assert tuple(ours.output_size) == tuple(theirs.output_size)
