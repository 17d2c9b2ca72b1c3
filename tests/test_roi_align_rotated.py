"""roi_align_rotated's own tests (the standard ones run through its row of tests/op_table.py):
hand-checked cases (angle 0 is roi_align; 90 degrees is roi_align on the map turned by torch.rot90;
a linear map gives its value at each bin centre), the peers' formulas written as plain loops (the
adapters against them), negative sizes, the sampling limit, hostile boxes, TorchScript and FX."""

import math
import warnings

import pytest
import torch

import roiops
from roiops import KernelValueError
from roiops.compat import detectron2, mmcv
from roiops.reference import roi_align_rotated_reference

from devices import CUDA_DEVICES, select
from helpers import input_grad, make_input


@pytest.fixture(params=CUDA_DEVICES)
def cuda_dev(request):
    return select(request)


# ---- hand-checked cases ------------------------------------------------------------------------

ROTATED = torch.tensor(
    [[0, 6.0, 5.0, 6.0, 4.0], [1, 9.3, 7.1, 5.5, 8.25], [0, 3.0, 10.0, 12.0, 3.0], [1, 7.5, 2.0, 2.5, 9.0]],
    dtype=torch.float64,
)  # (batch, centre x, centre y, width, height): every size at least one cell at scale 1


def _with_angle(boxes, angle):
    return torch.cat([boxes, torch.full_like(boxes[:, :1], angle)], dim=1)


def _axis_aligned(boxes):
    b, cx, cy, w, h = boxes.unbind(1)
    return torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_angle_zero_is_roi_align(dtype, sampling_ratio, aligned):
    x = make_input((2, 3, 14, 16), dtype, seed=1).requires_grad_(True)
    rotated = roiops.roi_align_rotated(x, _with_angle(ROTATED, 0.0).to(dtype), (3, 4), 1.0, sampling_ratio, aligned)
    plain = roiops.roi_align(x, _axis_aligned(ROTATED).to(dtype), (3, 4), 1.0, sampling_ratio, aligned)
    # The same samples, positions rounded in another order (centre +- half size vs. corner + size).
    torch.testing.assert_close(rotated, plain, rtol=0, atol=1e-6)
    g = torch.randn(rotated.shape, dtype=dtype)
    torch.testing.assert_close(input_grad(rotated, x, g), input_grad(plain, x, g), rtol=0, atol=1e-6)


@pytest.mark.parametrize("angle, clockwise", [(90.0, False), (-90.0, True)])
@pytest.mark.parametrize("sampling_ratio", [0, 3])
def test_ninety_degrees_is_roi_align_on_the_turned_map(angle, clockwise, sampling_ratio):
    # A box turned by +90 degrees reads the map at (y, x) = (cy - xx, cx + yy), (yy, xx) its own sample
    # offsets; the map turned clockwise, M = rot90(x, -1), has M(Y, X) = x(H - 1 - X, Y), so the same
    # samples are roi_align's on M over Y in cx +- h/2 and X in H - cy +- w/2 (box coordinates).
    x = make_input((2, 3, 14, 16), torch.float64, seed=2).requires_grad_(True)
    H = x.shape[2]
    rotated = roiops.roi_align_rotated(
        x, _with_angle(ROTATED, angle), (3, 4), 1.0, sampling_ratio, True, clockwise=clockwise
    )
    b, cx, cy, w, h = ROTATED.unbind(1)
    moved = torch.stack([b, H - cy - w / 2, cx - h / 2, H - cy + w / 2, cx + h / 2], dim=1)
    plain = roiops.roi_align(torch.rot90(x, -1, (2, 3)), moved, (3, 4), 1.0, sampling_ratio, True)
    torch.testing.assert_close(rotated, plain, rtol=0, atol=1e-9)
    g = torch.randn(rotated.shape, dtype=torch.float64)
    torch.testing.assert_close(input_grad(rotated, x, g), input_grad(plain, x, g), rtol=0, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, -125.0])
@pytest.mark.parametrize("clockwise", [False, True])
def test_a_linear_map_gives_its_value_at_each_bin_centre(angle, clockwise):
    # Bilinear sampling of a plane is exact away from the border, and a bin's samples sit symmetrically
    # about its centre: each bin is the plane at its turned centre, computed here by hand.
    H, W = 40, 40
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    x = (0.7 * ys - 1.3 * xs + 2.0)[None, None]
    cx, cy, w, h = 20.0, 18.5, 10.0, 6.0
    out = roiops.roi_align_rotated(
        x, torch.tensor([[0, cx, cy, w, h, angle]], dtype=torch.float64), (2, 3), 1.0, 2, True, clockwise
    )
    theta = math.radians(-angle if clockwise else angle)
    for ph in range(2):
        for pw in range(3):
            yy, xx = -h / 2 + (ph + 0.5) * h / 2, -w / 2 + (pw + 0.5) * w / 3
            y = yy * math.cos(theta) - xx * math.sin(theta) + cy - 0.5
            xc = yy * math.sin(theta) + xx * math.cos(theta) + cx - 0.5
            assert out[0, 0, ph, pw].item() == pytest.approx(0.7 * y - 1.3 * xc + 2.0, abs=1e-9)


def test_a_positive_angle_turns_the_box_counter_clockwise_on_the_image():
    # y points down: at +90 degrees the box's width axis points up the image, so along the output's
    # width the rows read decrease; clockwise=True turns it down.
    x = torch.arange(20, dtype=torch.float64)[None, None, :, None].expand(1, 1, 20, 20).contiguous()
    box = torch.tensor([[0, 10.0, 10.0, 8.0, 2.0, 90.0]], dtype=torch.float64)
    ccw = roiops.roi_align_rotated(x, box, (1, 2), 1.0, 2)[0, 0, 0]
    cw = roiops.roi_align_rotated(x, box, (1, 2), 1.0, 2, clockwise=True)[0, 0, 0]
    assert ccw[0] > ccw[1] and cw[0] < cw[1]
    torch.testing.assert_close(ccw, torch.tensor([11.5, 7.5], dtype=torch.float64))


def test_negative_sizes_turn_the_box_by_half_a_turn():
    # A fixed grid of a box of negative width and height is that of the box turned by 180 degrees; an
    # adaptive one has no samples (zeros); aligned=False counts them as one cell.
    x = make_input((1, 2, 12, 12), torch.float64, seed=3)
    neg = torch.tensor([[0, 6.0, 5.5, -4.0, -3.0, 20.0]], dtype=torch.float64)
    turned = torch.tensor([[0, 6.0, 5.5, 4.0, 3.0, 200.0]], dtype=torch.float64)
    torch.testing.assert_close(
        roiops.roi_align_rotated(x, neg, 2, 1.0, 2), roiops.roi_align_rotated(x, turned, 2, 1.0, 2), rtol=0, atol=1e-9
    )
    assert torch.count_nonzero(roiops.roi_align_rotated(x, neg, 2, 1.0, 0)) == 0
    unit = torch.tensor([[0, 6.0, 5.5, 1.0, 1.0, 20.0]], dtype=torch.float64)
    torch.testing.assert_close(
        roiops.roi_align_rotated(x, neg, 2, 1.0, 0, aligned=False),
        roiops.roi_align_rotated(x, unit, 2, 1.0, 0, aligned=False),
    )


# ---- the peers, as plain loops ---------------------------------------------------------------------


def _bilinear(plane, y, x):
    H, W = plane.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    p = plane.tolist()
    return (
        hy * hx * p[y_low][x_low]
        + hy * lx * p[y_low][x_high]
        + ly * hx * p[y_high][x_low]
        + ly * lx * p[y_high][x_high]
    )


def _peer_loops(x, rois, out_h, out_w, scale, sampling_ratio, aligned, theta_of):
    """The rotated RoIAlign loops as detectron2 and mmcv write them (docs/semantics.md): theta_of(roi)
    is the turn in radians (detectron2: degrees * pi / 180; mmcv: radians, negated if clockwise)."""
    out = torch.zeros(rois.shape[0], x.shape[1], out_h, out_w, dtype=torch.float64)
    for k, roi in enumerate(rois.tolist()):
        offset = 0.5 if aligned else 0.0
        cx, cy = roi[1] * scale - offset, roi[2] * scale - offset
        w, h = roi[3] * scale, roi[4] * scale
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        theta = theta_of(roi)
        bh, bw = h / out_h, w / out_w
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(h / out_h)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(w / out_w)
        count = max(gh * gw, 1)
        for c in range(x.shape[1]):
            plane = x[int(roi[0]), c]
            for ph in range(out_h):
                for pw in range(out_w):
                    total = 0.0
                    for iy in range(gh):
                        yy = -h / 2 + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = -w / 2 + pw * bw + (ix + 0.5) * bw / gw
                            y = yy * math.cos(theta) - xx * math.sin(theta) + cy
                            xs = yy * math.sin(theta) + xx * math.cos(theta) + cx
                            total += _bilinear(plane, y, xs)
                    out[k, c, ph, pw] = total / count
    return out


PEER_ROIS = torch.tensor(
    [
        [0, 7.0, 6.0, 6.0, 4.0, 25.0],
        [1, 3.0, 9.5, 9.0, 2.5, -70.0],
        [0, 12.0, 1.0, 5.0, 7.0, 135.0],
        [1, 6, 6, 0.5, 0.4, 10],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_detectron2_adapter_follows_detectron2(sampling_ratio):
    x = make_input((2, 2, 11, 13), torch.float64, seed=4)
    out = detectron2.ROIAlignRotated((2, 3), 0.5, sampling_ratio)(x, PEER_ROIS)
    want = _peer_loops(x, PEER_ROIS, 2, 3, 0.5, sampling_ratio, True, lambda r: r[5] * math.pi / 180.0)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert repr(detectron2.ROIAlignRotated(7, 0.25, 2)).startswith("ROIAlignRotated(output_size=(7, 7)")
    with pytest.raises(ValueError, match="rois"):
        detectron2.ROIAlignRotated(7, 0.25, 2)(x, PEER_ROIS[:, :5])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("clockwise", [False, True])
def test_mmcv_adapter_follows_mmcv(aligned, clockwise):
    x = make_input((2, 2, 11, 13), torch.float64, seed=5)
    rois = PEER_ROIS.clone()
    rois[:, 5] = torch.deg2rad(rois[:, 5])  # mmcv's angles are radians

    def theta_of(roi):
        return -roi[5] if clockwise else roi[5]

    want = _peer_loops(x, rois, 3, 2, 0.5, 0, aligned, theta_of)
    module = mmcv.RoIAlignRotated((3, 2), 0.5, 0, aligned, clockwise)
    torch.testing.assert_close(module(x, rois), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        mmcv.roi_align_rotated(x, rois, (3, 2), 0.5, 0, aligned, clockwise), want, rtol=0, atol=1e-12
    )
    assert f"clockwise={clockwise}" in repr(module)


def test_mmcv_old_keywords_still_work():
    x = make_input((1, 2, 10, 10), torch.float64, seed=6)
    rois = torch.tensor([[0, 5.0, 5.0, 4.0, 3.0, 0.5]], dtype=torch.float64)
    want = mmcv.roi_align_rotated(x, rois, 2, 1.0, 2)
    with pytest.warns(DeprecationWarning, match="sample_num"):
        got = mmcv.roi_align_rotated(x, rois, out_size=2, spatial_scale=1.0, sample_num=2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="out_size"):
        module = mmcv.RoIAlignRotated(out_size=2, sample_num=2)
    torch.testing.assert_close(module(x, rois), want, rtol=0, atol=0)
    with pytest.raises(TypeError, match="output_size"):
        mmcv.RoIAlignRotated()
    with pytest.raises(TypeError, match="sample_num"):
        mmcv.roi_align_rotated(x, rois, 2, sampling_ratio=2, sample_num=2)


def test_float32_adapters_agree_with_the_reference():
    x = make_input((2, 3, 11, 13), torch.float32, seed=7)
    rois = PEER_ROIS.float()
    ref = roi_align_rotated_reference(x, rois, 3, 0.5, 0)
    torch.testing.assert_close(detectron2.ROIAlignRotated(3, 0.5, 0)(x, rois), ref, rtol=1e-5, atol=1e-6)
    radians = rois.clone()
    radians[:, 5] = torch.deg2rad(radians[:, 5])
    # (an angle through radians and back is within one float32 unit of the original)
    torch.testing.assert_close(mmcv.RoIAlignRotated(3, 0.5)(x, radians), ref, rtol=1e-5, atol=1e-5)


# ---- validation, limits and hostile boxes ------------------------------------------------------


def test_rois_of_the_wrong_width_are_refused():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"Tensor\[K, 6\] \(batch index, centre x, centre y, width, height, angle\)"):
        roiops.roi_align_rotated(x, torch.zeros(2, 5), 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a Tensor\[L, 5\]"):
        roiops.roi_align_rotated(x, [torch.zeros(2, 4)], 2)
    with pytest.raises(RuntimeError, match=r"boxes must have shape \[K, 6\]"):
        torch.ops.roiops.roi_align_rotated(x, torch.zeros(2, 5), 1.0, 2, 2, 0, True, False)
    with pytest.raises(TypeError, match="quantized"):
        roiops.roi_align_rotated(torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), torch.zeros(0, 6), 2)


def test_a_list_of_boxes_per_image_is_the_tensor_form():
    x = make_input((2, 3, 9, 9), seed=8)
    rois = torch.tensor([[0, 4.0, 4.0, 3.0, 2.0, 10.0], [1, 5.0, 3.0, 4.0, 4.0, -50.0], [1, 2.0, 2.0, 2.0, 3.0, 0.0]])
    listed = [rois[:1, 1:], rois[1:, 1:]]
    torch.testing.assert_close(
        roiops.roi_align_rotated(x, listed, 2), roiops.roi_align_rotated(x, rois, 2), rtol=0, atol=0
    )
    assert roiops.roi_align_rotated(x, [], 2).shape == (0, 3, 2, 2)


HUGE = torch.tensor([[0, 30.0, 30.0, 28000.0, 26000.0, 30.0]])


def test_absurd_adaptive_grids_are_refused_naming_sampling_ratio():
    x = torch.randn(1, 4, 64, 64)
    limit = roiops._C.limits["max_rotated_samples_per_box"]
    with pytest.raises(KernelValueError, match=rf"sampling_ratio <= 0.*limit {limit}.*positive sampling_ratio"):
        roiops.roi_align_rotated(x, HUGE, 7)
    out = roiops.roi_align_rotated(x, HUGE, 7, sampling_ratio=2)  # a fixed grid costs what it says
    assert out.shape == (1, 4, 7, 7) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="sampling_ratio"):
        roiops.roi_align_rotated(x, HUGE, 7, sampling_ratio=5000)


def test_devices_refuse_absurd_grids_and_bad_boxes(cuda_dev):
    # Sync-free default: a NaN row and no gradient; with the box check on, the CPU's errors.
    x = cuda_dev.to(torch.randn(1, 4, 64, 64))
    ok = torch.tensor([[0, 20.0, 20.0, 8.0, 6.0, 15.0]])
    bad_rows = [
        HUGE,
        torch.tensor([[0, float("nan"), 20.0, 8.0, 6.0, 15.0]]),
        torch.tensor([[0, 20.0, 20.0, 8.0, 6.0, float("inf")]]),
    ]
    op = cuda_dev.ops.roi_align_rotated
    for bad in bad_rows:
        rois = cuda_dev.to(torch.cat([ok, bad]))
        out, _ = op(x, rois, 1.0, 7, 7, 0, True, False)
        assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
        grad = cuda_dev.ops._roi_align_rotated_backward(
            torch.ones_like(out), rois, _, 1.0, 7, 7, 1, 4, 64, 64, 0, True, False, True
        )
        torch.testing.assert_close(
            grad,
            torch.ops.roiops._roi_align_rotated_backward(
                torch.ones(1, 4, 7, 7), ok, _, 1.0, 7, 7, 1, 4, 64, 64, 0, True, False, True
            ),
        )
        with cuda_dev.box_checks(), pytest.raises(RuntimeError, match="roi_align_rotated: .*box 1"):
            op(x, rois, 1.0, 7, 7, 0, True, False)


def test_cpu_refuses_non_finite_boxes():
    x = torch.randn(1, 2, 8, 8)
    for column in range(1, 6):
        rois = torch.tensor([[0, 4.0, 4.0, 3.0, 2.0, 10.0]])
        rois[0, column] = float("inf") if column % 2 else float("nan")
        with pytest.raises(KernelValueError, match=f"boxes must be finite.*column {column}"):
            roiops.roi_align_rotated(x, rois, 2)


def test_deterministic_device_backward_is_reproducible(cuda_dev):
    x = make_input((2, 8, 12, 12), seed=9)
    rois = torch.tensor([[0, 6.0, 6.0, 8.0, 5.0, 33.0]] * 6 + [[1, 5.0, 7.0, 9.0, 9.0, -70.0]] * 6)
    out, arg = cuda_dev.ops.roi_align_rotated(cuda_dev.to(x), cuda_dev.to(rois), 1.0, 3, 3, 2, True, False)
    grad = cuda_dev.to(torch.randn(out.shape))
    args = (1.0, 3, 3, 2, 8, 12, 12, 2, True, False, True)
    first = cuda_dev.ops._roi_align_rotated_backward(grad, cuda_dev.to(rois), arg, *args)
    for _ in range(3):
        again = cuda_dev.ops._roi_align_rotated_backward(grad, cuda_dev.to(rois), arg, *args)
        assert torch.equal(first, again)


# ---- TorchScript and FX ------------------------------------------------------------------------


def test_scripted_modules_equal_eager():
    x = make_input((2, 3, 10, 10), seed=10)
    rois = torch.tensor([[0, 5.0, 5.0, 4.0, 3.0, 30.0], [1, 4.0, 6.0, 5.0, 2.0, -10.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in (
            roiops.RoIAlignRotated(2, 1.0, 2),
            detectron2.ROIAlignRotated(2, 1.0, 2),
            mmcv.RoIAlignRotated(2),
        ):
            scripted = torch.jit.script(module)
            torch.testing.assert_close(scripted(x, rois), module(x, rois), rtol=0, atol=0)


def test_fx_keeps_the_op_a_leaf():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = roiops.RoIAlignRotated(2, 0.5)

        def forward(self, x, rois):
            return self.pool(x, rois) + roiops.roi_align_rotated(x, rois, 2, 0.5, 2)

    gm = torch.fx.symbolic_trace(Head())
    leaves = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert sum(getattr(t, "__name__", "") == "roi_align_rotated" for t in leaves) == 2, leaves
    x = make_input((1, 2, 8, 8), seed=11)
    rois = torch.tensor([[0, 6.0, 6.0, 5.0, 4.0, 45.0]])
    torch.testing.assert_close(gm(x, rois), Head()(x, rois), rtol=0, atol=0)
