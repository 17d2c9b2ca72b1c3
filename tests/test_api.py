"""The public API: error messages, modules' argument validation, the C++ checks of direct op calls,
thread-count independence, boxes forms, modules. The argument errors of every op and torch.compile
are standard tests of the op table (test_ops_edges.py)."""

import pytest
import torch

import roiops
from roiops.reference import roi_align_reference

from helpers import input_grad, make_input, make_rois
from op_table import over

X = torch.randn(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0], [1, 0.0, 2.0, 7.0, 4.0]])


def _align(**overrides):
    args = dict(
        input=X, boxes=ROIS, output_size=2, spatial_scale=1.0, sampling_ratio=-1, aligned=False, pool_mode="avg"
    )
    args.update(overrides)
    return roiops.roi_align(**args)


def _pool(**overrides):
    args = dict(input=X, boxes=ROIS, output_size=2, spatial_scale=1.0)
    args.update(overrides)
    return roiops.roi_pool(**args)


def _bad_rois(value, col):
    r = ROIS.clone()
    r[1, col] = value
    return r


def test_error_messages_name_the_op_and_the_value():
    with pytest.raises(ValueError) as e:
        _align(boxes=_bad_rois(5, 0))
    assert "roi_align" in str(e.value) and "5" in str(e.value) and "box 1" in str(e.value)
    with pytest.raises(TypeError) as e:
        _pool(output_size=2.5)
    assert "roi_pool" in str(e.value) and "2.5" in str(e.value)


@pytest.mark.parametrize(
    "module,kwargs,word",
    [
        (roiops.RoIAlign, dict(output_size=0), "output_size"),
        (roiops.RoIAlign, dict(output_size=2, spatial_scale=-1.0), "spatial_scale"),
        (roiops.RoIAlign, dict(output_size=2, sampling_ratio=1.5), "sampling_ratio"),
        (roiops.RoIAlign, dict(output_size=2, aligned=0), "aligned"),
        (roiops.RoIAlign, dict(output_size=2, pool_mode="sum"), "pool_mode"),
        (roiops.RoIPool, dict(output_size=(1, 2, 3)), "output_size"),
        (roiops.RoIPool, dict(output_size=2, spatial_scale=0), "spatial_scale"),
    ],
)
def test_module_validation_errors(module, kwargs, word):
    with pytest.raises((TypeError, ValueError), match=word):
        module(**kwargs)


# ---- direct op calls: the C++ checks ---------------------------------------------------------
# A kernel's failure reaches Python as RuntimeError (all the LibTorch stable ABI carries), with the
# same message; roiops' own functions re-raise the value errors as KernelValueError (see below).


@pytest.mark.parametrize("bad", [2.0, 100.0, -1.0, 0.5, float("nan")])
def test_direct_op_call_bad_batch_index_raises(bad):
    rois = _bad_rois(bad, 0)
    with pytest.raises(RuntimeError, match="batch index|finite"):
        torch.ops.roiops.roi_align(X, rois, 1.0, 2, 2, -1, False, "avg")
    with pytest.raises(RuntimeError, match="batch index|finite"):
        torch.ops.roiops.roi_align(X, rois, 1.0, 2, 2, 2, True, "max")
    with pytest.raises(RuntimeError, match="batch index|finite"):
        torch.ops.roiops.roi_pool(X, rois, 1.0, 2, 2)


def test_direct_backward_call_bad_batch_index_raises():
    out, argmax = torch.ops.roiops.roi_align(X, ROIS, 1.0, 2, 2, -1, False, "max")
    with pytest.raises(RuntimeError, match="batch index"):
        torch.ops.roiops._roi_align_backward(
            torch.ones_like(out), _bad_rois(7, 0), argmax, 1.0, 2, 2, 2, 3, 8, 8, -1, False, "max", False
        )
    out, argmax = torch.ops.roiops.roi_pool(X, ROIS, 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="batch index"):
        torch.ops.roiops._roi_pool_backward(torch.ones_like(out), _bad_rois(7, 0), argmax, 1.0, 2, 2, 2, 3, 8, 8, False)


def test_direct_op_call_other_checks():
    with pytest.raises(RuntimeError, match="pool_mode"):
        torch.ops.roiops.roi_align(X, ROIS, 1.0, 2, 2, -1, False, "median")
    with pytest.raises(RuntimeError, match="output_size"):
        torch.ops.roiops.roi_align(X, ROIS, 1.0, 0, 2, -1, False, "avg")
    with pytest.raises(RuntimeError, match="spatial_scale"):
        torch.ops.roiops.roi_align(X, ROIS, -1.0, 2, 2, -1, False, "avg")
    with pytest.raises(RuntimeError, match="boxes"):
        torch.ops.roiops.roi_pool(X, ROIS[:, :4], 1.0, 2, 2)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.roiops.roi_pool(X, ROIS.double(), 1.0, 2, 2)


# ---- thread-count independence -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_thread_count_independent(op, layout, restore_threads):
    x = make_input((2, op.channels(16, output_size=5), 20, 24), layout=layout, seed=61, distinct=op.distinct_input)
    rois = make_rois(60, 2, 20, 24, 0.5, "mixed", seed=62)
    rois = torch.cat([rois, make_rois(60, 2, 20, 24, 0.5, "inside", seed=63)])
    for kwargs in over(op.short_sweep, output_size=5, spatial_scale=0.5):
        grad_out = None
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xi = x.detach().clone().requires_grad_(True)
            out = op(xi, rois, **kwargs)
            if grad_out is None:
                grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(64))
            results.append((out.detach(), input_grad(out, xi, grad_out)))
        (o1, g1), (o2, g2) = results
        assert torch.equal(o1, o2)
        assert torch.equal(g1, g2)


# ---- boxes forms, modules (inputs are never modified, boxes get no gradient: test_hardening.py) --------------------------------------------------------------


def test_list_of_boxes_equals_k5(op):
    x = make_input((3, op.channels(2, output_size=2), 8, 8), seed=75)
    per_image = [make_rois(n, 1, 8, 8, 1.0, "mixed", seed=76 + n)[:, 1:] for n in (3, 0, 4)]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(per_image)])
    kwargs = dict(output_size=2, spatial_scale=1.0)
    a, b = op(x, per_image, **kwargs), op(x, rois, **kwargs)
    assert a.shape == (7, 2, 2, 2)
    assert torch.equal(a, b)
    # A tuple of boxes works too.
    assert torch.equal(op(x, tuple(per_image), **kwargs), b)


def test_module_repr_and_equivalence():
    align = roiops.RoIAlign((7, 5), spatial_scale=0.25, sampling_ratio=2, aligned=True, pool_mode="max")
    text = repr(align)
    for part in ("RoIAlign", "output_size=(7, 5)", "spatial_scale=0.25", "sampling_ratio=2", "aligned=True", "max"):
        assert part in text, text
    pool = roiops.RoIPool(3, spatial_scale=0.5)
    assert "RoIPool" in repr(pool) and "output_size=(3, 3)" in repr(pool) and "spatial_scale=0.5" in repr(pool)

    x = make_input((2, 3, 10, 10), seed=81)
    rois = make_rois(8, 2, 10, 10, 0.25, "mixed", seed=82)
    assert torch.equal(align(x, rois), roiops.roi_align(x, rois, (7, 5), 0.25, 2, True, "max"))
    assert torch.equal(pool(x, rois), roiops.roi_pool(x, rois, 3, 0.5))
    default = roiops.RoIAlign(2)
    assert torch.equal(default(x, rois), roiops.roi_align(x, rois, 2))
    assert (default.spatial_scale, default.sampling_ratio, default.aligned, default.pool_mode) == (
        1.0,
        -1,
        False,
        "avg",
    )


def test_keyword_and_default_arguments_match_torchvision_signature():
    x = make_input((1, 2, 6, 6), seed=83)
    rois = make_rois(4, 1, 6, 6, 1.0, "inside", seed=84)
    assert torch.equal(roiops.roi_align(x, rois, 3), roiops.roi_align(x, rois, 3, 1.0, -1, False, "avg"))
    assert torch.equal(
        roiops.roi_align(input=x, boxes=rois, output_size=3, spatial_scale=1.0, sampling_ratio=2, aligned=True),
        roiops.roi_align(x, rois, 3, 1.0, 2, True),
    )
    assert torch.equal(
        roiops.roi_pool(input=x, boxes=rois, output_size=(3, 3), spatial_scale=1.0), roiops.roi_pool(x, rois, 3)
    )


def test_reference_rejects_unknown_mode():
    with pytest.raises(ValueError, match="pool_mode"):
        roi_align_reference(X, ROIS, 2, pool_mode="sum")


def test_autocast_accepts_float32_boxes_with_half_input():
    """Under autocast an activation may be bfloat16 while the boxes stay float32; the ops then run in
    float32 and return the input's dtype (outside autocast the mismatch is an error, tested above)."""
    x = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roiops.roi_align(x.bfloat16(), rois, 3, 1.0, 2, True)
        pooled = roiops.roi_pool(x.bfloat16(), rois, 3)
    assert out.dtype == torch.bfloat16 and pooled.dtype == torch.bfloat16
    expected = roiops.roi_align(x.bfloat16().float(), rois, 3, 1.0, 2, True)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(pooled.float(), roiops.roi_pool(x.bfloat16().float(), rois, 3), atol=1e-2, rtol=1e-2)


# ---- fake kernels: the compiled rules, while tracing --------------------------------------------

FAKE_CASES = [
    (lambda x, r: ops_.roi_align(x, r[:, 1:], 1.0, 2, 2, 2, False, "avg"), ValueError, "boxes must have shape"),
    (lambda x, r: ops_.roi_align(x, r.double(), 1.0, 2, 2, 2, False, "avg"), TypeError, "dtype of input"),
    (lambda x, r: ops_.roi_align(x[0], r, 1.0, 2, 2, 2, False, "avg"), ValueError, "4-D"),
    (lambda x, r: ops_.roi_align(x, r, 1.0, 0, 2, 2, False, "avg"), ValueError, "output_size"),
    (lambda x, r: ops_.roi_align(x, r, float("nan"), 2, 2, 2, False, "avg"), ValueError, "spatial_scale"),
    (lambda x, r: ops_.roi_align(x, r, 1.0, 2, 2, 5000, False, "avg"), ValueError, "samples per bin"),
    (lambda x, r: ops_.roi_align(x, r, 1.0, 2, 2, 2, False, "sum"), ValueError, "pool_mode"),
    (lambda x, r: ops_.roi_pool(x, r, -1.0, 2, 2), ValueError, "spatial_scale"),
    (
        lambda x, r: ops_._roi_pool_backward(
            torch.zeros_like(x[:, :, :2, :2]), r[:1], torch.zeros(1), 1.0, 2, 2, 2, 3, 8, 8, False
        ),
        ValueError,
        "grad must have shape",
    ),
]
ops_ = torch.ops.roiops


@pytest.mark.parametrize("index", range(len(FAKE_CASES)))
def test_fake_kernels_refuse_what_the_compiled_checks_refuse(index):
    from torch._subclasses.fake_tensor import FakeTensorMode

    call, exc, word = FAKE_CASES[index]
    with pytest.raises(RuntimeError, match=word):  # the compiled kernel (stable ABI: RuntimeError)
        call(X, ROIS)
    with FakeTensorMode() as mode, pytest.raises(exc, match=word):  # the fake kernel, while tracing
        call(mode.from_tensor(X), mode.from_tensor(ROIS))


def test_python_limits_are_the_compiled_ones():
    from roiops import _C, _validation

    assert _validation.MAX_POOLED_SIZE == _C.limits["max_pooled_size"] == 2**20
    assert _validation.MAX_SAMPLING_RATIO**2 == _C.limits["max_samples_per_bin"] == 2**24
    with pytest.raises(ValueError, match="output_size"):
        roiops.RoIAlign(2**20 + 1)
    roiops.RoIAlign(7, sampling_ratio=4096)  # the largest accepted
    with pytest.raises(ValueError, match="samples per bin"):
        roiops.RoIAlign(7, sampling_ratio=4097)


def test_set_device_box_checks_round_trip():
    # The setting itself is exercised on the (emulated) CUDA path in test_cuda.py; here the public switch,
    # off by default (the sync-free CUDA path), and its context-manager form.
    assert roiops.set_device_box_checks(True) is False
    try:
        assert roiops.set_device_box_checks(True) is True
    finally:
        assert roiops.set_device_box_checks(False) is True
    with roiops.device_box_checks():
        assert roiops.set_device_box_checks(True) is True
    assert roiops.set_device_box_checks(False) is False
    with pytest.raises(TypeError, match="enabled must be True or False"):
        roiops.set_device_box_checks(0)
