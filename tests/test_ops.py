"""The standard tests of every op, written once (as torchvision's RoIOpTester): each runs over the op
table (tests/op_table.py) and the devices (tests/devices.py: cpu, emulated, emulated64, cuda).

Here: the public functions against the oracle (the reference on the cpu parameter, the CPU kernels on
the others) over parameters, box kinds, shapes, dtypes and layouts; the compiled ops of the CUDA
devices against the CPU kernels (argmax, both backward kernels, layouts). Gradcheck, opcheck,
torch.compile, empty inputs, validation, hostile values and autocast: test_ops_edges.py.
"""

import pytest
import torch

from devices import CPU, CUDA_DEVICES, select
from helpers import (
    BOX_KINDS,
    LAYOUTS,
    input_grad,
    is_channels_last,
    make_input,
    make_rois,
    on_device,
    random_grad,
    seed_of,
    to_layout,
    tolerances,
)
from op_table import check_against_oracle, oracle, over

SCALES = (1.0, 0.5, 0.25, 1.0 / 16)
HALF_TYPES = [torch.bfloat16, torch.float16]
DTYPES = [torch.float32, torch.float64, *HALF_TYPES]


def _dtype_id(dtype):
    return {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]


@pytest.fixture(params=CUDA_DEVICES)
def cuda_dev(request):
    """A CUDA device (real or emulated): its kernels are checked against the CPU kernels."""
    return select(request)


# ---- the public functions against the oracle ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"scale{s:g}")
def test_random_boxes_match_the_oracle(op, dev, dtype, scale):
    seed = seed_of(op.id, str(dtype), scale)
    x = make_input((2, op.channels(3), 9, 11), dtype, seed=seed, distinct=op.distinct_input)
    rois = make_rois(20, 2, 9, 11, scale, "mixed", dtype, seed=seed)
    for kwargs in over(op.sweep, spatial_scale=scale):
        check_against_oracle(op, dev, x, rois, seed=seed, **kwargs)


@pytest.mark.parametrize("kind", BOX_KINDS)
def test_box_kinds_match_the_oracle(op, dev, kind):
    x = make_input((2, op.channels(4, output_size=(2, 3)), 8, 10), seed=3, distinct=op.distinct_input)
    rois = make_rois(12, 2, 8, 10, 0.5, kind, seed=BOX_KINDS.index(kind))
    for kwargs in over(op.sweep, output_size=(2, 3)):
        out, gx = check_against_oracle(op, dev, x, rois, **kwargs)
        if kind == "outside" and op.outside_stays_outside:  # (not only close to the oracle: nothing at all)
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
def test_shapes_match_the_oracle(op, dev, shape, output_size):
    N, C, H, W = shape
    x = make_input((N, op.channels(C, output_size=output_size), H, W), seed=H * W, distinct=op.distinct_input)
    rois = make_rois(10, N, H, W, 0.25, "mixed", seed=C)
    for kwargs in over(op.short_sweep, output_size=output_size, spatial_scale=0.25):
        check_against_oracle(op, dev, x, rois, **kwargs)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=_dtype_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_dtypes_match_the_oracle(op, dev, dtype, layout):
    # The reference runs in float32 on the same (rounded) inputs and boxes; a max is exact even so.
    x = make_input((2, op.channels(3, output_size=3), 9, 11), dtype, seed=11, distinct=op.distinct_input)
    rois = make_rois(16, 2, 9, 11, 0.5, "mixed", dtype, seed=12)
    for kwargs in over(op.short_sweep, output_size=3):
        check_against_oracle(op, dev, x, rois, layout, torch.float32, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_dtype_id)
def test_layouts_match_the_oracle(op, dev, layout, dtype):
    x = make_input((2, op.channels(5, output_size=(2, 3)), 7, 9), dtype, seed=21, distinct=op.distinct_input)
    rois = make_rois(14, 2, 7, 9, 1.0, "mixed", dtype, seed=22)
    ref_dtype = torch.float32 if dtype == torch.bfloat16 else None
    for kwargs in over(op.short_sweep, output_size=(2, 3), spatial_scale=1.0):
        check_against_oracle(op, dev, x, rois, layout, ref_dtype, **kwargs)


@pytest.mark.parametrize("in_layout", ["contiguous", "channels_last"])
def test_any_grad_output_layout_gives_the_same_gradient(op, dev, in_layout):
    # The upstream gradient NCHW, channels-last, a strided view or expanded (stride 0): the same input
    # gradient whatever the input's layout (bit for bit for a max: the same cells in the same order).
    x = make_input((2, op.channels(4, output_size=3), 6, 7), seed=5, distinct=op.distinct_input)
    rois = make_rois(9, 2, 6, 7, 1.0, "partial", seed=6)
    kwargs = dict(output_size=3, spatial_scale=1.0)
    check_against_oracle(op, dev, x, rois, in_layout, **kwargs)
    x_dev, r_dev = on_device(dev, x, in_layout).requires_grad_(True), dev.to(rois)
    tol = dict(rtol=0, atol=0) if op.exact_forward else dict(rtol=1e-6, atol=1e-6)
    with dev.python_layer():
        grad_out = dev.to(torch.randn(op(x_dev, r_dev, **kwargs).shape))
        expected = input_grad(op(x_dev, r_dev, **kwargs), x_dev, grad_out)
        for layout in ("channels_last", "sliced", "transposed"):
            got = input_grad(op(x_dev, r_dev, **kwargs), x_dev, to_layout(grad_out, layout))
            torch.testing.assert_close(got, expected, **tol)
        op(x_dev, r_dev, **kwargs).sum().backward()
    ones = torch.ones(grad_out.shape)
    _, oracle_grad = oracle(op, dev, to_layout(x, in_layout), rois, ones, **kwargs)
    torch.testing.assert_close(x_dev.grad.cpu(), oracle_grad, rtol=1e-5, atol=1e-5)


def test_many_rois_on_one_image_match_the_oracle(op, dev):
    # The backward accumulates the contributions of many RoIs into the same cells.
    x = make_input((1, op.channels(3, output_size=4), 12, 12), seed=8, distinct=op.distinct_input)
    rois = make_rois(200, 1, 12, 12, 1.0, "inside", seed=9)
    for kwargs in over(op.short_sweep, output_size=4, spatial_scale=1.0):
        check_against_oracle(op, dev, x, rois, **kwargs)


# ---- the compiled ops of the CUDA devices against the CPU kernels ---------------------------------


def assert_same_layout(dev_tensor, cpu_tensor):
    assert dev_tensor.shape == cpu_tensor.shape
    assert is_channels_last(dev_tensor) == is_channels_last(cpu_tensor)
    if dev_tensor.numel() > 0:
        assert dev_tensor.is_contiguous() or dev_tensor.is_contiguous(memory_format=torch.channels_last)


def _check_ops_against_cpu(op, dev, dtype, layout, seed, shape=(2, 5, 9, 11), num=24, **overrides):
    """The forward and both backward kernels (fast, deterministic) of dev against the CPU kernels."""
    N, C, H, W = shape = (shape[0], op.channels(shape[1], **overrides), *shape[2:])
    scale = op.kwargs(**overrides)["spatial_scale"]
    x = make_input(shape, dtype, seed=seed, distinct=op.distinct_input)
    rois = op.rois(make_rois(num, N, H, W, scale, "mixed", dtype, seed=seed))
    args = op.op_args(**overrides)
    out_c, arg_c = op.forward_op(CPU)(to_layout(x, layout), rois, *args)
    out_d, arg_d = op.forward_op(dev)(on_device(dev, x, layout), dev.to(rois), *args)
    assert out_d.dtype == dtype and arg_d.dtype == torch.int32
    assert_same_layout(out_d, out_c)
    assert_same_layout(arg_d, arg_c)
    torch.testing.assert_close(out_d.cpu(), out_c, **op.forward_tolerance(dtype))
    # Same arithmetic (the CUDA build uses --fmad=false), same tie rule: the same winners (or both
    # empty where the op has no argmax, e.g. an average).
    assert torch.equal(arg_d.cpu(), arg_c)

    # Backward from the same upstream gradient, in the output's layout.
    grad = random_grad(out_c.shape, dtype, seed + 1, channels_last=is_channels_last(out_c))
    gin_c = op.backward_op(CPU)(grad, rois, arg_c, *op.backward_args(shape, False, **overrides))
    grad_d = dev.to(grad)
    assert is_channels_last(grad_d) == is_channels_last(grad)
    for deterministic in (False, True):
        bwd = op.backward_args(shape, deterministic, **overrides)
        gin_d = op.backward_op(dev)(grad_d, dev.to(rois), arg_d, *bwd)
        assert gin_d.dtype == dtype
        assert_same_layout(gin_d, gin_c)
        torch.testing.assert_close(gin_d.cpu(), gin_c, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_ops_match_the_cpu_kernels(op, cuda_dev, dtype, layout):
    for kwargs in op.sweep:
        seed = seed_of(op.id, str(dtype), layout, sorted(kwargs.items()))
        _check_ops_against_cpu(op, cuda_dev, dtype, layout, seed, **kwargs)


@pytest.mark.parametrize("scale", [1.0, 0.125], ids=lambda s: f"scale{s:g}")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ops_match_the_cpu_kernels_at_other_scales(op, cuda_dev, scale, layout):
    for kwargs in over(op.sweep, spatial_scale=scale):
        seed = seed_of(op.id, layout, sorted(kwargs.items()))
        _check_ops_against_cpu(op, cuda_dev, torch.float32, layout, seed, **kwargs)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_ops_match_the_cpu_kernels_on_a_larger_map(op, cuda_dev, layout):
    # More channels than a warp, a 7x7 output, a small spatial scale: several blocks, NHWC thread order.
    seed = seed_of(op.id, "large", layout)
    kwargs = dict(output_size=7, spatial_scale=0.25)
    _check_ops_against_cpu(op, cuda_dev, torch.float32, layout, seed, shape=(2, 40, 16, 20), num=60, **kwargs)
