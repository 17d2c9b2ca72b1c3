"""roiops.compat: detectron2- and mmcv-style modules equal roiops.roi_align / roi_pool with the
corresponding arguments; mmcv max mode against the pure-PyTorch reference."""

import inspect

import pytest
import torch

import roiops
from roiops.compat.detectron2 import ROIAlign
from roiops.compat.mmcv import RoIAlign, RoIPool, roi_align, roi_pool
from roiops.reference import roi_align_reference, roi_pool_reference


def _data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 20, 24, generator=g, dtype=dtype)
    xy = torch.rand(12, 2, generator=g, dtype=dtype) * 80
    wh = torch.rand(12, 2, generator=g, dtype=dtype) * 60 + 0.5
    idx = torch.randint(0, 2, (12, 1), generator=g).to(dtype)
    return x, torch.cat([idx, xy, xy + wh], 1)


def test_signatures_follow_the_originals():
    assert list(inspect.signature(ROIAlign).parameters) == ["output_size", "spatial_scale", "sampling_ratio", "aligned"]
    assert inspect.signature(ROIAlign).parameters["aligned"].default is True
    p = inspect.signature(RoIAlign).parameters
    assert list(p)[:5] == ["output_size", "spatial_scale", "sampling_ratio", "pool_mode", "aligned"]
    assert (p["spatial_scale"].default, p["sampling_ratio"].default, p["pool_mode"].default, p["aligned"].default) == (
        1.0,
        0,
        "avg",
        True,
    )
    assert list(inspect.signature(RoIPool).parameters) == ["output_size", "spatial_scale"]


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_detectron2_style_equals_roi_align(aligned, sampling_ratio):
    x, rois = _data()
    m = ROIAlign((7, 5), 0.25, sampling_ratio, aligned)
    out = m(x, rois)
    torch.testing.assert_close(out, roiops.roi_align(x, rois, (7, 5), 0.25, sampling_ratio, aligned), rtol=0, atol=0)
    torch.testing.assert_close(out, roi_align_reference(x, rois, (7, 5), 0.25, sampling_ratio, aligned))
    assert "aligned=" in repr(m)
    # positional form as detectron2 code writes it: ROIAlign(output_size, spatial_scale, sampling_ratio)
    torch.testing.assert_close(
        ROIAlign(7, 0.25, sampling_ratio)(x, rois), roiops.roi_align(x, rois, 7, 0.25, sampling_ratio, True)
    )


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [True, False])
def test_mmcv_style_equals_roi_align(pool_mode, aligned):
    x, rois = _data(seed=1)
    m = RoIAlign(6, spatial_scale=0.25, sampling_ratio=2, pool_mode=pool_mode, aligned=aligned)
    out = m(x, rois)
    want = roiops.roi_align(x, rois, 6, 0.25, 2, aligned, pool_mode)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(out, roi_align_reference(x, rois, 6, 0.25, 2, aligned, pool_mode))
    torch.testing.assert_close(roi_align(x, rois, 6, 0.25, 2, pool_mode, aligned), out, rtol=0, atol=0)
    # mmcv defaults: adaptive sampling, avg, aligned
    torch.testing.assert_close(RoIAlign(4)(x, rois), roiops.roi_align(x, rois, 4, 1.0, 0, True, "avg"), rtol=0, atol=0)


def test_mmcv_max_mode_is_max_and_differentiable():
    x, rois = _data(seed=2)
    x.requires_grad_()
    m = RoIAlign(3, 0.5, 2, "max")
    out_max = m(x, rois)
    out_avg = RoIAlign(3, 0.5, 2, "avg")(x, rois)
    assert (out_max >= out_avg - 1e-12).all() and (out_max > out_avg).any()
    assert torch.autograd.gradcheck(
        lambda t: RoIAlign(3, 0.5, 2, "max")(t, rois), (x,), eps=1e-6, atol=1e-5, fast_mode=True
    )
    # hand case: one sample per bin, so max = avg = that sample
    feat = torch.arange(16.0).reshape(1, 1, 4, 4)
    got = RoIAlign(2, 1.0, 1, "max", aligned=True)(feat, torch.tensor([[0.0, 0, 0, 4, 4]]))
    # bin centres at image (1, 1), (1, 3), ... -> aligned feature coordinates (0.5, 0.5), ...: mean of 4 cells
    torch.testing.assert_close(got, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_mmcv_style_roi_pool():
    x, rois = _data(seed=3)
    out = RoIPool((4, 3), 0.5)(x, rois)
    torch.testing.assert_close(out, roiops.roi_pool(x, rois, (4, 3), 0.5), rtol=0, atol=0)
    torch.testing.assert_close(out, roi_pool_reference(x, rois, (4, 3), 0.5))
    torch.testing.assert_close(roi_pool(x, rois, (4, 3), 0.5), out, rtol=0, atol=0)


def test_rois_cast_to_feature_dtype():
    x, rois = _data(dtype=torch.float32, seed=4)
    want = roiops.roi_align(x, rois, 5, 0.25, 2, True)
    torch.testing.assert_close(ROIAlign(5, 0.25, 2)(x, rois.double()), want, rtol=0, atol=0)
    torch.testing.assert_close(RoIAlign(5, 0.25, 2)(x, rois.double()), want, rtol=0, atol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pool_mode"):
        RoIAlign(7, pool_mode="sum")
    with pytest.raises(ValueError, match="rois"):
        ROIAlign(7, 1.0, 0)(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4))


def test_half_features_keep_float32_boxes():
    # boxes are cast to float32/float64 features, never down to a half type (which would move them by
    # whole pixels): outside autocast that is a dtype error, under autocast the float32 kernels run
    x, rois = _data(dtype=torch.float32, seed=5)
    with pytest.raises(TypeError, match="boxes must have the dtype of input"):
        RoIAlign(5, 0.25, 2)(x.half(), rois)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ROIAlign(5, 0.25, 2)(x.bfloat16(), rois)
    want = roiops.roi_align(x.bfloat16().float(), rois, 5, 0.25, 2, True).bfloat16()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_old_flat_names_still_work_with_a_warning():
    import roiops.compat

    for name, home in [("ROIAlign", "detectron2"), ("RoIAlign", "mmcv"), ("roi_pool", "mmcv")]:
        with pytest.warns(DeprecationWarning, match=f"roiops.compat.{home}.{name}"):
            assert getattr(roiops.compat, name) is getattr(getattr(roiops.compat, home), name)
