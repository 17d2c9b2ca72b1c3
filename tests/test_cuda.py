"""CUDA kernels against the CPU kernels (the oracle): forward and backward of roi_align (avg/max,
aligned on/off, sampling ratios) and roi_pool, all dtypes, layouts, empty inputs, gradcheck in float64,
the deterministic backward (bitwise repeatable whatever the thread order, close to the fast path,
NaN/inf rules), and autocast.

Every test takes the device as a parameter:
- "cuda": a GPU and roiops built with CUDA (skipped otherwise);
- "emulated": the same CUDA sources compiled for the CPU (csrc/common/cuda/emulation.h), ops under
  torch.ops.roiops_emu, built by scripts/build_emulated_cuda.sh (skipped if it was not run; CI runs it);
- "emulated64": the same with every launch on the 64-bit index kernels and only 3 blocks per launch.
The emulated libraries are looked up in $ROIOPS_EMULATED_CUDA_DIR (default build/emulated_cuda).
"""

import contextlib
import os
import time
import zlib

import pytest
import torch

import roiops

from devices import CUDA_DEVICES, select
from helpers import make_input, make_rois, to_layout, tolerances

ops = torch.ops.roiops
DEVICES = CUDA_DEVICES


@pytest.fixture(params=DEVICES)
def dev(request):
    return select(request)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]
LAYOUTS = ["contiguous", "channels_last", "sliced"]


def on_device(dev, x, layout="contiguous"):
    """x (a CPU tensor) on dev in the given layout; built there, since .to() keeps only dense strides."""
    x = dev.to(x.contiguous())
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        N, C, H, W = x.shape
        big = x.new_zeros((N, C, H, 2 * W + 1))
        big[:, :, :, 1::2] = x
        return big[:, :, :, 1::2]
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(layout)


def is_channels_last(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def assert_same_layout(dev, cpu):
    assert dev.shape == cpu.shape
    assert is_channels_last(dev) == is_channels_last(cpu)
    if dev.numel() > 0:
        assert dev.is_contiguous() or dev.is_contiguous(memory_format=torch.channels_last)


def random_grad(shape, dtype, seed, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return grad.contiguous(memory_format=torch.channels_last) if channels_last else grad


def seed_of(*args):
    return zlib.crc32(repr(args).encode()) % 100003


@pytest.fixture
def deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


# ---- the emulated launcher itself ---------------------------------------------------------------


@pytest.fixture(params=[p for p in DEVICES if p.id.startswith("emulated")])
def emu(request):
    """An emulated CUDA device only (tests of what a GPU does not let one choose or see)."""
    request.param.ops.set_launch_order("forward")
    yield request.param
    request.param.ops.set_launch_order("forward")


@pytest.mark.parametrize(
    "grid, block",
    [
        ((3, 1, 1), (5, 1, 1)),
        ((2, 3, 2), (4, 2, 3)),
        ((1, 65535, 1), (1, 1, 1)),
        ((1, 1, 65535), (2, 1, 1)),
        ((1, 1, 1), (1024, 1, 1)),
        ((2, 1, 1), (2, 8, 64)),
    ],
)
def test_emulated_launch_runs_every_thread_once_in_the_chosen_order(emu, grid, block):
    n = grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2]
    traces = {}
    for order, seed in (("forward", 0), ("reversed", 0), ("shuffled", 7), ("shuffled", 7), ("shuffled", 8)):
        emu.ops.set_launch_order(order, seed)
        trace, count = emu.ops.trace_launch(grid, block)
        assert count == n
        assert torch.equal(trace.sort().values, torch.arange(n))  # each (block, thread) exactly once
        traces.setdefault((order, seed), []).append(trace)
    assert torch.equal(traces["forward", 0][0], torch.arange(n))
    assert torch.equal(traces["reversed", 0][0], torch.arange(n).flip(0))
    first, again = traces["shuffled", 7]
    assert torch.equal(first, again)  # a seed gives the same shuffle
    if n > 100:
        assert not torch.equal(first, torch.arange(n)) and not torch.equal(first, traces["shuffled", 8][0])


@pytest.mark.parametrize(
    "grid, block",
    [
        ((0, 1, 1), (32, 1, 1)),
        ((1, 1, 1), (0, 1, 1)),
        ((2**31, 1, 1), (1, 1, 1)),
        ((1, 65536, 1), (1, 1, 1)),
        ((1, 1, 65536), (1, 1, 1)),
        ((1, 1, 1), (1025, 1, 1)),
        ((1, 1, 1), (1, 1025, 1)),
        ((1, 1, 1), (1, 1, 65)),
        ((1, 1, 1), (32, 32, 2)),
    ],
)
def test_emulated_launch_refuses_what_a_gpu_cannot_launch(emu, grid, block):
    before = emu.ops.launch_count()
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        emu.ops.trace_launch(grid, block)
    assert emu.ops.launch_count() == before


def test_python_layer_runs_the_emulated_kernels(emu):
    # The routing that lets roiops.roi_align & co. run on emulated kernels really reaches them.
    dev = emu
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    before = dev.ops.launch_count()
    with dev.python_layer():
        roiops.roi_align(x, rois, 3, 1.0, 2, True).sum().backward()
        roiops.roi_pool(x, rois, 3, 1.0).sum().backward()
    assert dev.ops.launch_count() == before + 6  # each forward: box check + kernel; each backward: kernel
    roiops.roi_align(x, rois, 3, 1.0, 2, True)  # outside the context: the CPU kernel
    assert dev.ops.launch_count() == before + 6


# ---- roi_align ---------------------------------------------------------------------------------


def _align_case(dev, dtype, layout, sr, aligned, mode, seed, scale=0.5, output=(3, 4), shape=(2, 5, 9, 11), num=24):
    N, C, H, W = shape
    x = make_input(shape, dtype, seed=seed, distinct=(mode == "max"))
    rois = make_rois(num, N, H, W, scale, "mixed", dtype, seed=seed)
    args = (scale, output[0], output[1], sr, aligned, mode)

    x_cpu = to_layout(x, layout)
    x_dev = on_device(dev, x, layout)
    out_c, arg_c = ops.roi_align(x_cpu, rois, *args)
    out_d, arg_d = dev.ops.roi_align(x_dev, dev.to(rois), *args)

    assert out_d.dtype == dtype and arg_d.dtype == torch.int32
    assert_same_layout(out_d, out_c)
    torch.testing.assert_close(out_d.cpu(), out_c, **tolerances(dtype))
    if mode == "max":
        assert_same_layout(arg_d, arg_c)
        # Same arithmetic (the CUDA build uses --fmad=false), same tie rule: the same winners.
        assert torch.equal(arg_d.cpu(), arg_c)
    else:
        assert arg_d.numel() == 0 and arg_c.numel() == 0

    # Backward from the same upstream gradient, in the output's layout.
    grad = random_grad(out_c.shape, dtype, seed + 1, channels_last=is_channels_last(out_c))
    bwd = (scale, output[0], output[1], N, C, H, W, sr, aligned, mode)
    gin_c = ops._roi_align_backward(grad, rois, arg_c, *bwd, False)
    grad_d = dev.to(grad)
    assert is_channels_last(grad_d) == is_channels_last(grad)
    for deterministic in (False, True):
        gin_d = dev.ops._roi_align_backward(grad_d, dev.to(rois), arg_d, *bwd, deterministic)
        assert gin_d.dtype == dtype
        assert_same_layout(gin_d, gin_c)
        torch.testing.assert_close(gin_d.cpu(), gin_c, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sr", [-1, 0, 1, 2], ids=lambda s: f"sr{s}")
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_matches_cpu(dev, dtype, layout, sr, aligned, mode):
    _align_case(dev, dtype, layout, sr, aligned, mode, seed_of(str(dtype), layout, sr, aligned, mode))


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_roi_align_matches_cpu_larger(dev, mode, layout):
    # More channels than a warp, a 7x7 output, a small spatial scale: several blocks, NHWC thread order.
    _align_case(
        dev,
        torch.float32,
        layout,
        2,
        True,
        mode,
        seed_of("large", mode, layout),
        scale=0.25,
        output=(7, 7),
        shape=(2, 40, 16, 20),
        num=60,
    )


# ---- roi_pool ----------------------------------------------------------------------------------


def _pool_case(dev, dtype, layout, seed, scale=0.5, output=(3, 4), shape=(2, 5, 9, 11), num=24):
    N, C, H, W = shape
    x = make_input(shape, dtype, seed=seed, distinct=True)
    rois = make_rois(num, N, H, W, scale, "mixed", dtype, seed=seed)
    args = (scale, output[0], output[1])

    out_c, arg_c = ops.roi_pool(to_layout(x, layout), rois, *args)
    out_d, arg_d = dev.ops.roi_pool(on_device(dev, x, layout), dev.to(rois), *args)
    assert out_d.dtype == dtype and arg_d.dtype == torch.int32
    assert_same_layout(out_d, out_c)
    assert_same_layout(arg_d, arg_c)
    # A max of stored values: exact.
    assert torch.equal(out_d.cpu(), out_c)
    assert torch.equal(arg_d.cpu(), arg_c)

    grad = random_grad(out_c.shape, dtype, seed + 1, channels_last=is_channels_last(out_c))
    bwd = (scale, output[0], output[1], N, C, H, W)
    gin_c = ops._roi_pool_backward(grad, rois, arg_c, *bwd, False)
    for deterministic in (False, True):
        gin_d = dev.ops._roi_pool_backward(dev.to(grad), dev.to(rois), arg_d, *bwd, deterministic)
        assert gin_d.dtype == dtype
        assert_same_layout(gin_d, gin_c)
        torch.testing.assert_close(gin_d.cpu(), gin_c, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS + ["transposed"])
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.125], ids=lambda s: f"scale{s:g}")
def test_roi_pool_matches_cpu(dev, dtype, layout, scale):
    _pool_case(dev, dtype, layout, seed_of("pool", str(dtype), layout, scale), scale=scale)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_roi_pool_matches_cpu_larger(dev, layout):
    _pool_case(
        dev,
        torch.float32,
        layout,
        seed_of("pool-large", layout),
        scale=0.25,
        output=(7, 7),
        shape=(2, 40, 16, 20),
        num=60,
    )


def test_roi_pool_hand_checked(dev):
    x = torch.tensor([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], dtype=torch.float32)
    x = dev.to(x.reshape(1, 1, 4, 4)).requires_grad_(True)
    rois = dev.to(torch.tensor([[0, 0, 0, 3, 3]], dtype=torch.float32))
    with dev.python_layer():
        out = roiops.roi_pool(x, rois, 2)
        out.sum().backward()
    torch.testing.assert_close(out.detach().cpu()[0, 0], torch.tensor([[4.0, 8.0], [12.0, 16.0]]))
    expected = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(x.grad.cpu()[0, 0], expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_with_inf_and_nan_matches_cpu(dev, layout):
    # The max rule at its edges: bins of -inf (the first sample/cell counts: -inf, argmax 0), a NaN
    # that comes first or later (it wins either way), ties between equal values (first wins).
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64).round().float()  # many ties
    x[:, 0, :4, :4] = float("-inf")
    x[:, 1, 0, 0] = float("nan")
    x[:, 2, 5, 5] = float("nan")
    x[:, 3] = 1.0
    rois = torch.tensor(
        [[0, 0, 0, 3, 3], [0, 0, 0, 7, 7], [0, 4, 4, 7, 7], [0, -2, -2, 2, 2], [0, 1.5, 0.5, 6.2, 5.1]],
        dtype=torch.float32,
    )
    x_cpu = to_layout(x, layout)
    x_dev = on_device(dev, x, layout)
    for args in ((1.0, 2, 2, 2, True, "max"), (1.0, 3, 3, 1, False, "max"), (1.0, 2, 2, 2, True, "avg")):
        out_c, arg_c = ops.roi_align(x_cpu, rois, *args)
        out_d, arg_d = dev.ops.roi_align(x_dev, dev.to(rois), *args)
        torch.testing.assert_close(out_d.cpu(), out_c, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(arg_d.cpu(), arg_c)
    out_c, arg_c = ops.roi_pool(x_cpu, rois, 1.0, 2, 2)
    out_d, arg_d = dev.ops.roi_pool(x_dev, dev.to(rois), 1.0, 2, 2)
    torch.testing.assert_close(out_d.cpu(), out_c, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(arg_d.cpu(), arg_c)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_absurd_boxes_match_cpu_in_milliseconds(dev, mode, aligned, channels_last):
    # 28,000-px boxes on a 64 x 64 map, adaptive sampling: ~4000 x 4000 samples per bin, of which the
    # kernels visit only those that can touch the map (tests/test_absurd_boxes.py checks the CPU
    # kernels on such boxes). Emulated, one such call took ~30 s before; a GPU would be as busy.
    x = make_input((1, 16, 64, 64), torch.float32, seed=4) - 1  # mostly negative: outside samples win max bins
    x_cpu = to_layout(x, "channels_last" if channels_last else "contiguous")
    x_dev = on_device(dev, x, "channels_last" if channels_last else "contiguous")
    rois = torch.tensor(
        [
            [0, -14000.0, -13000.0, 14000.0, 15000.0],
            [0, -14000.0, 20.0, 14000.0, 50.0],
            [0, 40.0, 50.0, 28040.0, 28050.0],
            [0, -30000.0, -2000.0, -2000.0, 26000.0],
        ]
    )
    args = (1.0, 7, 7, 0, aligned, mode)
    out_c, arg_c = ops.roi_align(x_cpu, rois, *args)
    grad = random_grad(out_c.shape, torch.float32, 3, channels_last=is_channels_last(out_c))
    bwd = (1.0, 7, 7, 1, 16, 64, 64, 0, aligned, mode)
    gin_c = ops._roi_align_backward(grad, rois, arg_c, *bwd, False)

    start = time.perf_counter()
    out_d, arg_d = dev.ops.roi_align(x_dev, dev.to(rois), *args)
    gin_d = {det: dev.ops._roi_align_backward(dev.to(grad), dev.to(rois), arg_d, *bwd, det) for det in (False, True)}
    if dev.torch_device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert torch.equal(out_d.cpu(), out_c) and torch.equal(arg_d.cpu(), arg_c)
    for det in (False, True):
        torch.testing.assert_close(gin_d[det].cpu(), gin_c, rtol=1e-5, atol=1e-6)


# ---- empty inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "shape, num",
    [((2, 3, 6, 6), 0), ((0, 3, 6, 6), 0), ((1, 0, 6, 6), 3), ((1, 3, 0, 6), 3), ((1, 3, 6, 0), 3)],
    ids=["no-rois", "no-images", "no-channels", "no-rows", "no-columns"],
)
def test_empty_inputs_match_cpu(dev, shape, num, layout):
    N, C, H, W = shape
    x = torch.randn(shape)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 3.0]] * num).reshape(num, 5)
    x_cpu = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x_dev = dev.to(x_cpu)
    r_dev = dev.to(rois)
    for mode in ("avg", "max"):
        args = (0.5, 2, 3, 2, True, mode)
        out_c, arg_c = ops.roi_align(x_cpu, rois, *args)
        out_d, arg_d = dev.ops.roi_align(x_dev, r_dev, *args)
        assert out_d.shape == out_c.shape == (num, C, 2, 3)
        assert torch.equal(out_d.cpu(), out_c)
        assert torch.equal(arg_d.cpu(), arg_c)
        grad = torch.ones(out_c.shape)
        bwd = (0.5, 2, 3, N, C, H, W, 2, True, mode)
        gin_c = ops._roi_align_backward(grad, rois, arg_c, *bwd, False)
        for deterministic in (False, True):
            gin_d = dev.ops._roi_align_backward(dev.to(grad), r_dev, arg_d, *bwd, deterministic)
            assert gin_d.shape == shape
            assert torch.equal(gin_d.cpu(), gin_c)
    out_c, arg_c = ops.roi_pool(x_cpu, rois, 0.5, 2, 3)
    out_d, arg_d = dev.ops.roi_pool(x_dev, r_dev, 0.5, 2, 3)
    assert torch.equal(out_d.cpu(), out_c) and torch.equal(arg_d.cpu(), arg_c)
    for deterministic in (False, True):
        gin_d = dev.ops._roi_pool_backward(
            out_d.new_ones(out_d.shape), r_dev, arg_d, 0.5, 2, 3, N, C, H, W, deterministic
        )
        gin_c = ops._roi_pool_backward(torch.ones(out_c.shape), rois, arg_c, 0.5, 2, 3, N, C, H, W, False)
        assert torch.equal(gin_d.cpu(), gin_c)


# ---- gradcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
def test_roi_align_gradcheck(dev, mode, aligned, deterministic, deterministic_algorithms):
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    x = on_device(dev, make_input((1, 2, 6, 7), torch.float64, seed=3, distinct=True)).requires_grad_(True)
    rois = dev.to(
        torch.tensor([[0, 0.3, 0.6, 4.7, 5.2], [0, 1.1, -0.4, 6.5, 3.3], [0, 2.2, 2.4, 2.9, 4.9]], dtype=torch.float64)
    )
    fn = lambda t: roiops.roi_align(t, rois, (3, 2), 1.0, 2, aligned, mode)  # noqa: E731
    # The deterministic backward must also be exactly reentrant (nondet_tol=0); float atomics need not be.
    nondet_tol = 0.0 if deterministic else 1e-10
    with dev.python_layer():
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, nondet_tol=nondet_tol)


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
def test_roi_pool_gradcheck(dev, deterministic, deterministic_algorithms):
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    x = on_device(dev, make_input((1, 2, 6, 7), torch.float64, seed=4, distinct=True)).requires_grad_(True)
    rois = dev.to(torch.tensor([[0, 0, 0, 4, 5], [0, 1, 2, 6, 5], [0, 2, 2, 3, 3]], dtype=torch.float64))
    fn = lambda t: roiops.roi_pool(t, rois, (3, 2), 1.0)  # noqa: E731
    nondet_tol = 0.0 if deterministic else 1e-10
    with dev.python_layer():
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, nondet_tol=nondet_tol)


# ---- deterministic backward --------------------------------------------------------------------


def _crowded(dtype, num=400, seed=0):
    """Many overlapping boxes on a small map: lots of atomic collisions on the same cells."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = 2, 8, 12, 12
    centre = 4 + 4 * torch.rand(num, 2, generator=g, dtype=torch.float64)
    half = 1 + 5 * torch.rand(num, 2, generator=g, dtype=torch.float64)
    b = torch.randint(0, N, (num, 1), generator=g).to(torch.float64)
    rois = torch.cat([b, centre - half, centre + half], dim=1).to(dtype)
    return (N, C, H, W), rois


def _backward_on(dev, op, x_dev, r_dev, grad, pooled=5):
    """backward(deterministic) of op on dev for an upstream gradient (a CPU tensor), and the CPU oracle."""
    N, C, H, W = x_dev.shape
    rois = r_dev.cpu()
    if op == "pool":
        _, arg = dev.ops.roi_pool(x_dev, r_dev, 1.0, pooled, pooled)
        args = (1.0, pooled, pooled, N, C, H, W)
        run = dev.ops._roi_pool_backward
        oracle = ops._roi_pool_backward(grad, rois, arg.cpu(), *args, False)
    else:
        mode = op.split("-")[1]
        _, arg = dev.ops.roi_align(x_dev, r_dev, 1.0, pooled, pooled, 2, True, mode)
        args = (1.0, pooled, pooled, N, C, H, W, 2, True, mode)
        run = dev.ops._roi_align_backward
        oracle = ops._roi_align_backward(grad, rois, arg.cpu(), *args, False)
    grad_d = dev.to(grad)
    return (lambda deterministic: run(grad_d, r_dev, arg, *args, deterministic)), oracle


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", ["align-avg", "align-max", "pool"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_deterministic_backward_is_bitwise_repeatable(dev, dtype, op, channels_last):
    (N, C, H, W), rois = _crowded(dtype, seed=seed_of(op))
    x = make_input((N, C, H, W), dtype, seed=1, distinct=True)
    x_dev = on_device(dev, x, "channels_last" if channels_last else "contiguous")
    grad = random_grad((rois.shape[0], C, 5, 5), dtype, 7, channels_last)
    backward, oracle = _backward_on(dev, op, x_dev, dev.to(rois), grad)
    first, second = backward(True), backward(True)
    assert is_channels_last(first) == channels_last
    assert torch.equal(first, second)
    tol = tolerances(dtype)
    if dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-4)  # hundreds of contributions per cell, summed in other orders
    torch.testing.assert_close(first, backward(False), **tol)
    torch.testing.assert_close(first.cpu(), oracle, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("op", ["align-avg", "align-max", "pool"])
def test_thread_order_changes_no_deterministic_bit(emu, dtype, op):
    # The launcher runs the same launches with the (block, thread) pairs forward, reversed and
    # shuffled. Forward results and the deterministic backward must not change by a bit; the
    # float-atomic backward may (that is why the deterministic one exists), within tolerance.
    dev = emu
    (N, C, H, W), rois = _crowded(dtype, num=300, seed=seed_of("order", op))
    x_dev = dev.to(make_input((N, C, H, W), dtype, seed=2, distinct=True))
    grad = random_grad((rois.shape[0], C, 5, 5), dtype, 8)
    results = {}
    for order, seed in (("forward", 0), ("reversed", 0), ("shuffled", 1), ("shuffled", 2)):
        dev.ops.set_launch_order(order, seed)
        backward, oracle = _backward_on(dev, op, x_dev, dev.to(rois), grad)
        forward = (
            dev.ops.roi_pool(x_dev, dev.to(rois), 1.0, 5, 5)
            if op == "pool"
            else dev.ops.roi_align(x_dev, dev.to(rois), 1.0, 5, 5, 2, True, op.split("-")[1])
        )
        results[order, seed] = forward, backward(True), backward(False)
    (out0, arg0), det0, fast0 = results["forward", 0]
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else tolerances(dtype)
    for (out, arg), det, fast in results.values():
        assert torch.equal(out, out0) and torch.equal(arg, arg0)
        assert torch.equal(det, det0)
        torch.testing.assert_close(fast, fast0, **tol)
    torch.testing.assert_close(det0, oracle, **tol)
    if dtype == torch.float32 and op == "align-avg":
        # The orders do differ: float atomics summed in another order round differently somewhere
        # (else this test could not tell a deterministic path from a lucky one).
        assert any(not torch.equal(fast, fast0) for _, _, fast in results.values())


@pytest.mark.parametrize("magnitude", [1e-30, 1e-3, 1e30], ids=["tiny", "small", "huge"])
def test_deterministic_backward_scales_with_the_gradient(dev, magnitude):
    # The fixed-point scale follows max|grad|: tiny and huge gradients keep their relative precision.
    (N, C, H, W), rois = _crowded(torch.float32, num=100, seed=11)
    r_dev = dev.to(rois)
    grad = random_grad((100, C, 4, 4), torch.float32, 5) * magnitude
    no_argmax = torch.empty(0, dtype=torch.int32)
    args = (1.0, 4, 4, N, C, H, W, 2, False, "avg")
    det = dev.ops._roi_align_backward(dev.to(grad), r_dev, dev.to(no_argmax), *args, True)
    oracle = ops._roi_align_backward(grad, rois, no_argmax, *args, False)
    assert oracle.abs().max() > 0
    torch.testing.assert_close(det.cpu() / magnitude, oracle / magnitude, rtol=1e-5, atol=1e-5)


def test_deterministic_backward_one_scale_per_channel(dev):
    # An outlier channel costs the others no precision: every channel has its own fixed-point scale
    # (with one scale for all, channel 0 at 1e15 left the others ~2e-3 relative error).
    (N, C, H, W), rois = _crowded(torch.float32, num=100, seed=12)
    grad = random_grad((100, C, 4, 4), torch.float32, 6)
    grad[:, 0] *= 1e15
    no_argmax = torch.empty(0, dtype=torch.int32)
    args = (1.0, 4, 4, N, C, H, W, 2, False, "avg")
    det = dev.ops._roi_align_backward(dev.to(grad), dev.to(rois), dev.to(no_argmax), *args, True)
    oracle = ops._roi_align_backward(grad, rois, no_argmax, *args, False)
    torch.testing.assert_close(det.cpu()[:, 1:], oracle[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(det.cpu()[:, 0], oracle[:, 0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("magnitude", [1e-295, 1e-303, 1e300], ids=["1e-295", "1e-303", "1e300"])
def test_deterministic_backward_float64_extremes(dev, magnitude):
    # The scale is applied with ldexp, so no exponent is out of reach: float64 gradients near the
    # bottom of the range keep their precision (before: ~1e-290 lost digits, ~1e-303 came out 0).
    (N, C, H, W), rois = _crowded(torch.float64, num=60, seed=13)
    grad = random_grad((60, C, 3, 3), torch.float64, 7) * magnitude
    no_argmax = torch.empty(0, dtype=torch.int32)
    args = (1.0, 3, 3, N, C, H, W, 2, True, "avg")
    det = dev.ops._roi_align_backward(dev.to(grad), dev.to(rois), dev.to(no_argmax), *args, True)
    oracle = ops._roi_align_backward(grad, rois, no_argmax, *args, False)
    assert oracle.abs().max() > 0
    torch.testing.assert_close(det.cpu() / magnitude, oracle / magnitude, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op", ["align-avg", "align-max", "pool"])
def test_deterministic_backward_nan_and_inf(dev, op):
    # NaN and inf in grad cannot be held in fixed point; they must come out where float sums put them.
    (N, C, H, W), rois = _crowded(torch.float32, num=40, seed=3)
    x_dev = on_device(dev, make_input((N, C, H, W), torch.float32, seed=2, distinct=True))
    grad = random_grad((40, C, 3, 3), torch.float32, 9)
    grad[0, 0, 0, 0] = float("nan")
    grad[1, 1, 1, 1] = float("inf")
    grad[2, 2, 2, 2] = float("-inf")
    grad[5, 3] = float("inf")  # and +inf with -inf on cells both reach
    grad[6, 3] = float("-inf")
    backward, oracle = _backward_on(dev, op, x_dev, dev.to(rois), grad, pooled=3)
    assert not torch.isfinite(oracle).all()
    det = backward(True)
    torch.testing.assert_close(det.cpu(), oracle, rtol=1e-5, atol=1e-5, equal_nan=True)
    again = backward(True)
    assert torch.equal(det.isnan(), again.isnan())
    assert torch.equal(det.nan_to_num(0.0), again.nan_to_num(0.0))


def test_python_layer_passes_the_deterministic_flag(dev, deterministic_algorithms):
    # torch.use_deterministic_algorithms(True) must reach the kernels: autograd's result is then the
    # deterministic kernel's, bit for bit.
    (N, C, H, W), rois = _crowded(torch.float32, num=300, seed=5)
    x = on_device(dev, make_input((N, C, H, W), torch.float32, seed=6)).requires_grad_(True)
    r_dev = dev.to(rois)
    torch.use_deterministic_algorithms(True)
    for op in ("align", "pool"):
        with dev.python_layer():
            out = roiops.roi_align(x, r_dev, 5, 1.0, 2, True) if op == "align" else roiops.roi_pool(x, r_dev, 5, 1.0)
            grad = dev.to(torch.randn(out.shape))
            (g1,) = torch.autograd.grad(out, x, grad, retain_graph=True)
            (g2,) = torch.autograd.grad(out, x, grad)
        assert torch.equal(g1, g2)
        if op == "align":
            no_argmax = dev.to(torch.empty(0, dtype=torch.int32))
            direct = dev.ops._roi_align_backward(grad, r_dev, no_argmax, 1.0, 5, 5, N, C, H, W, 2, True, "avg", True)
        else:
            arg = dev.ops.roi_pool(x.detach(), r_dev, 1.0, 5, 5)[1]
            direct = dev.ops._roi_pool_backward(grad, r_dev, arg, 1.0, 5, 5, N, C, H, W, True)
        assert torch.equal(g1, direct)


# ---- host synchronization ----------------------------------------------------------------------


def _sync_cases(dev):
    """(name, forward(), backward(deterministic, argmax)) of every op and mode on dev."""
    x = dev.to(make_input((2, 3, 9, 11), torch.float32, seed=1))
    rois = dev.to(make_rois(12, 2, 9, 11, 0.5, "mixed", torch.float32, seed=1))
    grad = dev.to(random_grad((12, 3, 3, 4), torch.float32, 2))
    cases = []
    for sr in (0, 2):
        for mode in ("avg", "max"):
            args = (0.5, 3, 4, sr, True, mode)
            fwd = lambda args=args: dev.ops.roi_align(x, rois, *args)  # noqa: E731
            bwd = (
                lambda det, arg, args=args: dev.ops._roi_align_backward(  # noqa: E731
                    grad, rois, arg, *args[:3], 2, 3, 9, 11, *args[3:], det
                )
            )
            cases.append((f"align-{mode}-sr{sr}", fwd, bwd))
    fwd = lambda: dev.ops.roi_pool(x, rois, 0.5, 3, 4)  # noqa: E731
    bwd = lambda det, arg: dev.ops._roi_pool_backward(grad, rois, arg, 0.5, 3, 4, 2, 3, 9, 11, det)  # noqa: E731
    cases.append(("pool", fwd, bwd))
    return cases


@pytest.fixture
def device_box_checks(emu):
    yield emu
    emu.ops.set_device_box_checks(True)
    emu.ops.set_capturing(False)


def test_host_syncs_forward_at_most_one_backward_none(device_box_checks):
    dev = device_box_checks
    for name, fwd, bwd in _sync_cases(dev):
        before = dev.ops.host_sync_count()
        out, arg = fwd()
        assert dev.ops.host_sync_count() - before == 1, name  # the box value check
        for det in (False, True):
            before = dev.ops.host_sync_count()
            gin = bwd(det, arg)
            assert dev.ops.host_sync_count() == before, (name, det)
            assert gin.shape == (2, 3, 9, 11) and out.numel() > 0
        # Not while a CUDA graph is being captured, nor with the checks off.
        for capturing, checks in ((True, True), (False, False)):
            dev.ops.set_capturing(capturing)
            dev.ops.set_device_box_checks(checks)
            before = dev.ops.host_sync_count()
            bwd(True, fwd()[1])
            assert dev.ops.host_sync_count() == before, (name, capturing, checks)
            dev.ops.set_capturing(False)
            dev.ops.set_device_box_checks(True)


BAD_BOXES = {
    "nan": (
        [[0, 1.0, 1.0, 5.0, 5.0], [0, 1.0, float("nan"), 5.0, 5.0], [5, 1.0, 1.0, 5.0, 5.0]],
        "box 1 has value nan in column 2",
    ),
    "batch": (
        [[0, 1.0, 1.0, 5.0, 5.0], [1.5, 1.0, 1.0, 5.0, 5.0], [0, 1.0, float("inf"), 5.0, 5.0]],
        r"batch index of box 1 \(boxes\[1, 0\]\) must be an integer in \[0, 2\), but it is 1.5",
    ),
    "samples": ([[0, 1.0, 1.0, 5.0, 5.0], [1, -1e6, -1e6, 1e6, 1e6]], "would take .* samples per bin"),
}


@pytest.mark.parametrize("bad", BAD_BOXES, ids=list(BAD_BOXES))
def test_bad_boxes_raise_the_cpu_errors(dev, bad):
    boxes, message = BAD_BOXES[bad]
    rois = torch.tensor(boxes)
    x = make_input((2, 3, 9, 11), torch.float32, seed=2)
    calls = [lambda o, r, t: o.roi_align(t, r, 1.0, 2, 2, 0, True, "avg")]
    if bad != "samples":
        calls.append(lambda o, r, t: o.roi_pool(t, r, 1.0, 2, 2))
    for call in calls:
        with pytest.raises(RuntimeError, match=message):
            call(ops, rois, x)
        with pytest.raises(RuntimeError, match=message):
            call(dev.ops, dev.to(rois), dev.to(x))


def test_unchecked_bad_boxes_are_skipped_not_followed(device_box_checks):
    # Without the value check (capture, or checks off) a kernel meets the bad boxes itself: a bad
    # batch index or too many samples gives NaN (argmax -1) in forward and nothing in backward,
    # and never a read or write out of bounds (the ASan run of these tests checks that too).
    dev = device_box_checks
    dev.ops.set_device_box_checks(False)
    x = make_input((2, 3, 9, 11), torch.float32, seed=3)
    rois = torch.tensor(
        [
            [0, 1.0, 1.0, 5.0, 5.0],
            [2, 1.0, 1.0, 5.0, 5.0],
            [-1, 1.0, 1.0, 5.0, 5.0],
            [0.5, 1.0, 1.0, 5.0, 5.0],
            [float("nan"), 1.0, 1.0, 5.0, 5.0],
            [1, -1e6, -1e6, 1e6, 1e6],
        ]
    )
    good = ops.roi_align(x, rois[:1], 1.0, 2, 2, 0, True, "max")
    for mode in ("avg", "max"):
        out, arg = dev.ops.roi_align(x, rois, 1.0, 2, 2, 0, True, mode)
        assert torch.equal(out[:1], ops.roi_align(x, rois[:1], 1.0, 2, 2, 0, True, mode)[0])
        assert out[1:].isnan().all()
        if mode == "max":
            assert torch.equal(arg[:1], good[1]) and (arg[1:] == -1).all()
        gin = dev.ops._roi_align_backward(torch.ones_like(out), rois, arg, 1.0, 2, 2, 2, 3, 9, 11, 0, True, mode, True)
        ref = ops._roi_align_backward(
            torch.ones_like(out[:1]), rois[:1], arg[:1], 1.0, 2, 2, 2, 3, 9, 11, 0, True, mode, False
        )
        torch.testing.assert_close(gin, ref)
    out, arg = dev.ops.roi_pool(x, rois[:5], 1.0, 2, 2)
    assert out[1:].isnan().all() and (arg[1:] == -1).all()
    gin = dev.ops._roi_pool_backward(torch.ones_like(out), rois[:5], arg, 1.0, 2, 2, 2, 3, 9, 11, False)
    ref = ops._roi_pool_backward(torch.ones_like(out[:1]), rois[:1], arg[:1], 1.0, 2, 2, 2, 3, 9, 11, False)
    torch.testing.assert_close(gin, ref)


def _needs_gpu(dev):
    if dev.torch_device != "cuda":
        pytest.skip("needs a GPU (emulated CUDA counts the host syncs instead, above)")


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
def test_cuda_no_sync_in_backward_nor_in_unchecked_forward(dev, deterministic):
    _needs_gpu(dev)
    x = dev.to(make_input((2, 3, 9, 11), torch.float32, seed=6)).requires_grad_(True)
    rois = dev.to(make_rois(12, 2, 9, 11, 0.5, "mixed", torch.float32, seed=6))
    out = roiops.roi_align(x, rois, (3, 4), 0.5, 0, True)
    previous = ops.set_device_box_checks(False)
    try:
        torch.cuda.set_sync_debug_mode("error")
        with roiops.deterministic_backward(deterministic):
            torch.autograd.grad(out, x, torch.ones_like(out))
            roiops.roi_align(x.detach(), rois, (3, 4), 0.5, 0, True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        ops.set_device_box_checks(previous)


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
def test_cuda_graph_capture_and_replay(dev, deterministic):
    _needs_gpu(dev)
    x = dev.to(make_input((2, 3, 9, 11), torch.float32, seed=7)).requires_grad_(True)
    rois = dev.to(make_rois(12, 2, 9, 11, 0.5, "inside", torch.float32, seed=7))
    grad = dev.to(random_grad((12, 3, 3, 4), torch.float32, 8))

    def step():
        out = roiops.roi_align(x, rois, (3, 4), 0.5, 0, True)
        return (out, *torch.autograd.grad(out, x, grad))

    with roiops.deterministic_backward(deterministic):
        side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, g = step()
        with torch.no_grad():
            x.copy_(dev.to(make_input((2, 3, 9, 11), torch.float32, seed=9)))
        graph.replay()
        ref_out, ref_g = step()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(g, ref_g)


def test_torch_compile_reduce_overhead(dev):
    # mode="reduce-overhead" runs the compiled step as CUDA graphs: it needs the sync-free path.
    _needs_gpu(dev)
    x = dev.to(make_input((2, 3, 9, 11), torch.float32, seed=10)).requires_grad_(True)
    rois = dev.to(make_rois(12, 2, 9, 11, 0.5, "inside", torch.float32, seed=10))

    def step(inp, boxes):
        out = roiops.roi_align(inp, boxes, (3, 4), 0.5, 2, True)
        return out, *torch.autograd.grad(out.square().sum(), inp)

    compiled = torch.compile(step, mode="reduce-overhead")
    for _ in range(3):  # warm-up, recording, replay
        got = compiled(x, rois)
    want = step(x, rois)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---- large tensors (64-bit indexing) -----------------------------------------------------------


@pytest.mark.skipif(os.environ.get("ROIOPS_TEST_LARGE") != "1", reason="set ROIOPS_TEST_LARGE=1 (needs ~20 GB)")
def test_more_than_two_to_the_31_outputs(dev):
    # K * C * 128 * 128 > 2^31 output elements: the kernels take their 64-bit index path. (The
    # emulated64 build takes that path on every input; emulating 2^31 threads would take hours.)
    if dev.emulated:
        pytest.skip("2^31 emulated threads take too long; emulated64 covers the 64-bit path")
    C, K, P = 16, 8300, 128
    x = dev.to(torch.randn(1, C, 16, 16))
    rois = torch.tensor([[0, 1.0, 2.0, 13.0, 11.0]]).repeat(K, 1)
    rois[:, 1] += torch.linspace(0, 2, K)
    rois = dev.to(rois)
    out, _ = dev.ops.roi_align(x, rois, 1.0, P, P, 1, True, "avg")
    assert out.numel() > 2**31
    pick = torch.tensor([0, K // 2, K - 1])
    ref, _ = ops.roi_align(x.cpu(), rois.cpu()[pick], 1.0, P, P, 1, True, "avg")
    torch.testing.assert_close(out[dev.to(pick)].cpu(), ref)
    grad = torch.ones_like(out)
    del out
    no_argmax = dev.to(torch.empty(0, dtype=torch.int32))
    # Every bin hands on exactly its unit of gradient (all samples lie inside the map): the total is
    # K * C * P * P. Fixed point sums it almost exactly; float atomics only roughly (cells near 5e5).
    for deterministic, rtol in ((True, 1e-6), (False, 5e-2)):
        gin = dev.ops._roi_align_backward(grad, rois, no_argmax, 1.0, P, P, 1, C, 16, 16, 1, True, "avg", deterministic)
        torch.testing.assert_close(gin.double().sum().item(), float(K * C * P * P), rtol=rtol, atol=0)


# ---- autocast ----------------------------------------------------------------------------------


def _check_autocast(device_type, low, to=lambda t: t, context=contextlib.nullcontext):
    x32 = to(make_input((2, 3, 10, 12), torch.float32, seed=8))
    rois32 = to(make_rois(10, 2, 10, 12, 0.5, "inside", torch.float32, seed=8))
    x_low = x32.to(low)

    with context(), torch.autocast(device_type, dtype=low):
        # A low-precision input runs in float32 and comes back in its own dtype; boxes of another
        # float dtype are accepted (both are cast), which outside autocast is a dtype error.
        out, arg = ops.roi_align(x_low, rois32, 0.5, 3, 3, 2, True, "max")
        pooled, pool_arg = ops.roi_pool(x_low, rois32, 0.5, 3, 3)
        # float32 stays float32, float64 stays float64.
        out32 = roiops.roi_align(x32, rois32, 3, 0.5, 2, True)
        out64 = roiops.roi_align(x32.double(), rois32.double(), 3, 0.5, 2, True)
        x_grad = x_low.detach().requires_grad_(True)
        out_g = roiops.roi_align(x_grad, rois32.to(low), 3, 0.5, 2, True)
    with context():
        with pytest.raises((TypeError, RuntimeError)):
            ops.roi_align(x_low, rois32, 0.5, 3, 3, 2, True, "max")

        ref, ref_arg = ops.roi_align(x_low.float(), rois32, 0.5, 3, 3, 2, True, "max")
        ref_pool, ref_pool_arg = ops.roi_pool(x_low.float(), rois32, 0.5, 3, 3)
        ref32 = roiops.roi_align(x32, rois32, 3, 0.5, 2, True)
        # Autograd records the float32 op: the gradient arrives in the input's dtype.
        (g,) = torch.autograd.grad(out_g.float().sum(), x_grad)
        x_ref = x_low.float().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(roiops.roi_align(x_ref, rois32.to(low).float(), 3, 0.5, 2, True).sum(), x_ref)
    assert out.dtype == low and arg.dtype == torch.int32
    assert torch.equal(out, ref.to(low)) and torch.equal(arg, ref_arg)
    assert pooled.dtype == low and torch.equal(pooled, ref_pool.to(low)) and torch.equal(pool_arg, ref_pool_arg)
    assert out32.dtype == torch.float32 and torch.equal(out32, ref32)
    assert out64.dtype == torch.float64
    assert out_g.dtype == low and g.dtype == low
    torch.testing.assert_close(g, g_ref.to(low))


def test_autocast_cpu():
    _check_autocast("cpu", torch.bfloat16)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_autocast(dev, low):
    # Emulated CUDA runs on CPU tensors, so CPU autocast applies there (its kernels are the same).
    _check_autocast(dev.torch_device, low, dev.to, dev.python_layer)
