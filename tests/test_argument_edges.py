"""Edge cases of the arguments, each of which an earlier build got wrong (found by reading the code):
an int64 sampling_ratio narrowed to int after its sign test, a spatial_scale finite as a double but
not in float32, NaN boxes on the unchecked CUDA path, double backward, and a process-wide
deterministic-backward switch."""

import threading

import pytest
import torch

import roiops
from roiops.reference import roi_align_reference

from devices import CUDA_DEVICES
from helpers import make_input

ops = torch.ops.roiops
ROIS = torch.tensor([[0, 0.5, 1.0, 13.0, 11.0], [1, 2.0, 0.0, 9.0, 14.0]])


def test_sampling_ratio_far_below_zero_is_adaptive():
    # -(2**32) + 2 used to become the fixed ratio 2 (its low 32 bits) after the "<= 0" test.
    x = make_input((2, 3, 16, 16), torch.float64, seed=1)
    rois = ROIS.double()
    for ratio in (-(2**32) + 2, -(2**62), -1):
        got, _ = ops.roi_align(x, rois, 1.0, 2, 2, ratio, False, "avg")
        adaptive, _ = ops.roi_align(x, rois, 1.0, 2, 2, 0, False, "avg")
        assert torch.equal(got, adaptive)
        torch.testing.assert_close(got, roi_align_reference(x, rois, (2, 2), 1.0, 0, False, "avg"))
    fixed, _ = ops.roi_align(x, rois, 1.0, 2, 2, 2, False, "avg")
    assert not torch.equal(fixed, adaptive)  # (the case tells the two apart)


@pytest.mark.parametrize("scale", [1e39, 1e-50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_spatial_scale_outside_float32_is_refused_for_float_inputs(scale, dtype):
    # 1e39 became inf in the float32 geometry (all-zero output), 1e-50 became 0.
    x = make_input((2, 3, 8, 8), dtype, seed=2)
    for call in (
        lambda: ops.roi_align(x, ROIS.to(dtype), scale, 2, 2, 2, True, "avg"),
        lambda: ops.roi_pool(x, ROIS.to(dtype), scale, 2, 2),
    ):
        with pytest.raises(RuntimeError, match=r"spatial_scale .* outside the range of float32"):
            call()
    with pytest.raises(roiops.KernelValueError, match="spatial_scale"):
        roiops.roi_align(x, ROIS.to(dtype), 2, scale, 2, True)


def test_spatial_scale_beyond_float32_is_fine_for_float64():
    x = make_input((2, 3, 8, 8), torch.float64, seed=3)
    rois = torch.tensor([[0, 0.0, 0.0, 3e-39, 4e-39]], dtype=torch.float64)
    out = roiops.roi_align(x, rois, 2, 1e39, 2, True)
    torch.testing.assert_close(out, roi_align_reference(x, rois, (2, 2), 1e39, 2, True, "avg"))


@pytest.mark.parametrize("dev", [p for p in CUDA_DEVICES if "emulated" in str(p.id)])
@pytest.mark.parametrize("column", [1, 2, 3, 4])
def test_unchecked_nan_box_gives_nan_on_cuda(dev, column):
    # With the device box checks off (or during graph capture) a NaN coordinate used to give 0.
    x = make_input((2, 3, 9, 11), torch.float32, seed=4)
    rois = ROIS.clone()
    rois[0, column] = float("nan")
    previous = dev.ops.set_device_box_checks(False)
    try:
        for out, argmax in (
            dev.ops.roi_align(x, rois, 1.0, 2, 2, 2, True, "avg"),
            dev.ops.roi_align(x, rois, 1.0, 2, 2, 2, True, "max"),
            dev.ops.roi_pool(x, rois, 1.0, 2, 2),
        ):
            assert out[0].isnan().all() and not out[1].isnan().any()
            if argmax.numel():
                assert (argmax[0] == -1).all()
    finally:
        dev.ops.set_device_box_checks(previous)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_double_backward_names_the_op(op):
    x = make_input((2, 3, 8, 8), torch.float64, seed=5).requires_grad_(True)
    out = getattr(roiops, op)(x, ROIS.double(), 2, 1.0)
    (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match=f"{op}: double backward"):
        grad.sum().backward()


def test_deterministic_backward_setting_is_per_thread():
    seen = {}

    def other_thread():
        seen["before"] = roiops.set_deterministic_backward(False)
        seen["after"] = roiops.set_deterministic_backward(None)

    with roiops.deterministic_backward(True):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert roiops.set_deterministic_backward(True) is True  # untouched by the other thread
    assert seen == {"before": None, "after": False}
