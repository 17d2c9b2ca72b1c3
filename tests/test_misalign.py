"""Tests of the misalignment benchmark (the package roiops/bench/misalign/).

Every expected value is recomputed here from the rules in docs/semantics.md (C rounding, floor/ceil bin edges,
RoIAlign's sample grid) or by brute-force numeric integration, not read back from the module.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

import roiops  # noqa: E402
from roiops.bench.misalign import data as bdata  # noqa: E402
from roiops.bench.misalign import level1_geometry as geo  # noqa: E402
from roiops.bench.misalign import level2_features as l2  # noqa: E402


def c_round(x):  # C round(): half away from zero, written independently of the module
    return math.copysign(math.floor(abs(x) + 0.5), x)


def roipool_rule(x1, x2, stride, bins, size):
    """Half-open cell ranges of RoIPool's bins along one axis, straight from docs/semantics.md."""
    a, b = int(c_round(x1 / stride)), int(c_round(x2 / stride))
    roi = max(b - a + 1, 1)
    bw = roi / bins
    out = []
    for p in range(bins):
        lo = min(max(math.floor(p * bw) + a, 0), size)
        hi = min(max(math.ceil((p + 1) * bw) + a, 0), size)
        out.append((lo, hi))
    return out


# ----------------------------------------------------------------------------------------- level 1
def test_article_example_floor_description():
    ex = geo.article_example()
    assert ex["box_cells"] == pytest.approx(665 / 32) == pytest.approx(20.78125)
    fl = ex["floor"]
    assert fl["box_cells"] == 20
    assert fl["box_err_px"] == pytest.approx((665 / 32 - 20) * 32) == pytest.approx(25.0)
    assert fl["bin_cells"] == pytest.approx(20 / 7)
    assert fl["bin_cells_q"] == 2
    assert fl["bin_err_px"] == pytest.approx((20 / 7 - 2) * 32)
    assert fl["bins_cells"] == [(2 * i, 2 * i + 2) for i in range(7)]
    assert fl["region_px"] == (0, 14 * 32)
    # bin i covers [64 i, 64 i + 64) px; the true bin i is [95 i, 95 (i + 1)) px: centre error 31 i + 15.5
    assert fl["centre_err_px"] == pytest.approx([abs((64 * i + 32) - (95 * i + 47.5)) for i in range(7)])


def test_article_example_real_rule():
    ex = geo.article_example()
    rl = ex["real"]
    assert rl["x2_cells"] == 21  # round(20.78) = 21, not floor's 20
    assert rl["roi_cells"] == 22  # inclusive end
    assert rl["bin_cells"] == pytest.approx(22 / 7)
    expected = [(math.floor(p * 22 / 7), math.ceil((p + 1) * 22 / 7)) for p in range(7)]
    assert rl["bins_cells"] == expected  # read from roiops.roi_pool by the module
    assert rl["region_px"] == (0, 22 * 32)
    assert rl["right_edge_err_px"] == 22 * 32 - 665
    assert ex["roialign"]["centre_err_px"] == [0.0] * 7


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_roipool_bins_match_the_rule(stride):
    g = torch.Generator().manual_seed(stride)
    boxes = geo.random_boxes(40, 3 * stride, g, lo=stride, span=2 * stride)
    # exact half-cell coordinates, where C rounding and Python's round() differ
    boxes = torch.cat(
        [boxes, torch.tensor([[2.5 * stride, 0.5 * stride, 6.5 * stride, 4.5 * stride]], dtype=torch.float64)]
    )
    size = 12 + 4 * 32 // stride * 4
    x0, x1, y0, y1, ne = geo.roipool_bins(boxes, stride, 7, (size, size))
    for k, b in enumerate(boxes.tolist()):
        rx = roipool_rule(b[0], b[2], stride, 7, size)
        ry = roipool_rule(b[1], b[3], stride, 7, size)
        assert [(int(a), int(c)) for a, c in zip(x0[k].tolist(), x1[k].tolist())] == rx
        assert [(int(a), int(c)) for a, c in zip(y0[k].tolist(), y1[k].tolist())] == ry
        assert bool(ne[k].all())
    assert int(x0[-1, 0]) == 3  # round(2.5) = 3 under C rounding (Python would give 2)


def test_roialign_aligned_geometric_error_is_zero():
    g = torch.Generator().manual_seed(0)
    for stride in (4, 32):
        for size in (16, 200):
            boxes = geo.random_boxes(50, size, g)
            met = geo.geometry_metrics(boxes, *geo.roialign_bins(boxes, stride, 7, aligned=True), None, 7)
            assert met["centre_err"] < 1e-9 and met["edge_err"] < 1e-9
            assert met["bin_iou"] == pytest.approx(1.0) and met["region_iou"] == pytest.approx(1.0)


def test_roialign_not_aligned_is_a_half_cell_shift():
    g = torch.Generator().manual_seed(1)
    boxes = geo.random_boxes(50, 128, g)
    met = geo.geometry_metrics(boxes, *geo.roialign_bins(boxes, 16, 7, aligned=False), None, 7)
    assert met["centre_err"] == pytest.approx(8.0)
    assert met["centre_spread"] < 1e-9  # constant: the same for every box


def test_roialign_bin_centres_agree_with_the_operator():
    """The bins the module draws for RoIAlign have the centres roiops.roi_align samples: pooled from a map
    holding each cell's image-space centre (a linear function, so bilinear sampling is exact)."""
    stride, n = 8, 60
    c = (torch.arange(n, dtype=torch.float64) + 0.5) * stride
    feat = torch.stack([c.expand(n, n), c[:, None].expand(n, n)])[None]
    g = torch.Generator().manual_seed(2)
    boxes = geo.random_boxes(20, 64, g, lo=40, span=40)
    rois = torch.cat([torch.zeros(20, 1, dtype=torch.float64), boxes], 1)
    for aligned in (True, False):
        out = roiops.roi_align(feat, rois, 7, 1.0 / stride, 2, aligned)
        x0, x1, y0, y1 = geo.roialign_bins(boxes, stride, 7, aligned)
        torch.testing.assert_close(out[:, 0, 0, :], (x0 + x1) / 2)
        torch.testing.assert_close(out[:, 1, :, 0], (y0 + y1) / 2)


def test_roipool_geometry_error_grows_with_stride():
    res = geo.run_level1(n_boxes=30)
    err = {(r["stride"], r["op"]): [] for r in res["rows"]}
    for r in res["rows"]:
        err[(r["stride"], r["op"])].append(r["centre_err"])
    means = [np.mean(err[(s, "RoIPool")]) for s in geo.STRIDES]
    assert all(a < b for a, b in zip(means, means[1:]))
    assert max(np.mean(err[(s, "RoIAlign aligned=True")]) for s in geo.STRIDES) < 1e-9


# ----------------------------------------------------------------------------------------- level 2
def _fine_mean(f, x0, x1, y0, y1, n=400):
    xs = x0 + (np.arange(n) + 0.5) / n * (x1 - x0)
    ys = y0 + (np.arange(n) + 0.5) / n * (y1 - y0)
    return f(xs[None, :], ys[:, None]).mean()


def test_cell_average_map_is_the_cell_mean():
    per = l2.Periodic(period=40.0)
    stride = 16
    feat = l2.cell_average_map(stride, 6, per)[0]
    f = lambda x, y: np.sin(per.w * x + per.px) * np.sin(per.w * y + per.py)  # noqa: E731
    for i, j in [(0, 0), (2, 5), (5, 3)]:
        x0, y0 = j * stride, i * stride
        assert feat[0, i, j].item() == pytest.approx(
            _fine_mean(lambda x, y: x + 0 * y, x0, x0 + stride, y0, y0 + stride)
        )
        assert feat[1, i, j].item() == pytest.approx(
            _fine_mean(lambda x, y: y + 0 * x, x0, x0 + stride, y0, y0 + stride)
        )
        assert feat[2, i, j].item() == pytest.approx(_fine_mean(f, x0, x0 + stride, y0, y0 + stride), abs=1e-5)


def test_periodic_bin_mean_and_max_closed_forms():
    per = l2.Periodic(period=37.0, px=0.7, py=-0.4)
    f = lambda x, y: np.sin(per.w * x + per.px) * np.sin(per.w * y + per.py)  # noqa: E731
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0 = rng.uniform(0, 100, 2)
        x1, y1 = x0 + rng.uniform(0.5, 60), y0 + rng.uniform(0.5, 60)
        t = [torch.tensor([v], dtype=torch.float64) for v in (x0, x1, y0, y1)]
        assert per.mean(*t).item() == pytest.approx(_fine_mean(f, x0, x1, y0, y1), abs=2e-5)
        xs, ys = np.linspace(x0, x1, 2001), np.linspace(y0, y1, 2001)
        assert per.max(*t).item() == pytest.approx(f(xs[None, :], ys[:, None]).max(), abs=1e-4)


def test_pool_bins_avg_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 2, 20, 20, generator=g, dtype=torch.float64)
    boxes = geo.random_boxes(6, 40, g, lo=8, span=16)
    out = l2._pool_bins_avg(feat, boxes, 4, 7)
    for k, b in enumerate(boxes.tolist()):
        rx, ry = roipool_rule(b[0], b[2], 4, 7, 20), roipool_rule(b[1], b[3], 4, 7, 20)
        for i, (ya, yb) in enumerate(ry):
            for j, (xa, xb) in enumerate(rx):
                torch.testing.assert_close(out[k, :, i, j], feat[0, :, ya:yb, xa:xb].mean(dim=(1, 2)))


def test_level2_roialign_aligned_avg_is_exact_for_f_equals_x():
    res = l2.run_level2(n_boxes=10)
    for r in res["rows"]:
        if r["op"].startswith("RoIAlign avg aligned=True"):
            assert r["err_px"] < 1e-9, r
        if r["op"] == "RoIPool (max)":
            assert r["err_px"] > 0.1 * r["stride"]


# ----------------------------------------------------------------------------------------- helpers, data
def test_c_round():
    assert geo.c_round(2.5) == 3 and geo.c_round(-2.5) == -3 and geo.c_round(20.78125) == 21 and geo.c_round(0.49) == 0


def test_synthetic_shapes_are_seeded_and_instances_disjoint():
    a = bdata.make_shapes(3, size=96, seed=7, max_diameter=60)
    b = bdata.make_shapes(3, size=96, seed=7, max_diameter=60)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.image, sb.image)
        assert len(sa.instances) == len(sb.instances) > 0
        total = sum(i.mask.astype(int) for i in sa.instances)
        assert total.max() == 1  # occlusion: every pixel belongs to at most one instance
        for inst in sa.instances:
            x1, y1, x2, y2 = inst.box()
            ys, xs = np.nonzero(inst.mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 1 <= inst.label <= len(bdata.SHAPE_CLASSES)


def test_stardist_missing_raises_with_a_message(monkeypatch):
    monkeypatch.setattr(bdata, "stardist_paths", lambda: None)
    with pytest.raises(FileNotFoundError, match="stardist"):
        bdata.load_stardist()


def test_upscale_keeps_pixel_centres_and_scales_boxes():
    rng = np.random.default_rng(0)
    image = rng.random((6, 5)).astype(np.float32)
    labels = np.zeros((6, 5), np.int32)
    labels[1:4, 2:4] = 7
    big, big_labels = bdata.upscale(image, labels, 3)
    assert big.shape == big_labels.shape == (18, 15)
    # pixel j covers [j, j+1): its centre j + 0.5 is the centre of upscaled pixel 3j + 1, where bilinear is exact
    np.testing.assert_allclose(big[1::3, 1::3], image, atol=1e-6)
    assert (big_labels[::3, ::3] == labels).all() and (big_labels[2::3, 2::3] == labels).all()
    small_box = bdata.Instance(labels == 7, 1).box()
    assert bdata.Instance(big_labels == 7, 1).box() == tuple(3 * v for v in small_box)


def _stardist_labels():
    tifffile = pytest.importorskip("tifffile")
    paths = bdata.stardist_paths()
    if paths is None:
        pytest.skip("stardist is not installed")
    return tifffile.imread(paths[1]).astype(np.int64)


def test_stardist_tiles_score_every_test_nucleus_once_and_whole():
    labels = _stardist_labels()
    train, test = bdata.stardist_tiles(scale=2, crop=96, n_crops=5, tile=128, seed=1)
    h, w = labels.shape
    # the test nuclei: those with at least 45% of their area in the right half, each whole (4x its area there)
    full = np.bincount(labels.ravel())
    right = np.bincount(labels[:, w // 2 :].ravel(), minlength=len(full))
    expected = sorted(4 * int(right[i]) for i in range(1, len(full)) if right[i] and right[i] >= 0.45 * full[i])
    assert sorted(inst.area for t in test for inst in t.instances) == expected
    assert len(test) == (2 * h // 128) * (w // 128)  # the right half at 2x: (1024 / 128) x (512 / 128) cores
    assert len({t.image.shape for t in test}) == 1 and test[0].image.shape[0] > 128
    assert len(train) == 5
    for s in train + test:
        assert s.image.dtype == np.float32 and 0.0 <= s.image.min() and s.image.max() <= 1.0
        if s.instances:
            total = sum(i.mask.astype(int) for i in s.instances)
            assert total.max() == 1 and min(i.area for i in s.instances) >= 12
    assert all(s.image.shape == (96, 96) for s in train) and sum(len(s.instances) for s in train) > 0
