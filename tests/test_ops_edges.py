"""The standard tests of every op at the edges, written once: gradcheck, opcheck, torch.compile, empty
inputs, the public functions' argument errors, hostile values (NaN / inf features, huge boxes far
outside the map) and autocast; over the op table (tests/op_table.py) and the devices (tests/devices.py).
"""

import time

import pytest
import torch

from devices import CPU
from helpers import input_grad, is_channels_last, make_input, make_rois, on_device, random_grad, to_layout
from op_table import OP_TABLE, over


def _needs_registrations(dev, what):
    # The emulated namespaces have kernels only: the fake kernels, autograd and autocast that these
    # tests go through are registered for torch.ops.roiops, whose kernels are the CPU's and CUDA's.
    if dev.emulated:
        pytest.skip(f"{what} needs the roiops registrations (the cpu parameter covers the same Python layer)")


# ---- gradcheck ---------------------------------------------------------------------------------

GRADCHECK_BOXES = torch.tensor(
    [
        [0, 0.3, 0.7, 4.6, 5.2],
        [0, -2.1, 1.3, 3.4, 7.9],
        [0, 2.2, -0.6, 9.1, 3.3],
        [0, 1.1, -0.4, 6.5, 3.3],
        [0, 2.2, 2.4, 2.9, 4.9],
        [0, 1, 2, 6, 5],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("deterministic", [False, True], ids=["fast", "deterministic"])
def test_gradcheck(op, dev, deterministic, restore_threads, deterministic_algorithms):
    if not op.gradcheck:
        pytest.skip(f"{op.id} is not differentiable in its input")
    torch.set_num_threads(1)  # hundreds of tiny calls: no thread-pool overhead on a busy machine
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Distinct, well separated values keep a max away from ties; otherwise the ops are linear in input.
    x = make_input((1, op.channels(2, output_size=(2, 3)), 6, 7), torch.float64, seed=31, distinct=True)
    x = on_device(dev, x).requires_grad_(True)
    # The deterministic backward must also be exactly reentrant (nondet_tol=0); float atomics need not be.
    nondet_tol = 0.0 if deterministic else 1e-10
    for kwargs in over(op.gradcheck_sweep, output_size=(2, 3), spatial_scale=1.0):
        boxes = GRADCHECK_BOXES.clone()
        boxes[:, 1:] /= kwargs["spatial_scale"]
        boxes = dev.to(boxes)
        with dev.python_layer():
            assert torch.autograd.gradcheck(
                lambda t: op(t, boxes, **kwargs), (x,), eps=1e-6, atol=1e-6, nondet_tol=nondet_tol
            )


# ---- opcheck and torch.compile ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(op, dev, layout):
    _needs_registrations(dev, "opcheck")
    x = make_input((2, op.channels(3, output_size=(2, 3)), 6, 7), seed=51, distinct=True)  # (both sizes: 6 bins)
    x = on_device(dev, x, layout).requires_grad_(True)
    rois = dev.to(op.rois(make_rois(5, 2, 6, 7, 1.0, "mixed", seed=52)))
    for kwargs in (
        dict(output_size=(2, 3), spatial_scale=1.0),
        dict(output_size=(3, 2), spatial_scale=0.5, **op.short_sweep[0]),
    ):
        torch.library.opcheck(op.forward_op(dev).default, (x, rois, *op.op_args(**kwargs)))


def test_compile_fullgraph_channels_last_list_of_boxes(op, dev):
    # aot_eager: dynamo, the fake kernels and the autograd formula, without code generation (cheap).
    _needs_registrations(dev, "torch.compile")
    torch._dynamo.reset()

    def f(x, b0, b1):
        return op(x, [b0, b1], output_size=2, spatial_scale=1.0)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = on_device(dev, make_input((2, op.channels(3, output_size=2), 8, 8), seed=93, distinct=True), "channels_last")
    b0 = dev.to(make_rois(3, 1, 8, 8, 1.0, "inside", seed=94)[:, 1:])
    b1 = dev.to(make_rois(2, 1, 8, 8, 1.0, "partial", seed=95)[:, 1:])
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    eager, comp = f(xe, b0, b1), compiled(xc, b0, b1)
    assert comp.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(comp, eager, rtol=0, atol=0)
    g = torch.randn(eager.shape).to(eager.device)
    torch.testing.assert_close(input_grad(comp, xc, g), input_grad(eager, xe, g), rtol=0, atol=0)


def test_inductor_compiles_every_op_in_one_graph(dev):
    # One inductor compile of every op of the table, forward and backward (one graph: compiles are slow).
    # It returns the op outputs as they are, so that inductor has little code of its own to generate.
    _needs_registrations(dev, "torch.compile")
    torch._dynamo.reset()

    def pooled_features(x, rois):
        # (Each op reads the channels it needs: position-sensitive ops more than the others.)
        return tuple(op(x[:, : op.channels(4)], rois) for op in OP_TABLE)

    compiled = torch.compile(pooled_features, fullgraph=True)
    x = make_input((2, max(op.channels(4) for op in OP_TABLE), 9, 11), seed=91, distinct=True)
    rois = make_rois(7, 2, 9, 11, 0.5, "mixed", seed=92)
    xe, xc = (dev.to(x).requires_grad_(True) for _ in range(2))
    eager = pooled_features(xe, dev.to(rois))
    comp = compiled(xc, dev.to(rois))
    grads = [dev.to(torch.randn(t.shape, generator=torch.Generator().manual_seed(i))) for i, t in enumerate(eager)]
    for c, e in zip(comp, eager):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)
    gc = torch.autograd.grad(comp, xc, grads)[0]
    torch.testing.assert_close(gc, torch.autograd.grad(eager, xe, grads)[0], rtol=1e-6, atol=1e-6)
    # Against the reference, too (the compiled graph runs the same kernels, so this pins the values).
    xr = x.clone().requires_grad_(True)
    ref = tuple(op.call_reference(xr[:, : op.channels(4)], rois) for op in OP_TABLE)
    for c, r in zip(comp, ref):
        torch.testing.assert_close(c.cpu(), r, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(ref, xr, [g.cpu() for g in grads])[0]
    torch.testing.assert_close(gc.cpu(), g_ref, rtol=1e-5, atol=1e-5)


# ---- empty inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize(
    "shape, num",
    [((2, 3, 6, 6), 0), ((0, 3, 6, 6), 0), ((1, 0, 6, 6), 3), ((1, 3, 0, 6), 3), ((1, 3, 6, 0), 3)],
    ids=["no-rois", "no-images", "no-channels", "no-rows", "no-columns"],
)
def test_empty_inputs(op, dev, shape, num, layout):
    # An empty map axis pools nothing: zeros, and no gradient; the compiled ops of every device give
    # what the CPU kernels give (argmax included), both backward kernels too.
    kwargs = dict(output_size=(2, 3), spatial_scale=0.5)
    N, C, H, W = shape
    shape = (N, op.channels(C, **kwargs), H, W)
    x = to_layout(torch.randn(shape), layout)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 3.0]] * num).reshape(num, 5)
    x_dev, r_dev = on_device(dev, x, layout).requires_grad_(True), dev.to(rois)
    with dev.python_layer():
        out = op(x_dev, r_dev, **kwargs)
        grad = input_grad(out, x_dev, torch.ones_like(out))
    assert out.shape == (num, C, 2, 3) and out.dtype == x.dtype and torch.count_nonzero(out) == 0
    assert grad.shape == shape and torch.count_nonzero(grad) == 0
    if num == 0:
        assert op.call_reference(x, rois, **kwargs).shape == out.shape

    args = op.op_args(**kwargs)
    op_rois = op.rois(rois)  # (the compiled ops take the op's own rows)
    out_c, arg_c = op.forward_op(CPU)(x, op_rois, *args)
    out_d, arg_d = op.forward_op(dev)(x_dev.detach(), dev.to(op_rois), *args)
    assert out_d.shape == out_c.shape == (num, C, 2, 3)
    assert torch.equal(out_d.cpu(), out_c) and torch.equal(arg_d.cpu(), arg_c)
    gin_c = op.backward_op(CPU)(torch.ones(out_c.shape), op_rois, arg_c, *op.backward_args(shape, False, **kwargs))
    for deterministic in (False, True):
        bwd = op.backward_args(shape, deterministic, **kwargs)
        gin_d = op.backward_op(dev)(dev.to(torch.ones(out_c.shape)), dev.to(op_rois), arg_d, *bwd)
        assert gin_d.shape == shape and torch.equal(gin_d.cpu(), gin_c)


# ---- argument errors of the public functions ---------------------------------------------------

X = torch.randn(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0], [1, 0.0, 2.0, 7.0, 4.0]])


def _bad_rois(value, col):
    r = ROIS.clone()
    r[1, col] = value
    return r


# (overrides, expected exception, word the message must contain); value checks (batch index, finite
# coordinates) run in the compiled kernels, so on every device (on CUDA with the blocking check on:
# its sync-free default gives NaN rows instead, tested in test_cuda.py).
ARGUMENT_ERRORS = [
    (dict(input=[[1.0]]), TypeError, "input"),
    (dict(input=X.numpy()), TypeError, "input"),
    (dict(input=torch.randn(3, 8, 8)), ValueError, "input"),
    (dict(input=torch.randn(1, 2, 3, 8, 8)), ValueError, "input"),
    (dict(input=torch.zeros(2, 3, 8, 8, dtype=torch.int64), boxes=ROIS.long()), TypeError, "input"),
    (dict(input=torch.zeros(2, 3, 8, 8, dtype=torch.int32), boxes=ROIS.int()), TypeError, "input"),
    (dict(boxes=ROIS[:, 1:]), ValueError, "boxes"),  # Tensor[K, 4]
    (dict(boxes=ROIS[0]), ValueError, "boxes"),  # 1-D
    (dict(boxes=torch.zeros(2, 5, 1)), ValueError, "boxes"),
    (dict(boxes=[ROIS, ROIS]), ValueError, "boxes"),  # list of Tensor[L, 5]
    (dict(boxes=[[1.0, 2.0, 3.0, 4.0]]), TypeError, "boxes"),  # list of lists
    (dict(boxes="boxes"), TypeError, "boxes"),
    (dict(boxes=ROIS.double()), TypeError, "boxes"),  # dtype mismatch
    (dict(boxes=[ROIS[:, 1:].double()]), TypeError, "boxes"),
    (dict(boxes=ROIS.to("meta")), ValueError, "boxes"),  # device mismatch
    (dict(boxes=_bad_rois(2, 0)), ValueError, "batch index"),  # out of range
    (dict(boxes=_bad_rois(-1, 0)), ValueError, "batch index"),
    (dict(boxes=_bad_rois(0.5, 0)), ValueError, "batch index"),
    (dict(boxes=_bad_rois(float("nan"), 1)), ValueError, "boxes"),
    (dict(boxes=_bad_rois(float("nan"), 0)), ValueError, "box"),
    (dict(boxes=_bad_rois(float("inf"), 3)), ValueError, "boxes"),
    (dict(boxes=_bad_rois(float("-inf"), 4)), ValueError, "boxes"),
    (dict(output_size=2.0), TypeError, "output_size"),
    (dict(output_size=True), TypeError, "output_size"),
    (dict(output_size=(2, 2, 2)), TypeError, "output_size"),
    (dict(output_size=(2, 2.5)), TypeError, "output_size"),
    (dict(output_size="2"), TypeError, "output_size"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=-3), ValueError, "output_size"),
    (dict(output_size=(2, 0)), ValueError, "output_size"),
    (dict(spatial_scale=0.0), ValueError, "spatial_scale"),
    (dict(spatial_scale=-0.25), ValueError, "spatial_scale"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(spatial_scale=float("inf")), ValueError, "spatial_scale"),
    (dict(spatial_scale="1"), TypeError, "spatial_scale"),
    (dict(spatial_scale=True), TypeError, "spatial_scale"),
]


def _case_id(case):
    overrides, exc, word = case
    ((k, v),) = overrides.items() if len(overrides) == 1 else [(",".join(overrides), "")]
    text = repr(v) if not isinstance(v, torch.Tensor) else f"tensor{tuple(v.shape)}{v.dtype}".replace("torch.", "")
    return f"{k}={text[:24]}"


def _to(dev, value):
    """value with its CPU tensors (alone or in a list) on dev; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return dev.to(value)
    if isinstance(value, list):
        return [_to(dev, v) for v in value]
    return value


def _check_argument_error(op, dev, case):
    overrides, exc, word = case
    x = X.repeat(1, op.channels(1, output_size=2), 1, 1)  # (channels for a position-sensitive op too)
    args = {**op.kwargs(output_size=2, spatial_scale=1.0), "input": x, "boxes": ROIS, **overrides}
    args["boxes"] = op.rois(args["boxes"])
    args = {name: _to(dev, value) for name, value in args.items()}
    with pytest.raises(exc, match=word), dev.python_layer(), dev.box_checks():
        # (input and boxes by position: an op may name its boxes otherwise, rois for roi_align_rotated)
        op.public(args.pop("input"), args.pop("boxes"), **args)


@pytest.mark.parametrize("case", ARGUMENT_ERRORS, ids=[_case_id(c) for c in ARGUMENT_ERRORS])
def test_argument_errors(op, dev, case):
    _check_argument_error(op, dev, case)


def test_argument_errors_of_the_op_own_arguments(op, dev):
    if not op.argument_errors:
        pytest.skip(f"{op.id} has no arguments of its own")
    for case in op.argument_errors:
        _check_argument_error(op, dev, case)


# ---- hostile values ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_inf_and_nan_features(op, dev, layout):
    # The max rule at its edges: bins of -inf (the first sample/cell counts: -inf, argmax 0), a NaN
    # that comes first or later (it wins either way), ties between equal values (the first wins); an
    # average of inf and -inf is NaN. Against the reference (cpu), the CPU kernels (argmax too) elsewhere.
    # (Channels in groups of 4, as many as a position-sensitive op reads at both sizes: 4 * 36.)
    x = torch.randn(1, op.channels(4, output_size=6), 8, 8, generator=torch.Generator().manual_seed(5))
    x = x.double().round().float()
    x[:, 0::4, :4, :4] = float("-inf")
    x[:, 1::4, 0, 0] = float("nan")
    x[:, 2::4, 5, 5] = float("nan")
    x[:, 2::4, 6, 1] = float("inf")
    x[:, 3::4] = 1.0
    rois = torch.tensor(
        [[0, 0, 0, 3, 3], [0, 0, 0, 7, 7], [0, 4, 4, 7, 7], [0, -2, -2, 2, 2], [0, 1.5, 0.5, 6.2, 5.1]],
        dtype=torch.float32,
    )
    op_rois = op.rois(rois)
    for kwargs in [kw for size in (2, 3) for kw in over(op.sweep, output_size=size, spatial_scale=1.0)]:
        args = op.op_args(**kwargs)
        channels = op.channels(4, **kwargs)
        x_cpu, x_dev = to_layout(x[:, :channels], layout), on_device(dev, x[:, :channels], layout)
        out_d, arg_d = op.forward_op(dev)(x_dev, dev.to(op_rois), *args)
        if dev is CPU:
            ref = op.call_reference(x_cpu, rois, **kwargs)
            torch.testing.assert_close(out_d, ref, equal_nan=True, **op.forward_tolerance(x.dtype))
        else:
            out_c, arg_c = op.forward_op(CPU)(x_cpu, op_rois, *args)
            torch.testing.assert_close(out_d.cpu(), out_c, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(arg_d.cpu(), arg_c)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_huge_boxes_far_outside_the_map_take_milliseconds(op, dev, layout):
    # 28,000-px boxes on a 64 x 64 map: adaptive sampling takes ~4000 x 4000 samples per bin, of which the
    # kernels visit only those that can touch the map (once ~30 s per emulated call; a GPU would be as
    # busy). Against the CPU kernels (on cpu: test_absurd_boxes.py checks them against the reference,
    # which would take minutes here).
    if dev is CPU:
        pytest.skip("the CPU kernels are the oracle here; tests/test_absurd_boxes.py checks them")
    if not op.clips_samples:
        pytest.skip(f"{op.id} refuses absurd adaptive grids (its sampling limit): tests/test_{op.name}.py")
    x = (
        make_input((1, op.channels(16, output_size=7), 64, 64), torch.float32, seed=4) - 1
    )  # outside samples win max bins
    x_cpu, x_dev = to_layout(x, layout), on_device(dev, x, layout)
    rois = torch.tensor(
        [
            [0, -14000.0, -13000.0, 14000.0, 15000.0],
            [0, -14000.0, 20.0, 14000.0, 50.0],
            [0, 40.0, 50.0, 28040.0, 28050.0],
            [0, -30000.0, -2000.0, -2000.0, 26000.0],
        ]
    )
    for kwargs in over(op.short_sweep, output_size=7, spatial_scale=1.0):
        args = op.op_args(**kwargs)
        out_c, arg_c = op.forward_op(CPU)(x_cpu, rois, *args)
        grad = random_grad(out_c.shape, torch.float32, 3, channels_last=is_channels_last(out_c))
        gin_c = op.backward_op(CPU)(grad, rois, arg_c, *op.backward_args(x.shape, False, **kwargs))

        start = time.perf_counter()
        out_d, arg_d = op.forward_op(dev)(x_dev, dev.to(rois), *args)
        gin_d = {
            det: op.backward_op(dev)(dev.to(grad), dev.to(rois), arg_d, *op.backward_args(x.shape, det, **kwargs))
            for det in (False, True)
        }
        if dev.torch_device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        assert elapsed < 2.0, f"{kwargs}: {elapsed:.2f} s"
        assert torch.equal(out_d.cpu(), out_c) and torch.equal(arg_d.cpu(), arg_c)
        for det in (False, True):
            torch.testing.assert_close(gin_d[det].cpu(), gin_c, rtol=1e-5, atol=1e-6)


# ---- autocast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_autocast(op, dev, low):
    # Emulated CUDA runs on CPU tensors, so CPU autocast applies there (its kernels are the same).
    registered = op.forward_op(CPU)  # torch.ops.roiops: its autocast kernels (python_layer routes the rest)
    x32 = dev.to(make_input((2, op.channels(3), 10, 12), torch.float32, seed=8, distinct=op.distinct_input))
    boxes32 = make_rois(10, 2, 10, 12, 0.5, "inside", torch.float32, seed=8)
    rois32 = dev.to(boxes32)
    op_rois32 = dev.to(op.rois(boxes32))  # (the compiled op's own rows)
    x_low = x32.to(low)
    args = op.op_args()

    with dev.python_layer(), torch.autocast(dev.torch_device, dtype=low):
        # A low-precision input runs in float32 and comes back in its own dtype; boxes of another
        # float dtype are accepted (both are cast), which outside autocast is a dtype error.
        out, arg = registered(x_low, op_rois32, *args)
        # float32 stays float32, float64 stays float64.
        out32 = op(x32, rois32)
        out64 = op(x32.double(), rois32.double())
        x_grad = x_low.detach().requires_grad_(True)
        out_g = op(x_grad, rois32.to(low))
    with dev.python_layer():
        with pytest.raises((TypeError, RuntimeError)):
            registered(x_low, op_rois32, *args)
        ref, ref_arg = registered(x_low.float(), op_rois32, *args)
        ref32 = op(x32, rois32)
        # Autograd records the float32 op: the gradient arrives in the input's dtype.
        (g,) = torch.autograd.grad(out_g.float().sum(), x_grad)
        x_ref = x_low.float().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(op(x_ref, rois32.to(low).float()).sum(), x_ref)
    assert out.dtype == low and arg.dtype == torch.int32
    assert torch.equal(out, ref.to(low)) and torch.equal(arg, ref_arg)
    assert out32.dtype == torch.float32 and torch.equal(out32, ref32)
    assert out64.dtype == torch.float64
    assert out_g.dtype == low and g.dtype == low
    torch.testing.assert_close(g, g_ref.to(low))
