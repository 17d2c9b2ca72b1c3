"""Hardening: hostile and extreme arguments, limits, memory and thread safety of the CPU operators.

Every case here either matches an independent oracle (the pure-PyTorch reference, a hand-derived
value, or the same call made another way) or raises a clear TypeError/ValueError -- never a crash.
Several cases are regressions of crashes found while writing this file (segfaults on an empty map
axis, on boxes whose extent overflows to inf, and out-of-bounds reads from a hostile argmax).
"""

import gc
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import roiops
from roiops._ops import SPECS
from roiops.reference import roi_align_reference, roi_pool_reference

from devices import ALL_DEVICES
from helpers import input_grad, make_input, make_rois, to_layout

ops = torch.ops.roiops
SANITIZED = os.environ.get("ROIOPS_SANITIZED") == "1"


def _grads(fn, x, seed=0):
    """Output and input gradient of fn(x) for a random upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return out, input_grad(out, x, g), g


# ---- crash regressions -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2, 0, 5), (1, 2, 5, 0), (2, 3, 0, 0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_map_axis_gives_zeros(shape, channels_last):
    """A map with H = 0 or W = 0 has no cell to read: every RoIAlign sample lies outside (value 0) and
    every RoIPool bin is empty (output 0, argmax -1); zero gradients. Used to read before the buffer
    (segfault)."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, -0.5, -0.5, 0.0, 0.0], [0, 0.0, -1.0, 3.0, 0.5], [0, -2.0, -2.0, 6.0, 6.0]])
    for mode in ("avg", "max"):
        for aligned in (False, True):
            out, gx, _ = _grads(lambda t: roiops.roi_align(t, rois, (2, 3), 1.0, 2, aligned, mode), x)
            assert out.shape == (3, shape[1], 2, 3) and torch.count_nonzero(out) == 0
            assert gx.shape == x.shape
    # Max mode: outside samples are zeros that compete; the first of the 2 x 2 grid wins.
    _, argmax = ops.roi_align(x, rois, 1.0, 2, 3, 2, False, "max")
    assert (argmax == 0).all()
    out, gx, _ = _grads(lambda t: roiops.roi_pool(t, rois, (2, 3)), x)
    assert out.shape == (3, shape[1], 2, 3) and torch.count_nonzero(out) == 0
    _, argmax = ops.roi_pool(x, rois, 1.0, 2, 3)
    assert (argmax == -1).all()


@pytest.mark.parametrize(
    "dtype,box,scale",
    [
        (torch.float32, (-3e38, -3e38, 3e38, 3e38), 1.0),  # x2 - x1 overflows to inf
        (torch.float32, (-1e30, -2.0, 1e30, 3.0), 1e10),  # box * scale overflows to -inf / inf
        (torch.float32, (3e38, 3e38, -3e38, -3e38), 1.0),  # inverted, extent -inf
        (torch.float64, (-1.7e308, -1.7e308, 1.7e308, 1.7e308), 1.0),
    ],
    ids=["f32-extent", "f32-scale", "f32-inverted", "f64-extent"],
)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_box_extent_overflowing_to_inf(dtype, box, scale, aligned, mode):
    """Finite boxes whose extent (or scaled coordinates) overflow to inf give bin = inf and sample
    coordinates 0 * inf = NaN. Exactly, every sample of such a box lies ~1e30 cells or more from the
    map, so RoIAlign gives 0 (and a zero gradient). Used to cast NaN to int and segfault."""
    x = make_input((1, 3, 5, 6), dtype, seed=1)
    rois = torch.tensor([[0.0, *box]], dtype=dtype)
    for sr in (1, 2, 3):
        out, gx, _ = _grads(lambda t: roiops.roi_align(t, rois, (2, 2), scale, sr, aligned, mode), x)
        assert torch.count_nonzero(out) == 0 and torch.count_nonzero(gx) == 0
    # Adaptive sampling of such a box: a clear refusal, or (inverted, aligned: no samples) zeros.
    try:
        out = roiops.roi_align(x, rois, (2, 2), scale, 0, aligned, mode)
        assert torch.count_nonzero(out) == 0
    except ValueError as e:
        assert "samples per bin" in str(e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_of_box_covering_everything(dtype, channels_last):
    """RoIPool clamps coordinates to 2^30 cells before rounding to integers: a box of +-3e38 (or
    +-1e308) covers the whole map, and a 1x1 output is the maximum of each plane."""
    big = 3e38 if dtype == torch.float32 else 1e308
    x = make_input((2, 9, 6, 7), dtype, layout="channels_last" if channels_last else "contiguous", seed=2)
    rois = torch.tensor([[1, -big, -big, big, big], [0, -big, -big, big, big]], dtype=dtype)
    out, gx, g = _grads(lambda t: roiops.roi_pool(t, rois, 1), x)
    torch.testing.assert_close(out[:, :, 0, 0], x[[1, 0]].amax(dim=(2, 3)), rtol=0, atol=0)
    # The gradient goes to each plane's maximum cell.
    expected = torch.zeros_like(x)
    for k, n in enumerate((1, 0)):
        for c in range(x.shape[1]):
            i = int(x[n, c].argmax())
            expected[n, c].view(-1)[i] += g[k, c, 0, 0]
    torch.testing.assert_close(gx, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dev", ALL_DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
def test_hostile_argmax_in_direct_backward_calls(dev, layout, deterministic):
    """_roi_align_backward / _roi_pool_backward take argmax from the caller. Indices outside the bin's
    sample grid (RoIAlign) or outside the plane (RoIPool) are ignored -- never read or written
    out of bounds -- on the CPU and CUDA kernels (emulated CUDA runs the CUDA sources on the CPU,
    where ASan sees them). (RoIAlign used to read past its tap buffer.)"""
    if dev.emulated:
        dev.ops.set_launch_order("forward")
    rois = dev.to(torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [1, 0.0, 0.0, 2.0, 5.0]]))
    grad_cpu = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    grad = dev.to(to_layout(grad_cpu, layout))

    def argmax_of(value):
        return dev.to(to_layout(torch.full((2, 3, 2, 2), value, dtype=torch.int32), layout))

    def align(argmax):
        return dev.ops._roi_align_backward(grad, rois, argmax, 1.0, 2, 2, 2, 3, 6, 6, 2, False, "max", deterministic)

    def pool(argmax):
        return dev.ops._roi_pool_backward(grad, rois, argmax, 1.0, 2, 2, 2, 3, 6, 6, deterministic)

    for bad in (4, 5, 1 << 20, (1 << 31) - 1, -2, -(1 << 31)):  # sr=2: the grid has 4 samples (0..3)
        gi = align(argmax_of(bad))
        assert gi.shape == (2, 3, 6, 6) and torch.count_nonzero(gi) == 0
        pool_bad = bad + 36 if 0 <= bad < 36 else bad  # a 6 x 6 plane has cells 0..35
        assert torch.count_nonzero(pool(argmax_of(pool_bad))) == 0
    # In-range indices still route the gradient (sample 0 / cell 7 of each bin).
    torch.testing.assert_close(align(argmax_of(0)).sum().cpu(), grad_cpu.sum())
    gi = pool(argmax_of(7)).cpu()
    torch.testing.assert_close(gi.view(2, 3, -1)[:, :, 7], grad_cpu.sum(dim=(2, 3)))


@pytest.mark.parametrize(
    "call,exc,patterns",
    [
        (
            lambda: ops._roi_pool_backward(
                torch.zeros(1, 3, 2, 2),
                torch.tensor([[0, 1.0, 1, 4, 4]]),
                torch.zeros(1, 3, 2, 2, dtype=torch.int32),
                1.0,
                2,
                2,
                2,
                3,
                1 << 40,
                1 << 40,
                False,
            ),
            RuntimeError,
            [r"_roi_pool_backward", r"plane", r"2\^31", r"1099511627776 x 1099511627776"],
        ),
        (
            lambda: ops._roi_align_backward(
                torch.zeros(1, 3, 2, 2),
                torch.tensor([[0, 1.0, 1, 4, 4]]),
                torch.empty(0, dtype=torch.int32),
                1.0,
                2,
                2,
                -1,
                3,
                6,
                6,
                2,
                False,
                "avg",
                False,
            ),
            RuntimeError,
            [r"_roi_align_backward", r"non-negative", r"\[-1, 3, 6, 6\]"],
        ),
        (
            lambda: ops._roi_align_backward(
                torch.zeros(1, 3, 3, 3),
                torch.tensor([[0, 1.0, 1, 4, 4]]),
                torch.empty(0, dtype=torch.int32),
                1.0,
                2,
                2,
                1,
                3,
                6,
                6,
                2,
                False,
                "avg",
                False,
            ),
            RuntimeError,
            [r"grad must have shape \[1, 3, 2, 2\]", r"\[1, 3, 3, 3\]"],
        ),
        (
            lambda: ops._roi_align_backward(
                torch.zeros(1, 3, 2, 2),
                torch.tensor([[0, 1.0, 1, 4, 4]]),
                torch.zeros(1, 3, 2, 2),
                1.0,
                2,
                2,
                1,
                3,
                6,
                6,
                2,
                False,
                "max",
                False,
            ),
            RuntimeError,
            [r"argmax must be int32", r"\[1, 3, 2, 2\]"],
        ),
        (
            lambda: ops.roi_align(
                torch.zeros(1, 1, 1, 1).expand(1, 1, 46341, 46341),
                torch.tensor([[0, 1.0, 1, 4, 4]]),
                1.0,
                2,
                2,
                2,
                False,
                "avg",
            ),
            RuntimeError,
            [r"roi_align", r"plane", r"46341 x 46341"],
        ),
        (
            lambda: roiops.roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 0.0, 0, 4, 4]]), 2, 1.0, 5000),
            ValueError,
            [
                r"roi_align: sampling_ratio 5000",
                r"25000000 samples per bin",
                r"16777216",
                r"sampling_ratio must be at most 4096",
            ],
        ),
        (
            lambda: roiops.roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 0.0, 0, 1e7, 1e7]]), 2, 1.0, 0),
            ValueError,
            [r"adaptive sampling \(sampling_ratio <= 0\)", r"1e\+07", r"samples per bin", r"positive sampling_ratio"],
        ),
        (
            lambda: roiops.roi_pool(torch.zeros(2, 1, 4, 4), torch.tensor([[2, 0.0, 0, 1, 1]]), 2),
            ValueError,
            [r"roi_pool", r"batch index of box 0", r"boxes\[0, 0\]", r"\[0, 2\)", r"it is 2"],
        ),
        (
            lambda: roiops.roi_pool(torch.zeros(2, 1, 4, 4), [torch.zeros(1, 4)] * 3, 2),
            ValueError,
            [r"roi_pool", r"batch index of box 2", r"\[0, 2\)", r"it is 2"],
        ),
        (
            lambda: roiops.roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0, 0.0, float("nan"), 1, 1]]), 2),
            ValueError,
            [r"roi_align: boxes must be finite", r"box 0", r"nan", r"column 2"],
        ),
        (
            lambda: roiops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, dtype=torch.float64), 2),
            TypeError,
            [r"boxes must have the dtype of input \(torch\.float32\)", r"torch\.float64"],
        ),
        (
            lambda: roiops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 1 << 21)),
            ValueError,
            [r"output_size", r"2097152"],
        ),
        (lambda: roiops.RoIAlign(7, spatial_scale=-1.0), ValueError, [r"RoIAlign: spatial_scale", r"-1\.0"]),
        (lambda: roiops.RoIPool((7, 0)), ValueError, [r"RoIPool: output_size", r"\(7, 0\)"]),
    ],
    ids=[
        "bwd-plane-overflow",
        "bwd-negative-size",
        "bwd-grad-shape",
        "bwd-argmax-dtype",
        "plane-2^31",
        "sampling-ratio-5000",
        "adaptive-1e7",
        "batch-index",
        "batch-index-list",
        "nan",
        "dtype",
        "output-size-2^21",
        "module-scale",
        "module-output-size",
    ],
)
def test_error_messages_name_argument_expected_and_actual(call, exc, patterns):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"


# ---- hostile feature values --------------------------------------------------------------------


def test_non_finite_features_propagate_like_the_reference():
    """inf/NaN feature cells: RoIAlign (avg) and RoIPool propagate them exactly as the reference does
    (a NaN/inf tap poisons the samples that touch it, samples outside the map never do); a RoIPool
    bin whose cells are all -inf gives -inf with a real argmax (not "empty": it used to give 0/-1)."""
    x = make_input((2, 3, 7, 8), torch.float64, seed=3)
    x[0, 0, 2, 3] = float("inf")
    x[0, 1, 5, 5] = float("-inf")
    x[1, 2, 0, 0] = float("nan")
    rois = make_rois(40, 2, 7, 8, 1.0, "mixed", torch.float64, seed=3)
    for sr in (-1, 2):
        for aligned in (False, True):
            out = roiops.roi_align(x, rois, (3, 2), 1.0, sr, aligned, "avg")
            ref = roi_align_reference(x, rois, (3, 2), 1.0, sr, aligned, "avg")
            torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-9, atol=1e-10)
    xp = x.nan_to_num(nan=0.5, posinf=float("inf"), neginf=float("-inf"))
    xp[1, 1] = float("-inf")  # a whole plane of -inf
    out, argmax = ops.roi_pool(xp, rois, 1.0, 3, 2)
    torch.testing.assert_close(out, roi_pool_reference(xp, rois, (3, 2)), rtol=0, atol=0)
    on_plane = rois[:, 0] == 1
    full = out[on_plane][:, 1]
    nonempty = argmax[on_plane][:, 1] >= 0
    assert nonempty.any() and (full[nonempty] == float("-inf")).all()
    out_cl, argmax_cl = ops.roi_pool(xp.contiguous(memory_format=torch.channels_last), rois, 1.0, 3, 2)
    assert torch.equal(out_cl, out) and torch.equal(argmax_cl, argmax)
    # RoIAlign max mode: a bin of -inf samples is -inf, not "no sample"; both layouts agree.
    # (8 channels, 8 x 8 cells: NCHW stays NCHW, channels-last takes the SIMD channel loop.)
    xi = torch.full((1, 8, 8, 8), float("-inf"), dtype=torch.float64)
    r = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
    for t in (xi, xi.contiguous(memory_format=torch.channels_last)):
        # Every sample is -inf or NaN (0 * -inf under a zero bilinear weight): the first NaN, else the first, wins.
        out, argmax = ops.roi_align(t, r, 1.0, 2, 2, 1, False, "max")
        assert (argmax >= 0).all() and not torch.isfinite(out).any()


# ---- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,output_size",
    [
        ((1, 1, 1, 1), 1),
        ((1, 1, 1, 1), (7, 7)),
        ((2, 1, 1, 1), (64, 64)),
        ((1, 1, 5, 3), (64, 1)),
        ((1, 3, 2, 9), (1, 64)),
        ((1, 1, 16, 16), (64, 64)),
    ],
    ids=["1x1-map-1x1", "1x1-map-7x7", "1x1-map-64x64", "64x1", "1x64", "16x16-map-64x64"],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiny_maps_single_channel_large_outputs(shape, output_size, channels_last):
    x = make_input(shape, torch.float64, layout="channels_last" if channels_last else "contiguous", seed=4)
    n, _, h, w = shape
    rois = make_rois(6, n, h, w, 0.5, "mixed", torch.float64, seed=4)
    for sr in (-1, 2):
        for aligned in (False, True):
            for mode in ("avg", "max"):
                out, gx, g = _grads(lambda t: roiops.roi_align(t, rois, output_size, 0.5, sr, aligned, mode), x)
                xr = x.detach().clone().requires_grad_(True)
                ref = roi_align_reference(xr, rois, output_size, 0.5, sr, aligned, mode)
                torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
                torch.testing.assert_close(gx, input_grad(ref, xr, g), rtol=1e-9, atol=1e-10)
    out, gx, g = _grads(lambda t: roiops.roi_pool(t, rois, output_size, 0.5), x)
    xr = x.detach().clone().requires_grad_(True)
    ref = roi_pool_reference(xr, rois, output_size, 0.5)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, input_grad(ref, xr, g), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_a_million_rois():
    """10^6 RoIs of every kind on a tiny map (forward only); rows checked against the vectorized
    reference on a random sample of 3000."""
    K = 1_000_000
    x = make_input((2, 2, 6, 7), torch.float32, seed=5)
    rois = make_rois(K, 2, 6, 7, 0.5, "mixed", torch.float32, seed=5)
    rows = torch.randperm(K, generator=torch.Generator().manual_seed(5))[:3000]
    out = roiops.roi_align(x, rois, (2, 3), 0.5, 2, True)
    assert out.shape == (K, 2, 2, 3)
    torch.testing.assert_close(
        out[rows], roi_align_reference(x, rois[rows], (2, 3), 0.5, 2, True), rtol=1e-5, atol=1e-5
    )
    out = roiops.roi_align(x, rois, (2, 3), 0.5, 2, False, "max")
    torch.testing.assert_close(
        out[rows], roi_align_reference(x, rois[rows], (2, 3), 0.5, 2, False, "max"), rtol=1e-5, atol=1e-5
    )
    out = roiops.roi_pool(x, rois, (2, 3), 0.5)
    torch.testing.assert_close(out[rows], roi_pool_reference(x, rois[rows], (2, 3), 0.5), rtol=0, atol=0)


def _try_empty(shape, memory_format=torch.contiguous_format):
    """An uninitialized tensor: the kernels only touch the cells the boxes sample, so only the few
    pages written below ever become resident (the rest is address space, not memory)."""
    try:
        return torch.empty(shape, dtype=torch.float32, memory_format=memory_format)
    except RuntimeError as e:  # the OS refused the address space
        pytest.skip(f"cannot reserve {shape}: {e}")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_element_offsets_beyond_2_pow_31(layout):
    """Index arithmetic past 2^31 elements: boxes at the bottom-right corner of the last plane of a
    map with more than 2^31 elements (NCHW: [2, 2, 30000, 30000]; channels-last: [1, 9, 16384,
    16384]), so every offset the kernel computes exceeds int32. Only the touched cells are
    written (a few pages); the result must equal the same boxes on a 16 x 16 crop of the corner."""
    if layout == "nchw":
        shape, mf = (2, 2, 30000, 30000), torch.contiguous_format
    else:
        shape, mf = (1, 9, 16384, 16384), torch.channels_last
    n, c, h, w = shape
    assert n * c * h * w > 2**31
    x = _try_empty(shape, mf)
    crop = make_input((n, c, 16, 16), torch.float32, seed=6)
    x[:, :, h - 16 :, w - 16 :] = crop
    # Boxes whose sample positions and rounded edges are exact in float32 at ~30000 (quarter cells),
    # crossing the bottom-right border; the crop's borders are the map's there.
    local = torch.tensor([[n - 1, 6.0, 6.0, 18.0, 18.0], [n - 1, 10.0, 8.0, 14.0, 16.0], [0, 7.0, 6.0, 15.0, 11.0]])
    rois = local + torch.tensor([0.0, w - 16, h - 16, w - 16, h - 16])
    for mode in ("avg", "max"):
        out = roiops.roi_align(x, rois, (4, 4), 1.0, 2, False, mode)
        torch.testing.assert_close(
            out, roi_align_reference(crop, local, (4, 4), 1.0, 2, False, mode), rtol=1e-6, atol=1e-6
        )
    out = roiops.roi_pool(x, rois, (3, 4), 1.0)
    torch.testing.assert_close(out, roi_pool_reference(crop, local, (3, 4), 1.0), rtol=0, atol=0)
    del x
    gc.collect()


# ---- safety ------------------------------------------------------------------------------------


def _workload(i):
    """A forward + backward call of one of 8 configurations; returns (output, input gradient)."""
    mode = ("avg", "max")[i % 2]
    layout = ("contiguous", "channels_last")[(i // 2) % 2]
    x = make_input((2, 9, 12, 10), torch.float32, layout=layout, seed=i)
    rois = make_rois(30, 2, 12, 10, 0.5, "mixed", torch.float32, seed=i)
    if (i // 4) % 2 == 0:
        fn = lambda t: roiops.roi_align(t, rois, (3, 3), 0.5, -1 if i % 3 else 2, True, mode)  # noqa: E731
    else:
        fn = lambda t: roiops.roi_pool(t, rois, (3, 3), 0.5)  # noqa: E731
    out, gx, _ = _grads(fn, x, seed=i)
    return out, gx


def test_concurrent_calls_from_python_threads():
    """Calls from several Python threads at once (each with its own intra-op thread team) give the
    same results, bit for bit, as the same calls made one after the other."""
    expected = [_workload(i) for i in range(8)]
    start = threading.Barrier(4, timeout=120)

    def job(j):
        if j < 4:
            start.wait()
        return j % 8, _workload(j % 8)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(job, range(48)))
    for i, (out, gx) in results:
        assert torch.equal(out, expected[i][0]) and torch.equal(gx, expected[i][1]), i


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    pytest.skip("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_repeated_calls_do_not_leak_memory():
    """Resident memory stays flat over 4000 forward + backward calls of both ops (small tensors, all
    modes and layouts): any per-call leak of a tensor or buffer would add megabytes."""
    x_nchw = make_input((2, 8, 10, 12), torch.float32, seed=7).requires_grad_(True)
    x_cl = make_input((2, 8, 10, 12), torch.float32, layout="channels_last", seed=8).requires_grad_(True)
    rois = make_rois(16, 2, 10, 12, 0.5, "mixed", torch.float32, seed=7)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]

    def step(i):
        x = x_cl if i % 2 else x_nchw
        b = boxes if i % 3 == 0 else rois
        if i % 4 == 3:
            out = roiops.roi_pool(x, b, (4, 3), 0.5)
        else:
            out = roiops.roi_align(x, b, (4, 3), 0.5, (-1, 2)[i % 2], bool(i % 2), ("avg", "max")[(i // 2) % 2])
        (g,) = torch.autograd.grad(out.sum(), x)
        return float(g[0, 0, 0, 0])

    for i in range(400):  # warm up: allocator caches, autograd/dispatcher caches
        step(i)
    gc.collect()
    rss = [_rss_kib()]
    for _ in range(2):
        for i in range(2000):
            step(i)
        gc.collect()
        rss.append(_rss_kib())
    growth = rss[-1] - rss[0]
    print(f"VmRSS (KiB) after warm-up, 2000 and 4000 calls: {rss}")
    # 4000 calls: a leak of even 1 KiB per call would show up as 4 MiB.
    assert growth < 3 * 1024, f"resident memory grew by {growth} KiB over 4000 calls: {rss}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "transposed"])
def test_arguments_are_never_modified(layout):
    x = make_input((2, 9, 8, 7), torch.float32, layout=layout, seed=9).requires_grad_(True)
    rois = make_rois(12, 2, 8, 7, 0.5, "mixed", torch.float32, seed=9)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    saved = (x.detach().clone(), x.stride(), rois.clone(), [b.clone() for b in boxes])
    calls = [
        lambda: roiops.roi_align(x, rois, 3, 0.5, 2, True, "avg"),
        lambda: roiops.roi_align(x, boxes, 3, 0.5, -1, False, "max"),
        lambda: roiops.roi_align(x, rois, 3, 0.5, 2, True, "max"),
        lambda: roiops.roi_pool(x, rois, 3, 0.5),
        lambda: roiops.roi_pool(x, boxes, (2, 4), 0.5),
    ]
    for call in calls:
        out = call()
        g = torch.randn(out.shape)
        g_saved = g.clone()
        torch.autograd.grad(out, x, g)
        assert torch.equal(g, g_saved)
    assert torch.equal(x.detach(), saved[0]) and x.stride() == saved[1]
    assert torch.equal(rois, saved[2]) and all(torch.equal(b, s) for b, s in zip(boxes, saved[3]))


def test_boxes_that_require_grad_get_no_gradient(op):
    """Boxes are not differentiated (as in torchvision): the ops' backward returns no gradient for
    them. With boxes that require grad: the output requires grad, backward() works and leaves
    boxes.grad as None, the input gradient is the same as with plain boxes, asking autograd.grad for
    the boxes' gradient raises "not used in the graph" (or gives None / zeros with allow_unused /
    materialize_grads), and the list-of-boxes form behaves the same. (An op that differentiates its
    boxes, box_gradient in its spec, is checked in its own file instead.)"""
    if SPECS[op.name].box_gradient:
        pytest.skip(f"{op.name} differentiates its boxes (tests/test_{op.name}.py)")
    x = make_input((2, op.channels(4, output_size=3), 8, 9), torch.float64, seed=10)
    rois = make_rois(10, 2, 8, 9, 0.5, "mixed", torch.float64, seed=10)

    def run(inp, boxes):
        return op(inp, boxes, output_size=3, spatial_scale=0.5)

    plain_out, plain_gx, g = _grads(lambda t: run(t, rois), x)
    r = rois.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = run(xg, r)
    assert out.requires_grad and torch.equal(out, plain_out)
    out.backward(g)
    assert r.grad is None
    torch.testing.assert_close(xg.grad, plain_gx, rtol=0, atol=0)
    assert torch.count_nonzero(xg.grad) > 0
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(run(x, r), r, g)
    (none,) = torch.autograd.grad(run(x, r), r, g, allow_unused=True)
    assert none is None
    (zeros,) = torch.autograd.grad(run(x, r), r, g, allow_unused=True, materialize_grads=True)
    assert torch.count_nonzero(zeros) == 0
    boxes = [rois[rois[:, 0] == i, 1:].clone().requires_grad_(True) for i in range(2)]
    xg = x.clone().requires_grad_(True)
    out = run(xg, boxes)
    out.backward(torch.ones_like(out))
    assert all(b.grad is None for b in boxes) and xg.grad is not None
