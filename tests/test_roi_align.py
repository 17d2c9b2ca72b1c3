"""roiops.roi_align's own tests: its CPU kernel paths (half-type backward, channels-last bands, channel
blocks, thread counts) and torchvision. The standard tests (reference, layouts, dtypes, gradcheck,
opcheck, compile, edges) run over the op table in test_ops.py and test_ops_edges.py."""

import pytest
import torch

import roiops
from roiops.reference import roi_align_reference

from devices import CPU
from helpers import input_grad, make_input, make_rois, to_layout
from op_table import OPS, check_against_oracle


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
        kwargs = dict(output_size=(3, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        check_against_oracle(OPS[f"roi_align-{mode}"], CPU, x, boxes, ref_dtype=ref_dtype, **kwargs)
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
