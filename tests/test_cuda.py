"""What only the CUDA kernels have: the emulated launcher, the deterministic backward (bitwise
repeatable whatever the thread order, close to the fast path, NaN/inf rules, fixed-point scales),
host syncs and the device box checks, CUDA graphs, and 64-bit indexing. The standard tests (the
CUDA kernels against the CPU kernels and the reference, gradcheck, empty inputs, hostile values,
autocast) run over the op table and these devices in test_ops.py and test_ops_edges.py.

Every test takes the device as a parameter:
- "cuda": a GPU and roiops built with CUDA (skipped otherwise);
- "emulated": the same CUDA sources compiled for the CPU (csrc/common/cuda/emulation.h), ops under
  torch.ops.roiops_emu, built by scripts/build_emulated_cuda.sh (skipped if it was not run; CI runs it);
- "emulated64": the same with every launch on the 64-bit index kernels and only 3 blocks per launch.
The emulated libraries are looked up in $ROIOPS_EMULATED_CUDA_DIR (default build/emulated_cuda).
"""

import os

import pytest
import torch

import roiops

from devices import CPU, CUDA_DEVICES, select
from helpers import is_channels_last, make_input, make_rois, on_device, random_grad, seed_of, tolerances
from op_table import OP_TABLE, OPS, over

ops = torch.ops.roiops
DEVICES = CUDA_DEVICES


@pytest.fixture(params=DEVICES)
def dev(request):
    return select(request)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]


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
    assert dev.ops.launch_count() == before + 4  # one kernel per forward and per backward (no box check)
    roiops.roi_align(x, rois, 3, 1.0, 2, True)  # outside the context: the CPU kernel
    assert dev.ops.launch_count() == before + 4


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
    """backward(deterministic) of op (a row of the op table) on dev for an upstream gradient (a CPU
    tensor), and the CPU oracle."""
    kwargs = dict(output_size=pooled, spatial_scale=1.0)
    r_dev = op.rois(r_dev)  # (the compiled op's own rows)
    _, arg = op.forward_op(dev)(x_dev, r_dev, *op.op_args(**kwargs))
    oracle = op.backward_op(CPU)(grad, r_dev.cpu(), arg.cpu(), *op.backward_args(x_dev.shape, False, **kwargs))
    grad_d = dev.to(grad)

    def backward(deterministic):
        return op.backward_op(dev)(grad_d, r_dev, arg, *op.backward_args(x_dev.shape, deterministic, **kwargs))

    return backward, oracle


def _over_ops(test):
    return pytest.mark.parametrize("op", OP_TABLE, ids=lambda op: op.id)(test)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@_over_ops
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_deterministic_backward_is_bitwise_repeatable(dev, dtype, op, channels_last):
    (N, C, H, W), rois = _crowded(dtype, seed=seed_of(op.id))
    x = make_input((N, op.channels(C, output_size=5), H, W), dtype, seed=1, distinct=True)
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
@_over_ops
def test_thread_order_changes_no_deterministic_bit(emu, dtype, op):
    # The launcher runs the same launches with the (block, thread) pairs forward, reversed and
    # shuffled. Forward results and the deterministic backward must not change by a bit; the
    # float-atomic backward may (that is why the deterministic one exists), within tolerance.
    dev = emu
    (N, C, H, W), rois = _crowded(dtype, num=300, seed=seed_of("order", op.id))
    x_dev = dev.to(make_input((N, op.channels(C, output_size=5), H, W), dtype, seed=2, distinct=True))
    grad = random_grad((rois.shape[0], C, 5, 5), dtype, 8)
    results = {}
    for order, seed in (("forward", 0), ("reversed", 0), ("shuffled", 1), ("shuffled", 2)):
        dev.ops.set_launch_order(order, seed)
        backward, oracle = _backward_on(dev, op, x_dev, dev.to(rois), grad)
        forward = op.forward_op(dev)(x_dev, dev.to(op.rois(rois)), *op.op_args(output_size=5, spatial_scale=1.0))
        results[order, seed] = forward, backward(True), backward(False)
    (out0, arg0), det0, fast0 = results["forward", 0]
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else tolerances(dtype)
    for (out, arg), det, fast in results.values():
        assert torch.equal(out, out0) and torch.equal(arg, arg0)
        assert torch.equal(det, det0)
        torch.testing.assert_close(fast, fast0, **tol)
    torch.testing.assert_close(det0, oracle, **tol)
    if dtype == torch.float32 and op is OPS["roi_align-avg"]:
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


@_over_ops
def test_deterministic_backward_nan_and_inf(dev, op):
    # NaN and inf in grad cannot be held in fixed point; they must come out where float sums put them.
    (N, C, H, W), rois = _crowded(torch.float32, num=40, seed=3)
    x_dev = on_device(dev, make_input((N, op.channels(C, output_size=3), H, W), torch.float32, seed=2, distinct=True))
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
    x_all = on_device(dev, make_input((N, 25 * C, H, W), torch.float32, seed=6))
    r_dev = dev.to(rois)
    torch.use_deterministic_algorithms(True)
    kwargs = dict(output_size=5, spatial_scale=1.0)
    for op in OP_TABLE:
        x = x_all[:, : op.channels(C, **kwargs)].detach().requires_grad_(True)
        with dev.python_layer():
            out = op(x, r_dev, **kwargs)
            grad = dev.to(torch.randn(out.shape))
            (g1,) = torch.autograd.grad(out, x, grad, retain_graph=True)
            (g2,) = torch.autograd.grad(out, x, grad)
        assert torch.equal(g1, g2)
        arg = op.forward_op(dev)(x.detach(), op.rois(r_dev), *op.op_args(**kwargs))[1]
        direct = op.backward_op(dev)(grad, op.rois(r_dev), arg, *op.backward_args(x.shape, True, **kwargs))
        assert torch.equal(g1, direct), op.id


# ---- host synchronization ----------------------------------------------------------------------


def _sync_cases(dev):
    """(name, forward(), backward(deterministic, argmax)) of every op of the table, in each setting, on dev."""
    x_all = dev.to(make_input((2, 36, 9, 11), torch.float32, seed=1))
    rois = dev.to(make_rois(12, 2, 9, 11, 0.5, "mixed", torch.float32, seed=1))
    grad = dev.to(random_grad((12, 3, 3, 4), torch.float32, 2))
    cases = []
    for op in OP_TABLE:
        for kwargs in over(op.short_sweep, output_size=(3, 4), spatial_scale=0.5):
            x = x_all[:, : op.channels(3, **kwargs)].contiguous()
            r = op.rois(rois)
            fwd = lambda op=op, kwargs=kwargs, x=x, r=r: op.forward_op(dev)(x, r, *op.op_args(**kwargs))
            bwd = lambda det, arg, op=op, kwargs=kwargs, x=x, r=r: op.backward_op(dev)(
                grad, r, arg, *op.backward_args(x.shape, det, **kwargs)
            )
            cases.append((f"{op.id} {kwargs}", fwd, bwd))
    return cases


@pytest.fixture
def device_box_checks(emu):
    """An emulated device whose box-check setting and capture state are restored afterwards."""
    previous = emu.ops.set_device_box_checks(False)
    yield emu
    emu.ops.set_device_box_checks(previous)
    emu.ops.set_capturing(False)


def test_host_syncs_none_by_default_one_forward_on_demand(device_box_checks):
    dev = device_box_checks
    for name, fwd, bwd in _sync_cases(dev):
        # The default: no call waits for the GPU, forward or backward.
        before = dev.ops.host_sync_count()
        out, arg = fwd()
        for det in (False, True):
            gin = bwd(det, arg)
            assert gin.shape[0] == 2 and gin.shape[2:] == (9, 11) and out.numel() > 0
        assert dev.ops.host_sync_count() == before, name
        # The blocking check on demand: one sync in the forward, none in the backward ...
        dev.ops.set_device_box_checks(True)
        before = dev.ops.host_sync_count()
        out, arg = fwd()
        assert dev.ops.host_sync_count() - before == 1, name
        bwd(True, arg)
        assert dev.ops.host_sync_count() - before == 1, name
        # ... and none while a CUDA graph is being captured.
        dev.ops.set_capturing(True)
        before = dev.ops.host_sync_count()
        bwd(True, fwd()[1])
        assert dev.ops.host_sync_count() == before, name
        dev.ops.set_capturing(False)
        dev.ops.set_device_box_checks(False)


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
def test_bad_boxes_nan_by_default_cpu_errors_on_demand(dev, bad):
    boxes, message = BAD_BOXES[bad]
    rois = torch.tensor(boxes)
    x = make_input((2, 3, 9, 11), torch.float32, seed=2)
    calls = [lambda o, r, t: o.roi_align(t, r, 1.0, 2, 2, 0, True, "avg")]
    if bad != "samples":
        calls.append(lambda o, r, t: o.roi_pool(t, r, 1.0, 2, 2))
    previous = dev.ops.set_device_box_checks(False)
    try:
        for call in calls:
            with pytest.raises(RuntimeError, match=message):
                call(ops, rois, x)
            # The sync-free default: the first bad box's row is NaN, the good box's is the CPU's.
            out = call(dev.ops, dev.to(rois), dev.to(x))[0].cpu()
            assert out[1].isnan().all()
            torch.testing.assert_close(out[:1], call(ops, rois[:1], x)[0])
            dev.ops.set_device_box_checks(True)
            with pytest.raises(RuntimeError, match=message):
                call(dev.ops, dev.to(rois), dev.to(x))
            dev.ops.set_device_box_checks(False)
    finally:
        dev.ops.set_device_box_checks(previous)


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
