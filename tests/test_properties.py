"""Property-based (hypothesis) tests of roiops.roi_align / roiops.roi_pool against the pure-PyTorch
reference (roiops/reference.py), over random shapes, spatial scales, output sizes, sampling ratios,
pool modes, dtypes, memory layouts and boxes (inside, outside, inverted, zero-size, negative, far
away, enormous); and of the errors that invalid arguments raise.

Properties:
- every valid call matches the reference: forward output and the input gradient for a random
  upstream gradient (bfloat16 against the reference evaluated in float32 on the same values, with a
  loose tolerance); the inputs are never modified;
- adaptive sampling of an enormous box is refused with a ValueError that names sampling_ratio
  (more than 2^24 samples per bin), exactly when the reference geometry says so;
- every invalid call (NaN/inf coordinates, bad batch index, wrong shapes, dtypes, types or values
  of any argument) raises TypeError/ValueError whose message names the op, the argument, and the
  offending value (or what was expected).

Example counts: a short default run (derandomized, a few hundred examples over all tests, well
under a minute), and a longer, random one with ``ROIOPS_FUZZ_EXAMPLES=N`` (N examples per test;
failures are then kept in hypothesis' example database, .hypothesis/, and replayed first).
"""

import math
import os
import re

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import roiops  # noqa: E402
from roiops.reference import roi_align_reference, roi_pool_reference  # noqa: E402

# ---- profiles ----------------------------------------------------------------------------------

_FUZZ_EXAMPLES = int(os.environ.get("ROIOPS_FUZZ_EXAMPLES", "0") or 0)
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("roiops-ci", max_examples=1, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("roiops-fuzz", max_examples=max(_FUZZ_EXAMPLES, 1), print_blob=True, **_COMMON)
_PROFILE = settings.get_profile("roiops-fuzz" if _FUZZ_EXAMPLES > 0 else "roiops-ci")


def examples(default):
    """Settings of one test: `default` examples in the short run, ROIOPS_FUZZ_EXAMPLES in a long one."""
    return settings(_PROFILE, max_examples=_FUZZ_EXAMPLES if _FUZZ_EXAMPLES > 0 else default)


def to_layout(x, layout):
    """x (values unchanged) in a memory layout: "contiguous", "channels_last", "sliced" (every other
    column of a wider buffer), "transposed" (a transposed view of an [N, C, W, H] buffer). Unlike
    conftest.to_layout, degenerate shapes (sizes 0 or 1) are allowed: their views may be contiguous."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        n, c, h, w = x.shape
        big = torch.zeros((n, c, h, 2 * w + 1), dtype=x.dtype)
        big[:, :, :, 1::2] = x
        return big[:, :, :, 1::2]
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(layout)


# ---- strategies --------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")
SCALES = (1.0, 2.0, 0.5, 0.3, 0.25, 1.0 / 16, 1.0 / 32)
BOX_KINDS = ("inside", "partial", "outside", "negative", "inverted", "zero", "far", "enormous", "enormous_inverted")
MAX_SAMPLES_PER_BIN = roiops._C.limits["max_samples_per_bin"]


@st.composite
def feature_maps(draw, max_side=12, distinct=False):
    """A random [N, C, H, W] map in a random dtype and memory layout. distinct=True: pairwise distinct
    values (a shuffled ramp), so that max pooling has no ties."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 5))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if distinct:
        numel = n * c * h * w
        base = (torch.randperm(numel, generator=g).to(torch.float64) / numel - 0.5).reshape(n, c, h, w)
    else:
        base = torch.randn((n, c, h, w), generator=g, dtype=torch.float64)
    return to_layout(base.to(dtype), layout)


@st.composite
def one_box(draw, n, h, w, scale):
    """A box (batch, x1, y1, x2, y2) in image coordinates for an h x w map at `scale`."""
    kind = draw(st.sampled_from(BOX_KINDS))
    iw, ih = w / scale, h / scale  # the map's extent in image coordinates

    def coord(lo, hi):
        return draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64))

    if kind == "inside":
        x1, y1 = coord(0, iw), coord(0, ih)
        x2, y2 = coord(x1, iw), coord(y1, ih)
    elif kind == "partial":
        x1, y1 = coord(-iw, iw), coord(-ih, ih)
        x2, y2 = coord(x1, x1 + 2 * iw), coord(y1, y1 + 2 * ih)
    elif kind == "outside":
        # Wholly beyond the right/bottom border or left/top of it (by at least one cell).
        if draw(st.booleans()):
            x1 = coord(iw + 1.5 / scale, 3 * iw)
            x2 = coord(x1, x1 + iw)
        else:
            x2 = coord(-3 * iw, -2.0 / scale)
            x1 = coord(x2 - iw, x2)
        y1 = coord(-ih, 2 * ih)
        y2 = coord(y1, y1 + ih)
    elif kind == "negative":
        x1, y1 = coord(-2 * iw, 0), coord(-2 * ih, 0)
        x2, y2 = coord(x1, 0.5 * iw), coord(y1, 0.5 * ih)
    elif kind == "inverted":
        x1, y1 = coord(0, iw), coord(0, ih)
        x2 = coord(x1 - iw, x1)
        y2 = coord(y1 - ih, y1) if draw(st.booleans()) else coord(y1, ih)
    elif kind == "zero":
        x1, y1 = coord(-1, iw), coord(-1, ih)
        which = draw(st.sampled_from(("w", "h", "both")))
        x2 = x1 if which in ("w", "both") else coord(x1, iw)
        y2 = y1 if which in ("h", "both") else coord(y1, ih)
    elif kind == "far":
        # Small boxes about 1e7 image pixels away (exercises large coordinates, not large extents).
        x1 = draw(st.sampled_from((-1.0, 1.0))) * coord(1e6, 1e7)
        y1 = draw(st.sampled_from((-1.0, 1.0))) * coord(1e6, 1e7)
        x2, y2 = x1 + coord(0, 64), y1 + coord(0, 64)
    elif kind == "enormous":
        # Both extents enormous: covers the map (and much more) in both directions.
        x1, y1 = -coord(0, 1e7), -coord(0, 1e7)
        x2, y2 = coord(1e6, 1e7), coord(1e6, 1e7)
    else:  # enormous_inverted: enormous in both axes, but x2 < x1 and y2 < y1
        x1, y1 = coord(1e6, 1e7), coord(1e6, 1e7)
        x2, y2 = -coord(0, 1e7), -coord(0, 1e7)
    b = draw(st.integers(0, n - 1))
    return [float(b), x1, y1, x2, y2]


@st.composite
def rois_on(draw, x, scale, k):
    """k boxes (one_box) on the map x at `scale`: a [k, 5] tensor of x's dtype."""
    n, _, h, w = x.shape
    boxes = [draw(one_box(n, h, w, scale)) for _ in range(k)]
    return torch.tensor(boxes, dtype=torch.float64).reshape(k, 5).to(x.dtype)


@st.composite
def align_cases(draw):
    x = draw(feature_maps())
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(0, 6))
    rois = draw(rois_on(x, scale, k))
    output_size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    sampling_ratio = draw(st.sampled_from((-1, 0, 1, 2, 3, 5)))
    aligned = draw(st.booleans())
    pool_mode = draw(st.sampled_from(("avg", "max")))
    as_list = draw(st.booleans())
    return x, rois, output_size, scale, sampling_ratio, aligned, pool_mode, as_list


def _tolerance(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-10)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5)
    return dict(rtol=2e-2, atol=3e-2)  # bfloat16: 8-bit mantissa in the output and the gradient


def _as_list(rois, n):
    """Tensor[K, 5] -> a list of n Tensor[L, 4] (the order of boxes changes to batch order)."""
    order = torch.argsort(rois[:, 0].to(torch.float64), stable=True)
    rois = rois[order]
    return rois, [rois[rois[:, 0].to(torch.float64) == i, 1:] for i in range(n)]


def _grad_like(out, seed):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    # Upstream gradients arrive in the output's layout, or as a non-contiguous view.
    if seed % 3 == 0:
        return to_layout(grad, "sliced")
    if not out.is_contiguous():
        return grad.contiguous(memory_format=torch.channels_last)
    return grad


def _refused_adaptive(rois, output_size, scale, sampling_ratio, aligned, dtype):
    """True if the kernel must refuse adaptive sampling of some box (> 2^24 samples per bin)."""
    if sampling_ratio > 0 or rois.shape[0] == 0:
        return False
    return bool(
        (_samples_per_bin(rois, output_size, scale, sampling_ratio, aligned, dtype) > MAX_SAMPLES_PER_BIN).any()
    )


def _samples_per_bin(rois, output_size, scale, sampling_ratio, aligned, dtype):
    """Each box's samples per bin (float64, [K]), its grid evaluated as the kernels do (in float32 for
    the half types)."""
    if sampling_ratio > 0:
        return torch.full((rois.shape[0],), float(sampling_ratio) ** 2, dtype=torch.float64)
    cd = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    r = rois.to(cd)
    off = 0.5 if aligned else 0.0
    rw = (r[:, 3] * scale - off) - (r[:, 1] * scale - off)
    rh = (r[:, 4] * scale - off) - (r[:, 2] * scale - off)
    if not aligned:
        rw, rh = rw.clamp(min=1), rh.clamp(min=1)
    gh = torch.ceil(rh / output_size[0]).to(torch.float64).clamp(min=0, max=2.0**30)
    gw = torch.ceil(rw / output_size[1]).to(torch.float64).clamp(min=0, max=2.0**30)
    return gh * gw


def _run_with_grad(fn, x, boxes, seed):
    xg = x.detach().clone().requires_grad_(True)
    out = fn(xg, boxes)
    grad_out = _grad_like(out, seed)
    (gx,) = torch.autograd.grad(out, xg, grad_out, allow_unused=True)
    gx = torch.zeros_like(xg) if gx is None else gx
    return out, gx, grad_out


def _ref_with_grad(fn, x, grad_out):
    rd = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    xr = x.detach().to(rd).requires_grad_(True)
    ref = fn(xr)
    (gref,) = torch.autograd.grad(ref, xr, grad_out.to(rd), allow_unused=True)
    gref = torch.zeros_like(xr) if gref is None else gref
    return ref, gref


@examples(300)
@given(case=align_cases(), seed=st.integers(0, 2**16))
def test_roi_align_matches_reference(case, seed):
    x, rois, output_size, scale, sr, aligned, mode, as_list = case
    x_before, rois_before = x.clone(), rois.clone()
    boxes = rois
    if as_list:
        rois, boxes = _as_list(rois, x.shape[0])
        rois_before = rois.clone()

    def op(inp, b):
        return roiops.roi_align(inp, b, output_size, scale, sr, aligned, mode)

    if _refused_adaptive(rois, output_size, scale, sr, aligned, x.dtype):
        with pytest.raises(ValueError, match=r"roi_align: adaptive sampling \(sampling_ratio <= 0\).*samples per bin"):
            op(x, boxes)
        return

    out, gx, grad_out = _run_with_grad(op, x, boxes, seed)
    rd = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    ref, gref = _ref_with_grad(
        lambda xr: roi_align_reference(xr, rois.to(rd), output_size, scale, sr, aligned, mode), x, grad_out
    )
    assert out.shape == (rois.shape[0], x.shape[1], *output_size)
    assert out.dtype == x.dtype and gx.dtype == x.dtype and gx.shape == x.shape
    torch.testing.assert_close(out.to(rd), ref, **_tolerance(x.dtype))
    torch.testing.assert_close(gx.to(rd), gref, **_tolerance(x.dtype))
    # Nothing was written into the arguments.
    assert torch.equal(x, x_before) and torch.equal(rois, rois_before)


@st.composite
def pool_cases(draw):
    # Max pooling has no rounding, but ties between equal cells decide where the gradient goes: the
    # cells are distinct in float32/float64 (bfloat16 rounds a ramp into ties; its gradient is only
    # compared loosely).
    x = draw(feature_maps(distinct=True))
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(0, 6))
    rois = draw(rois_on(x, scale, k))
    output_size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return x, rois, output_size, scale, draw(st.booleans())


@examples(150)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_roi_pool_matches_reference(case, seed):
    x, rois, output_size, scale, as_list = case
    x_before, rois_before = x.clone(), rois.clone()
    boxes = rois
    if as_list:
        rois, boxes = _as_list(rois, x.shape[0])
        rois_before = rois.clone()

    out, gx, grad_out = _run_with_grad(lambda inp, b: roiops.roi_pool(inp, b, output_size, scale), x, boxes, seed)
    ref, gref = _ref_with_grad(lambda xr: roi_pool_reference(xr, rois.to(xr.dtype), output_size, scale), x, grad_out)
    assert out.shape == (rois.shape[0], x.shape[1], *output_size)
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=0, atol=0)
    # Gradients of several RoIs that share a cell are summed in another order than autograd's.
    torch.testing.assert_close(gx.to(gref.dtype), gref, **_tolerance(x.dtype))
    assert torch.equal(x, x_before) and torch.equal(rois, rois_before)


# ---- invalid arguments -------------------------------------------------------------------------

# The bad boxes the kernels refuse themselves (test_direct_op_calls_reject_bad_boxes).
BOX_CORRUPTIONS = (
    "nan",
    "inf",
    "-inf",
    "batch_negative",
    "batch_too_large",
    "batch_fractional",
    "batch_nan",
    "boxes_width4",
    "boxes_width6",
    "boxes_1d",
    "boxes_dtype",
    "boxes_int",
)
CORRUPTIONS = BOX_CORRUPTIONS + (
    "boxes_3d",
    "boxes_numpy",
    "boxes_list_shape",
    "boxes_list_item",
    "boxes_list_dtype",
    "input_3d",
    "input_5d",
    "input_int",
    "input_bool",
    "input_not_tensor",
    "output_size_zero",
    "output_size_negative",
    "output_size_float",
    "output_size_triple",
    "output_size_bool",
    "spatial_scale_zero",
    "spatial_scale_negative",
    "spatial_scale_nan",
    "spatial_scale_inf",
    "spatial_scale_str",
    "sampling_ratio_float",
    "sampling_ratio_huge",
    "aligned_int",
    "pool_mode",
)

ALIGN_ONLY = ("sampling_ratio_float", "sampling_ratio_huge", "aligned_int", "pool_mode")


def _corrupt(what, x, rois, args, rng):
    """Returns (input, boxes, args, expected exception, regexes the message must match)."""
    k = rois.shape[0]
    n = x.shape[0]
    row = int(rng.integers(0, k)) if k else 0
    col = int(rng.integers(1, 5))
    args = dict(args)
    if what in ("nan", "inf", "-inf"):
        rois = rois.clone()
        rois[row, col] = float(what)
        word = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[what]
        return (
            x,
            rois,
            args,
            ValueError,
            [r"boxes must be finite", rf"box {row}\b", rf"value {word}\b", rf"column {col}"],
        )
    if what.startswith("batch_"):
        rois = rois.clone()
        bad = {"batch_negative": -1.0, "batch_too_large": float(n), "batch_fractional": 0.5, "batch_nan": float("nan")}[
            what
        ]
        rois[row, 0] = bad
        if what == "batch_nan":
            return x, rois, args, ValueError, [r"boxes must be finite", rf"box {row}\b", r"column 0"]
        return x, rois, args, ValueError, [r"batch index", rf"boxes\[{row}, 0\]", rf"\[0, {n}\)", rf"it is {bad:g}"]
    if what == "boxes_width4":
        return x, rois[:, 1:], args, ValueError, [r"boxes must be a Tensor\[K, 5\]", rf"shape \({k}, 4\)"]
    if what == "boxes_width6":
        return x, torch.cat([rois, rois[:, :1]], 1), args, ValueError, [r"boxes", rf"shape \({k}, 6\)"]
    if what == "boxes_1d":
        return x, rois.reshape(-1), args, ValueError, [r"boxes", rf"shape \({k * 5},\)"]
    if what == "boxes_3d":
        return x, rois[None], args, ValueError, [r"boxes", rf"shape \(1, {k}, 5\)"]
    if what == "boxes_dtype":
        other = torch.float64 if x.dtype != torch.float64 else torch.float32
        return (
            x,
            rois.to(other),
            args,
            TypeError,
            [r"boxes must have the dtype of input", re.escape(str(x.dtype)), re.escape(str(other))],
        )
    if what == "boxes_int":
        return x, rois.to(torch.int64), args, TypeError, [r"boxes", r"dtype", r"torch\.int64"]
    if what == "boxes_numpy":
        return x, rois.to(torch.float64).numpy(), args, TypeError, [r"boxes must be a Tensor", r"ndarray"]
    if what == "boxes_list_shape":
        return x, [rois] * n, args, ValueError, [r"boxes\[0\] must be a Tensor\[L, 4\]", rf"shape \({k}, 5\)"]
    if what == "boxes_list_item":
        return x, [rois[:, 1:]] + [(1.0, 2.0, 3.0, 4.0)], args, TypeError, [r"boxes\[1\] must be a Tensor", r"tuple"]
    if what == "boxes_list_dtype":
        return (
            x,
            [rois[:, 1:].to(torch.float16)],
            args,
            TypeError,
            [r"boxes\[0\] must have the dtype of input", r"torch\.float16"],
        )
    if what == "input_3d":
        return x[0], rois, args, ValueError, [r"input must be 4-D", r"3-D", re.escape(str(tuple(x[0].shape)))]
    if what == "input_5d":
        return x[None], rois, args, ValueError, [r"input must be 4-D", r"5-D"]
    if what == "input_int":
        return x.to(torch.int32), rois, args, TypeError, [r"input must be a floating-point tensor", r"torch\.int32"]
    if what == "input_bool":
        return x > 0, rois, args, TypeError, [r"input must be a floating-point tensor", r"torch\.bool"]
    if what == "input_not_tensor":
        return x.tolist(), rois, args, TypeError, [r"input must be a Tensor", r"list"]
    if what.startswith("output_size_"):
        bad = {
            "output_size_zero": 0,
            "output_size_negative": (2, -3),
            "output_size_float": 2.0,
            "output_size_triple": (1, 2, 3),
            "output_size_bool": True,
        }[what]
        args["output_size"] = bad
        exc = ValueError if what in ("output_size_zero", "output_size_negative") else TypeError
        return x, rois, args, exc, [r"output_size", re.escape(repr(bad))]
    if what.startswith("spatial_scale_"):
        bad = {
            "spatial_scale_zero": 0.0,
            "spatial_scale_negative": -0.25,
            "spatial_scale_nan": float("nan"),
            "spatial_scale_inf": float("inf"),
            "spatial_scale_str": "0.5",
        }[what]
        args["spatial_scale"] = bad
        exc = TypeError if isinstance(bad, str) else ValueError
        return x, rois, args, exc, [r"spatial_scale", re.escape(repr(bad))]
    if what == "sampling_ratio_float":
        args["sampling_ratio"] = 2.0
        return x, rois, args, TypeError, [r"sampling_ratio must be an int", r"2\.0"]
    if what == "sampling_ratio_huge":
        args["sampling_ratio"] = (1 << 20) + 1
        return x, rois, args, ValueError, [r"sampling_ratio must be at most", str((1 << 20) + 1)]
    if what == "aligned_int":
        args["aligned"] = 1
        return x, rois, args, TypeError, [r"aligned must be a bool", r"got 1"]
    if what == "pool_mode":
        args["pool_mode"] = "sum"
        return x, rois, args, ValueError, [r"pool_mode must be one of", r"'sum'"]
    raise AssertionError(what)


@st.composite
def invalid_cases(draw, corruptions=CORRUPTIONS):
    op = draw(st.sampled_from(("roi_align", "roi_pool")))
    what = draw(st.sampled_from([c for c in corruptions if op == "roi_align" or c not in ALIGN_ONLY]))
    x = draw(feature_maps(max_side=6))
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(1, 4))
    rois = draw(rois_on(x, scale, k))
    if op == "roi_align":
        # Positive sampling: enormous boxes must not be refused for their (valid) size here.
        args = dict(
            output_size=draw(st.integers(1, 4)),
            spatial_scale=scale,
            sampling_ratio=draw(st.integers(1, 3)),
            aligned=draw(st.booleans()),
            pool_mode=draw(st.sampled_from(("avg", "max"))),
        )
    else:
        args = dict(output_size=draw(st.integers(1, 4)), spatial_scale=scale)
    return op, what, x, rois, args, draw(st.integers(0, 2**31 - 1))


@examples(150)
@given(case=invalid_cases())
def test_invalid_arguments_raise_clear_errors(case):
    import numpy as np

    op, what, x, rois, args, seed = case
    x_in, boxes, args, exc, patterns = _corrupt(what, x, rois, args, np.random.default_rng(seed))
    fn = getattr(roiops, op)
    with pytest.raises(exc) as info:
        fn(x_in, boxes, **args)
    msg = str(info.value)
    assert msg.startswith(op + ":"), msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"


@examples(80)
@given(case=invalid_cases(BOX_CORRUPTIONS))
def test_direct_op_calls_reject_bad_boxes(case):
    """torch.ops.roiops.* (no Python validation in front) refuse non-finite boxes, bad batch indices
    and wrong box shapes/dtypes in the kernel, with the same kind of message."""
    import numpy as np

    op, what, x, rois, args, seed = case
    x_in, boxes, args, exc, patterns = _corrupt(what, x, rois, args, np.random.default_rng(seed))
    size = args["output_size"]
    with pytest.raises(RuntimeError) as info:  # (a kernel's error, with the message exc's would have)
        if op == "roi_align":
            torch.ops.roiops.roi_align(
                x_in,
                boxes,
                args["spatial_scale"],
                size,
                size,
                args["sampling_ratio"],
                args["aligned"],
                args["pool_mode"],
            )
        else:
            torch.ops.roiops.roi_pool(x_in, boxes, args["spatial_scale"], size, size)
    msg = str(info.value)
    assert msg.startswith(op + ":"), msg
    assert re.search(r"boxes|batch index", msg), msg
    if what in ("nan", "inf", "-inf") or what.startswith("batch_"):
        for p in patterns:
            assert re.search(p, msg), f"{p!r} not in {msg!r}"


@examples(40)
@given(
    x=feature_maps(max_side=8),
    sr=st.integers(-1, 0),
    aligned=st.booleans(),
    size=st.integers(1, 7),
    extent=st.floats(1e6, 1e7),
)
def test_adaptive_sampling_of_enormous_box_is_refused(x, sr, aligned, size, extent):
    """Adaptive sampling of a box ~1e7 cells wide would take > 2^24 samples per bin: a clear
    ValueError that names sampling_ratio, the box and the limit (never a hang, never a crash); a
    positive sampling_ratio pools the same box fine."""
    rois = torch.tensor([[0, -extent, -extent, extent, extent]], dtype=torch.float64).to(x.dtype)
    with pytest.raises(ValueError) as info:
        roiops.roi_align(x, rois, size, 1.0, sr, aligned)
    msg = str(info.value)
    assert "sampling_ratio" in msg and "samples per bin" in msg and str(MAX_SAMPLES_PER_BIN) in msg
    out = roiops.roi_align(x, rois, size, 1.0, 2, aligned)
    rd = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    ref = roi_align_reference(x.to(rd), rois.to(rd), size, 1.0, 2, aligned)
    torch.testing.assert_close(out.to(ref.dtype), ref, **_tolerance(x.dtype))
    assert math.isfinite(float(out.abs().sum()))
