"""Position-sensitive RoIAlign / RoIPool's own tests (the standard ones run over the op table): equal to
torchvision's ops bit for bit, outputs, channel mappings and gradients, except where docs/semantics.md
says torchvision departs (its ps_roi_pool forward never reads the last row and column; its
ps_roi_align gives 0 / 0 for a zero-size box); the hand-checked case; torchvision's signatures and
defaults; TorchScript and FX."""

import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_properties_values import hostile_maps

import roiops
from roiops.reference import ps_roi_align_reference, ps_roi_pool_reference

from devices import ALL_DEVICES
from helpers import make_input, make_rois
from test_properties import SCALES, _refused_adaptive, _tolerance, examples, rois_on

tv_ops = pytest.importorskip("torchvision.ops")


def _rois(n, height, width, scale, dtype, seed, margin=0.0):
    rois = make_rois(n, 2, height, width, scale, "mixed", dtype, seed=seed)
    if margin:  # keep every box's cells off the last row and column
        rois[:, 1:] = rois[:, 1:].clamp(0, (min(height, width) - margin) / scale)
    return rois


def _torchvision_grad(name, x, rois, grad, *args):
    xr = x.clone().requires_grad_(True)
    out = getattr(tv_ops, name)(xr, rois, *args)
    return torch.autograd.grad(out, xr, grad)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("output_size,sampling_ratio", [((2, 3), -1), (3, 2), ((7, 7), 0), (1, 3)])
def test_ps_roi_align_equals_torchvision(dtype, layout, output_size, sampling_ratio):
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = make_input((2, 3 * h * w, 13, 11), dtype, layout=layout, seed=h * w)
    rois = _rois(40, 13, 11, 0.5, dtype, seed=h + w)
    if sampling_ratio <= 0:  # (no empty adaptive grid: torchvision divides 0 by 0 there)
        rois[:, 3:] = torch.maximum(rois[:, 3:], rois[:, 1:3]) + 0.01
    out = roiops.ps_roi_align(x, rois, output_size, 0.5, sampling_ratio)
    expected, mapping = torch.ops.torchvision.ps_roi_align(x, rois, 0.5, h, w, sampling_ratio)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(torch.ops.roiops.ps_roi_align(x, rois, 0.5, h, w, sampling_ratio)[1], mapping)
    grad = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    xr = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(roiops.ps_roi_align(xr, rois, output_size, 0.5, sampling_ratio), xr, grad)
    want = _torchvision_grad("ps_roi_align", x, rois, grad, output_size, 0.5, sampling_ratio)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("output_size,scale", [((2, 3), 0.5), (3, 1.0), ((7, 7), 0.25)])
def test_ps_roi_pool_equals_torchvision(dtype, layout, output_size, scale):
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = make_input((2, 2 * h * w, 12, 14), dtype, layout=layout, seed=h * w)
    rois = _rois(40, 12, 14, scale, dtype, seed=h + w)
    # Gradients agree everywhere (torchvision's backward clamps to the map as roiops does) ...
    grad = torch.randn((40, 2, h, w), dtype=dtype, generator=torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(roiops.ps_roi_pool(xr, rois, output_size, scale), xr, grad)
    torch.testing.assert_close(got, _torchvision_grad("ps_roi_pool", x, rois, grad, output_size, scale), rtol=0, atol=0)
    # ... outputs wherever no bin reaches the last row or column (there torchvision's forward skips it).
    inner = _rois(40, 12, 14, scale, dtype, seed=h + w, margin=3.0)
    out, mapping = torch.ops.roiops.ps_roi_pool(x, inner, scale, h, w)
    expected, tv_mapping = torch.ops.torchvision.ps_roi_pool(x, inner, scale, h, w)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(mapping, tv_mapping)


def test_where_torchvision_departs():
    # ps_roi_pool: a box over the whole 2 x 2 map; torchvision's forward drops the last row and column.
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    box = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]])
    assert roiops.ps_roi_pool(x, box, 1).item() == x.mean()
    assert tv_ops.ps_roi_pool(x, box, 1).item() == 0.0  # its only bin became empty
    # ps_roi_align: a zero-width box with adaptive sampling has no samples: 0 here, 0 / 0 there.
    flat = torch.tensor([[0, 1.0, 0.5, 1.0, 1.5]])
    assert roiops.ps_roi_align(x, flat, 1, 1.0, 0).item() == 0.0
    assert tv_ops.ps_roi_align(x, flat, 1, 1.0, 0).isnan().all()


def test_hand_checked_case():
    # docs/semantics.md: bin (i, j) is cell (i, j) of channel 2 i + j.
    x = torch.arange(16.0).reshape(1, 4, 2, 2)
    out, mapping = torch.ops.roiops.ps_roi_pool(x, torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]), 1.0, 2, 2)
    assert out.tolist() == [[[[0.0, 5.0], [10.0, 15.0]]]]
    assert mapping.tolist() == [[[[0, 1], [2, 3]]]]
    assert ps_roi_pool_reference(x, torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]]), 2).tolist() == out.tolist()


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool", "PSRoIAlign", "PSRoIPool"])
def test_signatures_and_defaults_are_torchvisions(name):
    ours, theirs = inspect.signature(getattr(roiops, name)), inspect.signature(getattr(tv_ops, name))
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in theirs.parameters.values()
    ]


def test_channels_must_divide_into_bins():
    with pytest.raises(ValueError, match=r"input channels \(10\) must be a multiple of .* \(2 \* 3 = 6\)"):
        roiops.ps_roi_align(torch.randn(1, 10, 5, 5), torch.tensor([[0, 0.0, 0, 3, 3]]), (2, 3))
    with pytest.raises(RuntimeError, match=r"input channels \(10\) must be a multiple"):
        torch.ops.roiops.ps_roi_pool(torch.randn(1, 10, 5, 5), torch.tensor([[0, 0.0, 0, 3, 3]]), 1.0, 2, 3)
    with pytest.raises(TypeError, match="quantized input is not supported"):
        roiops.ps_roi_pool(torch.quantize_per_tensor(torch.randn(1, 4, 5, 5), 0.1, 0, torch.quint8), [], 2)


def test_torchscript_and_fx():
    x = make_input((2, 18, 9, 10), seed=3)
    rois = make_rois(6, 2, 9, 10, 1.0, "mixed", seed=4)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    for module in (roiops.PSRoIAlign(3, 1.0, 2), roiops.PSRoIPool(3, 1.0)):
        scripted = torch.jit.script(module)
        for b in (rois, boxes):
            torch.testing.assert_close(scripted(x, b), module(x, b), rtol=0, atol=0)
        graph = torch.fx.symbolic_trace(module).graph
        assert [n.target for n in graph.nodes if n.op == "call_function"] == [
            getattr(roiops.position_sensitive, type(module).__name__.replace("PSRoI", "ps_roi_").lower())
        ]


@st.composite
def hostile_ps_cases(draw):
    """A map with NaN / inf at random (its channels repeated to fill the bins), boxes of every kind."""
    output_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    x = draw(hostile_maps())
    x = x.repeat(1, output_size[0] * output_size[1], 1, 1)
    scale = draw(st.sampled_from(SCALES))
    rois = draw(rois_on(x, scale, draw(st.integers(0, 5))))
    return x, rois, output_size, scale, draw(st.sampled_from((-1, 0, 1, 2, 3))), draw(st.sampled_from(DEVICES))


DEVICES = [p.values[0] for p in ALL_DEVICES if p.values[0] is not None and p.values[0].torch_device == "cpu"]


@examples(40)
@given(case=hostile_ps_cases(), seed=st.integers(0, 2**16))
def test_hostile_values_match_the_reference(case, seed):
    # CPU kernels against the reference, emulated CUDA against the CPU kernels (NaN for NaN).
    x, rois, output_size, scale, sampling_ratio, dev = case
    calls = {
        "ps_roi_align": (roiops.ps_roi_align, ps_roi_align_reference, dict(sampling_ratio=sampling_ratio)),
        "ps_roi_pool": (roiops.ps_roi_pool, ps_roi_pool_reference, {}),
    }
    if _refused_adaptive(rois, output_size, scale, sampling_ratio, True, x.dtype):
        # Bounded cost: the CPU refuses the grid; CUDA (no blocking check by default) gives NaN rows.
        with dev.python_layer():
            if dev.emulated:
                assert roiops.ps_roi_align(x, rois, output_size, scale, sampling_ratio).isnan().any()
            else:
                with pytest.raises(ValueError, match="samples per bin"):
                    roiops.ps_roi_align(x, rois, output_size, scale, sampling_ratio)
        del calls["ps_roi_align"]
    for public, ref_fn, extra in calls.values():
        with dev.python_layer():
            out = public(x, rois, output_size, scale, **extra)
        rd = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if dev.emulated:
            expected = public(x, rois, output_size, scale, **extra)
            torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        else:
            expected = ref_fn(x.to(rd), rois.to(rd), output_size, scale, **extra).to(x.dtype)
            torch.testing.assert_close(out, expected, equal_nan=True, **_tolerance(x.dtype))
