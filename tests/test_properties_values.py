"""Property-based (hypothesis) tests with hostile feature values and extreme accepted arguments, on
every kernel path: CPU NCHW and channels-last (and the other layouts), emulated CUDA (32- and 64-bit
index variants) and real CUDA when present (tests/devices.py), against the pure-PyTorch reference.

Maps carry NaN, inf and -inf at random densities (none, a few, most, all); arguments reach sampling
ratios whose bins are cut into pieces (257^2 > 2^16 samples), outputs of 64 bins per side, both
values of aligned and both box formats. Properties: the outputs have NaN exactly where the
reference has them and match it elsewhere (max modes: the first NaN of a bin wins); the input
gradients match, so argmax reached the same sample (the first NaN, or the first maximum).
The strategies are those of test_properties.py; example counts follow its profiles.
"""

import pytest
import torch

pytest.importorskip("hypothesis")
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import roiops  # noqa: E402
from roiops.reference import roi_align_reference, roi_pool_reference  # noqa: E402

from devices import ALL_DEVICES, CPU  # noqa: E402
from test_properties import (  # noqa: E402
    SCALES,
    _as_list,
    _grad_like,
    _refused_adaptive,
    _samples_per_bin,
    _tolerance,
    examples,
    feature_maps,
    rois_on,
)

# Samples x channels the reference may hold for one case (~300 MB of its float64 intermediates).
REFERENCE_SAMPLE_BUDGET = 2**21


def _gradient_tolerance(dtype, output_size):
    """A cell's gradient sums the contributions of up to 64 x 64 bins; the kernels and the reference add
    them in different orders, which in float32 moves the sum by ~1e-5 relative (seen: 2.4e-4 on 22.6)."""
    tol = _tolerance(dtype)
    if dtype == torch.float32 and output_size[0] * output_size[1] > 64:
        tol = dict(rtol=1e-4, atol=1e-4)
    return tol


def _on(dev):
    if dev.emulated:
        dev.ops.set_launch_order("forward")
    return dev


@st.composite
def hostile_maps(draw, distinct=False):
    """A feature map (test_properties.feature_maps) with NaN / inf / -inf at a random density."""
    x = draw(feature_maps(max_side=9, distinct=distinct))
    density = draw(st.sampled_from((0.0, 0.03, 0.15, 0.6, 1.0)))
    values = draw(st.sampled_from(((float("nan"),), (float("inf"), float("-inf")), (float("nan"), float("-inf")))))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    hit = torch.rand(x.shape, generator=g) < density
    which = torch.randint(0, len(values), x.shape, generator=g)
    for i, v in enumerate(values):
        x[hit & (which == i)] = v  # (in place: keeps the layout)
    return x


@st.composite
def hostile_align_cases(draw):
    x = draw(hostile_maps())
    scale = draw(st.sampled_from(SCALES))
    sampling_ratio = draw(st.sampled_from((-1, 0, 1, 2, 3, 257)))
    if sampling_ratio == 257:  # 66049 samples per bin: pieces; kept small for the reference's sake
        # (float32 sums of 66049 samples in another order than the reference's differ by ~1e-3.)
        x = x[:, :2].to(torch.float64 if x.dtype == torch.float32 else x.dtype)
        k, output_size = draw(st.integers(1, 2)), (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    else:
        k = draw(st.integers(0, 5))
        small = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        output_size = draw(st.sampled_from((small, small, (1, 64), (64, 1), (64, 64))))
    rois = draw(rois_on(x, scale, k))
    aligned = draw(st.booleans())
    pool_mode = draw(st.sampled_from(("avg", "max", "max")))
    return x, rois, output_size, scale, sampling_ratio, aligned, pool_mode, draw(st.booleans())


def _check(dev, op, ref_op, x, rois, boxes, seed):
    """Output and input gradient of op on dev against ref_op's, NaN for NaN."""
    xd = dev.to(x.detach()).requires_grad_(True)
    with dev.python_layer():
        b = [dev.to(t) for t in boxes] if isinstance(boxes, list) else dev.to(boxes)
        out = op(xd, b)
        grad_out = dev.to(_grad_like(out.cpu(), seed))
        (gx,) = torch.autograd.grad(out, xd, grad_out, allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx.cpu()
    rd = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    xr = x.detach().to(rd).requires_grad_(True)
    ref = ref_op(xr, rois.to(rd))
    (gref,) = torch.autograd.grad(ref, xr, grad_out.cpu().to(rd), allow_unused=True)
    gref = torch.zeros_like(xr) if gref is None else gref
    out = out.detach().cpu().to(rd)
    assert torch.equal(out.isnan(), ref.isnan()), "NaN positions differ"
    return out, ref, gx.to(rd), gref


@pytest.mark.parametrize("dev", ALL_DEVICES)
@examples(30)
@given(case=hostile_align_cases(), seed=st.integers(0, 2**16))
def test_roi_align_with_hostile_values_matches_reference(dev, case, seed):
    dev = _on(dev)
    x, rois, output_size, scale, sr, aligned, mode, as_list = case
    boxes = rois
    if as_list:
        rois, boxes = _as_list(rois, x.shape[0])

    def op(inp, b):
        return roiops.roi_align(inp, b, output_size, scale, sr, aligned, mode)

    if _refused_adaptive(rois, output_size, scale, sr, aligned, x.dtype):
        on_dev = [dev.to(t) for t in boxes] if as_list else dev.to(boxes)
        with pytest.raises(ValueError, match=r"sampling_ratio"), dev.python_layer(), dev.box_checks():
            op(dev.to(x), on_dev)
        if dev is not CPU:  # CUDA's sync-free default: the refused boxes' rows are NaN instead
            with dev.python_layer():
                assert op(dev.to(x), on_dev).isnan().any()
        return
    # The reference holds every sample of every bin and channel at once: an accepted adaptive grid of a
    # huge box at a 64-bin output would take tens of GB there (the kernels take it in bounded memory).
    per_bin = _samples_per_bin(rois, output_size, scale, sr, aligned, x.dtype)
    assume(float(per_bin.sum()) * output_size[0] * output_size[1] * x.shape[1] <= REFERENCE_SAMPLE_BUDGET)
    out, ref, gx, gref = _check(
        dev, op, lambda xr, r: roi_align_reference(xr, r, output_size, scale, sr, aligned, mode), x, rois, boxes, seed
    )
    torch.testing.assert_close(out, ref, equal_nan=True, **_tolerance(x.dtype))
    torch.testing.assert_close(gx, gref, equal_nan=True, **_gradient_tolerance(x.dtype, output_size))


@st.composite
def hostile_pool_cases(draw):
    x = draw(hostile_maps(distinct=True))  # distinct finite values: no ties to route the gradient
    scale = draw(st.sampled_from(SCALES))
    k = draw(st.integers(0, 5))
    rois = draw(rois_on(x, scale, k))
    small = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    output_size = draw(st.sampled_from((small, small, (1, 64), (64, 1), (64, 64))))
    return x, rois, output_size, scale, draw(st.booleans())


@pytest.mark.parametrize("dev", ALL_DEVICES)
@examples(25)
@given(case=hostile_pool_cases(), seed=st.integers(0, 2**16))
def test_roi_pool_with_hostile_values_matches_reference(dev, case, seed):
    dev = _on(dev)
    x, rois, output_size, scale, as_list = case
    boxes = rois
    if as_list:
        rois, boxes = _as_list(rois, x.shape[0])
    out, ref, gx, gref = _check(
        dev,
        lambda inp, b: roiops.roi_pool(inp, b, output_size, scale),
        lambda xr, r: roi_pool_reference(xr, r, output_size, scale),
        x,
        rois,
        boxes,
        seed,
    )
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(gx, gref, equal_nan=True, **_gradient_tolerance(x.dtype, output_size))
