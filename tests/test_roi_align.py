"""roiops.roi_align against the pure-PyTorch reference (forward and input gradient), gradcheck,
torchvision, opcheck and torch.compile."""

import zlib

import pytest
import torch

import roiops
from roiops.reference import roi_align_reference

from helpers import BOX_KINDS, LAYOUTS, input_grad, make_input, make_rois, to_layout, tolerances

SCALES = (1.0, 0.5, 0.25, 1.0 / 16)
SAMPLING = (-1, 0, 1, 2, 3)


def _is_cl(t):
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _check_vs_reference(x, rois, output_size, scale, sr, aligned, mode, seed=0, ref_dtype=None):
    """Runs the op and the reference on the same values; compares output and input gradient."""
    tol = tolerances(x.dtype)
    x = x.detach().requires_grad_(True)
    out = roiops.roi_align(x, rois, output_size, scale, sr, aligned, mode)
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(x.dtype)
    # The upstream gradient in the output's layout (as a following channels-last layer would give it).
    grad_out = grad_out.contiguous(memory_format=torch.channels_last) if _is_cl(out) else grad_out
    gx = input_grad(out, x, grad_out)

    rd = ref_dtype or x.dtype
    xr = x.detach().to(rd).requires_grad_(True)
    ref = roi_align_reference(xr, rois.to(rd), output_size, scale, sr, aligned, mode)
    gref = input_grad(ref, xr, grad_out.to(rd))

    assert out.shape == ref.shape
    assert out.dtype == x.dtype and gx.dtype == x.dtype
    torch.testing.assert_close(out.to(rd), ref, **tol)
    torch.testing.assert_close(gx.to(rd), gref, **tol)
    return out, gx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"scale{s:g}")
@pytest.mark.parametrize("sr", SAMPLING, ids=lambda s: f"sr{s}")
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_random_vs_reference(dtype, scale, sr, aligned, mode):
    seed = zlib.crc32(repr((str(dtype), scale, sr, aligned, mode)).encode()) % 10000
    x = make_input((2, 3, 9, 11), dtype, seed=seed)
    rois = make_rois(20, 2, 9, 11, scale, "mixed", dtype, seed=seed)
    _check_vs_reference(x, rois, (3, 4), scale, sr, aligned, mode, seed)


@pytest.mark.parametrize("kind", BOX_KINDS)
@pytest.mark.parametrize("sr", [-1, 2], ids=lambda s: f"sr{s}")
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_box_kinds_vs_reference(kind, sr, aligned, mode):
    x = make_input((2, 4, 8, 10), torch.float32, seed=3)
    rois = make_rois(12, 2, 8, 10, 0.5, kind, torch.float32, seed=BOX_KINDS.index(kind))
    out, gx = _check_vs_reference(x, rois, (2, 3), 0.5, sr, aligned, mode)
    if kind == "outside":
        assert torch.count_nonzero(out) == 0 and torch.count_nonzero(gx) == 0


@pytest.mark.parametrize(
    "shape,output_size",
    [
        ((1, 1, 1, 1), 1),
        ((1, 2, 1, 7), (2, 3)),
        ((3, 1, 6, 1), (3, 1)),
        ((2, 5, 13, 7), 7),
        ((1, 3, 16, 16), (14, 14)),
        ((4, 2, 5, 9), (1, 5)),
    ],
)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_shapes_vs_reference(shape, output_size, mode):
    N, C, H, W = shape
    x = make_input(shape, torch.float32, seed=H * W)
    rois = make_rois(10, N, H, W, 0.25, "mixed", torch.float32, seed=C)
    for aligned in (False, True):
        _check_vs_reference(x, rois, output_size, 0.25, -1, aligned, mode)
        _check_vs_reference(x, rois, output_size, 0.25, 2, aligned, mode)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("sr", [-1, 2], ids=lambda s: f"sr{s}")
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_half_dtypes_vs_float32_reference(dtype, sr, aligned, mode):
    # The reference runs in float32 on the same (rounded) inputs and boxes.
    x = make_input((2, 3, 9, 11), dtype, seed=11)
    rois = make_rois(16, 2, 9, 11, 0.5, "mixed", dtype, seed=12)
    _check_vs_reference(x, rois, (3, 3), 0.5, sr, aligned, mode, ref_dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sr", [2, 40], ids=["one_round", "rounds"])
def test_half_backward_is_the_float32_backward_rounded_once(dtype, layout, mode, sr, restore_threads):
    """A half-type backward accumulates in float32 and rounds once: bit for bit the float32 backward of
    the same values, rounded. An NCHW one converts channel by channel while the whole scatter fits in
    one round of taps (sr 2), and from a full float32 buffer when it takes several (sr 40: 2^17 taps)."""
    x = make_input((2, 20, 9, 11), dtype, layout=layout, seed=41)
    rois = make_rois(8, 2, 9, 11, 0.5, "mixed", dtype, seed=42)
    out, argmax = torch.ops.roiops.roi_align(x.float(), rois.float(), 0.5, 7, 7, sr, True, mode)
    grad = to_layout(torch.randn(out.shape, generator=torch.Generator().manual_seed(43)).to(dtype), layout)
    args = (0.5, 7, 7, 2, 20, 9, 11, sr, True, mode, False)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        half = torch.ops.roiops._roi_align_backward(grad, rois, argmax, *args)
        full = torch.ops.roiops._roi_align_backward(grad.float(), rois.float(), argmax, *args)
        assert half.dtype == dtype
        torch.testing.assert_close(half, full.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize(
    "case",
    [
        # a box 7.6e7 cells tall: float rounding puts samples rows past start + bins x bin size
        dict(box=[0, 0.0, -75709057.31938897, 1.0, 8.617400137725447], size=(14, 1), sr=-1, aligned=False, g=1.0, h=40),
        # a zero-height box at y = -1: its taps on row 1 have weight 0, and 0 x inf is NaN there (8 rows: on 2
        # threads, bands of 1 row)
        dict(box=[0, 0.5, -0.5, 2.5, -0.5], size=(2, 2), sr=2, aligned=True, g=float("inf"), h=8),
    ],
    ids=["huge_box", "zero_weight_tap"],
)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_channels_last_backward_bands_get_every_tap(case, mode, restore_threads):
    """The channels-last backward visits, per band of rows, the RoIs whose taps touch it: each RoI's
    rows come from its taps, not from its box (which missed rows in both cases). Every layout and
    thread count must give the NCHW gradient, NaN where it has NaN, and that is the reference's (the
    reference is checked on the small case only: the huge box's adaptive grid takes it minutes)."""
    x = torch.zeros(1, 3, case["h"], 4)
    x[:, :, case["h"] * 3 // 10, :] = 5.0
    rois = torch.tensor([case["box"]])
    args = (case["size"], 1.0, case["sr"], case["aligned"], mode)

    def grad_of(layout):
        xi = to_layout(x, layout).detach().requires_grad_(True)
        out = roiops.roi_align(xi, rois, *args)
        out.backward(to_layout(torch.full(out.shape, case["g"]), layout))
        return xi.grad

    torch.set_num_threads(1)
    expected = grad_of("contiguous")
    assert torch.count_nonzero(expected) > 0
    if case["g"] != 1.0:
        x_ref = x.clone().requires_grad_(True)
        ref = roi_align_reference(x_ref, rois, *args)
        ref.backward(torch.full(ref.shape, case["g"]))
        torch.testing.assert_close(expected, x_ref.grad, rtol=0, atol=0, equal_nan=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for layout in ("contiguous", "channels_last"):
            torch.testing.assert_close(grad_of(layout), expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("rois", [3, 60], ids=["sparse_planes", "dense_packed"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_nchw_forward_planes_and_channel_blocks_vs_reference(rois, mode, dtype, restore_threads):
    """An NCHW forward pools few samples plane by plane and many (an eighth of the map's cells or more)
    from channel blocks packed channels-last (70 channels: blocks of 32, 32 and 6); same values either way."""
    x = make_input((2, 70, 24, 30), dtype, seed=61)
    boxes = make_rois(rois, 2, 24, 30, 1.0, "mixed", dtype, seed=62)
    ref_dtype = torch.float32 if dtype == torch.bfloat16 else None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _check_vs_reference(x, boxes, (3, 4), 1.0, 2, True, mode, ref_dtype=ref_dtype)
        out = roiops.roi_align(x, boxes, (3, 4), 1.0, 2, True, mode)
        torch.testing.assert_close(
            out, roiops.roi_align(to_layout(x, "channels_last"), boxes, (3, 4), 1.0, 2, True, mode), rtol=0, atol=0
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backward_is_the_same_in_both_layouts_for_any_thread_count(dtype, mode, restore_threads):
    """The NCHW backward writes the gradient channel by channel, the channels-last one band of rows by
    band (a 13-row map: bands of 3-7 rows, so taps fall on both sides of band edges). Both add each
    cell's contributions in (RoI, bin, sample, tap) order: the same bits, whatever the thread count."""
    x = make_input((2, 20, 13, 11), dtype, seed=51)
    rois = make_rois(40, 2, 13, 11, 1.0, "mixed", dtype, seed=52)
    grad = torch.randn(40, 20, 3, 4, generator=torch.Generator().manual_seed(53)).to(dtype)
    args = (1.0, 3, 4, 2, 20, 13, 11, 2, True, mode, False)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        for layout in ("contiguous", "channels_last"):
            out, argmax = torch.ops.roiops.roi_align(to_layout(x, layout), rois, 1.0, 3, 4, 2, True, mode)
            results.append(torch.ops.roiops._roi_align_backward(to_layout(grad, layout), rois, argmax, *args))
    assert results[1].is_contiguous(memory_format=torch.channels_last)
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_layouts_vs_reference(layout, mode, dtype):
    x = make_input((2, 5, 7, 9), dtype, layout=layout, seed=21)
    rois = make_rois(14, 2, 7, 9, 1.0, "mixed", dtype, seed=22)
    ref_dtype = torch.float32 if dtype == torch.bfloat16 else None
    out, gx = _check_vs_reference(x, rois, (2, 3), 1.0, -1, True, mode, ref_dtype=ref_dtype)
    _check_vs_reference(x, rois, (2, 3), 1.0, 2, False, mode, ref_dtype=ref_dtype)
    # Layout rule: channels-last input gives a channels-last output; everything else NCHW-contiguous.
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("in_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_grad_output_layouts(in_layout, mode):
    # Any layout of the upstream gradient (NCHW, channels-last, strided view, expanded) must give the
    # same input gradient, whatever the input layout.
    x = make_input((2, 4, 6, 7), layout=in_layout, seed=5).requires_grad_(True)
    rois = make_rois(9, 2, 6, 7, 1.0, "partial", seed=6)
    out = roiops.roi_align(x, rois, 3, 1.0, 2, True, mode)
    grad_out = torch.randn(out.shape)
    expected = input_grad(out, x, grad_out)
    xr = x.detach().requires_grad_(True)
    torch.testing.assert_close(
        expected, input_grad(roi_align_reference(xr, rois, 3, 1.0, 2, True, mode), xr, grad_out), rtol=1e-5, atol=1e-5
    )
    variants = [
        to_layout(grad_out, "channels_last"),
        to_layout(grad_out, "sliced"),
        to_layout(grad_out, "transposed"),
    ]
    for g in variants:
        out = roiops.roi_align(x, rois, 3, 1.0, 2, True, mode)
        torch.testing.assert_close(input_grad(out, x, g), expected, rtol=1e-6, atol=1e-6)
    out = roiops.roi_align(x, rois, 3, 1.0, 2, True, mode)
    out.sum().backward()  # an expanded (stride-0) upstream gradient
    torch.testing.assert_close(
        x.grad,
        input_grad(roi_align_reference(xr, rois, 3, 1.0, 2, True, mode), xr, torch.ones(out.shape)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_many_rois_one_image():
    # Many RoIs on one image, so the backward accumulates from many RoIs into the same cells.
    x = make_input((1, 3, 12, 12), seed=8)
    rois = make_rois(200, 1, 12, 12, 1.0, "inside", seed=9)
    for mode in ("avg", "max"):
        _check_vs_reference(x, rois, 4, 1.0, -1, True, mode)


# ---- gradcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gradcheck(aligned, mode, restore_threads):
    # Hundreds of tiny calls: one thread avoids thread-pool overhead on a busy machine.
    torch.set_num_threads(1)
    # Distinct, well separated values keep max-mode ties away; roi_align is linear in input otherwise.
    x = make_input((1, 2, 6, 7), torch.float64, seed=31, distinct=True).requires_grad_(True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.6, 5.2], [0, -2.1, 1.3, 3.4, 7.9], [0, 2.2, -0.6, 9.1, 3.3]], dtype=torch.float64
    )
    for sr in (-1, 2):
        assert torch.autograd.gradcheck(
            lambda t: roiops.roi_align(t, rois, (2, 3), 1.0, sr, aligned, mode), (x,), eps=1e-6, atol=1e-6
        )


# ---- torchvision -------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("sr", [-1, 0, 1, 2], ids=lambda s: f"sr{s}")
@pytest.mark.parametrize("kind", ["inside", "partial", "outside", "zero", "mixed"])
def test_vs_torchvision(aligned, sr, kind):
    tv_ops = pytest.importorskip("torchvision.ops")
    x = make_input((2, 3, 10, 12), torch.float32, seed=41)
    rois = make_rois(15, 2, 10, 12, 0.5, kind, seed=42 + sr)
    if kind == "mixed" and aligned and sr <= 0:
        # torchvision fails on inverted boxes with aligned=True and adaptive sampling (negative grid).
        rois[:, 3] = torch.maximum(rois[:, 1], rois[:, 3])
        rois[:, 4] = torch.maximum(rois[:, 2], rois[:, 4])
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    out = roiops.roi_align(xa, rois, (3, 4), 0.5, sr, aligned)
    ref = tv_ops.roi_align(xb, rois, (3, 4), 0.5, sr, aligned)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(43))
    torch.testing.assert_close(input_grad(out, xa, grad_out), input_grad(ref, xb, grad_out), rtol=1e-5, atol=1e-5)


def test_vs_torchvision_inverted_boxes_fixed_sampling():
    tv_ops = pytest.importorskip("torchvision.ops")
    x = make_input((2, 3, 10, 12), torch.float32, seed=44)
    rois = make_rois(15, 2, 10, 12, 1.0, "inverted", seed=45)
    for aligned, sr in ((False, -1), (False, 2), (True, 2)):
        torch.testing.assert_close(
            roiops.roi_align(x, rois, 3, 1.0, sr, aligned),
            tv_ops.roi_align(x, rois, 3, 1.0, sr, aligned),
            rtol=1e-5,
            atol=1e-5,
        )


# ---- opcheck and torch.compile ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_opcheck(layout, mode):
    x = make_input((2, 3, 6, 7), layout=layout, seed=51, distinct=True).requires_grad_(True)
    rois = make_rois(5, 2, 6, 7, 1.0, "mixed", seed=52)
    torch.library.opcheck(torch.ops.roiops.roi_align.default, (x, rois, 1.0, 2, 3, 2, True, mode))
    torch.library.opcheck(torch.ops.roiops.roi_align.default, (x, rois, 0.5, 3, 2, -1, False, mode))
