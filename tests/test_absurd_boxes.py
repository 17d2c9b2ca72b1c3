"""Boxes far larger than the feature map under adaptive sampling (millions of samples per bin): the
CPU kernels visit only the samples that can touch the map (and, in max mode, one stand-in for the
others), so the cost of any box is bounded by the map, with the results of visiting every sample.
(tests/test_cuda.py runs the same boxes on the CUDA kernels against these.)
"""

import time

import pytest
import torch

from roiops.reference import roi_align_reference

ops = torch.ops.roiops


def absurd_boxes():
    """On a 64 x 64 map at spatial_scale 1: a 28,000-px box around the map, a 28,000 x 30 px strip
    across it, a huge box touching the map with one corner, and a huge box beside it."""
    return torch.tensor(
        [
            [0, -14000.0, -13000.0, 14000.0, 15000.0],
            [0, -14000.0, 20.0, 14000.0, 50.0],
            [0, 40.0, 50.0, 28040.0, 28050.0],
            [0, -30000.0, -2000.0, -2000.0, 26000.0],
        ]
    )


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_absurd_boxes_cost_milliseconds(mode, aligned, channels_last):
    # The case: before clipping, one such box on this map took 13 s (16 channels).
    x = torch.ones(1, 16, 64, 64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = absurd_boxes()
    start = time.perf_counter()
    out, arg = ops.roi_align(x, rois, 1.0, 7, 7, 0, aligned, mode)
    grad_in = ops._roi_align_backward(
        torch.ones_like(out), rois, arg, 1.0, 7, 7, 1, 16, 64, 64, 0, aligned, mode, False
    )
    elapsed = time.perf_counter() - start
    # (4000 x 4000 samples per bin for most boxes, just under the 2^24 limit; now ~10 ms here)
    assert elapsed < 1.0, f"{elapsed:.2f} s"

    # On a map of ones every sample on the map is 1 (up to rounding) and every other one 0.
    touches = (out > 0).any(dim=1)
    assert touches.any(dim=(1, 2))[:3].all() and not touches[3].any()  # the last box lies beside the map
    if mode == "max":
        torch.testing.assert_close(out, touches[:, None].expand_as(out).float())
        assert ((arg >= 0) & (arg < 4001 * 4001)).all()
    else:
        # avg: a bin's value is the fraction of its samples on the map, tiny for such boxes ...
        assert out.max() < 0.02 and out.min() == 0
        # ... and the gradient hands on exactly what the forward took: with grad 1 and a map of
        # ones both sums are the summed weights of all samples on the map, divided by the counts.
        torch.testing.assert_close(grad_in.double().sum(), out.double().sum(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True], ids=["unaligned", "aligned"])
def test_clipped_bins_match_the_reference(dtype, mode, aligned):
    # Boxes of hundreds of cells on a 12 x 10 map, small enough for the reference to visit every
    # sample: bins wholly outside, straddling each edge, and wholly inside; mostly negative values, so
    # that in max mode the outside samples (0) win where a bin has any.
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 3, 12, 10, generator=g, dtype=torch.float64) - 1.5).to(dtype).requires_grad_(True)
    rois = torch.tensor(
        [
            [0, -300.0, -250.0, 310.0, 260.0],
            [1, -2.5, 3.0, 400.0, 9.0],
            [1, 4.0, -500.0, 6.5, 11.0],
            [0, -700.0, -600.0, -1.2, 11.3],
            [1, 9.0, 11.0, 700.0, 600.0],
            [0, 2.0, 3.0, 8.0, 9.5],
        ],
        dtype=dtype,
    )
    out, arg = ops.roi_align(x, rois, 1.0, 2, 3, 0, aligned, mode)
    ref = roi_align_reference(x, rois, (2, 3), 1.0, 0, aligned, mode)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    if mode == "max":
        assert (out == 0).any() and (out < 0).any()  # both the outside and the map won somewhere
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_in = ops._roi_align_backward(grad, rois, arg, 1.0, 2, 3, 2, 3, 12, 10, 0, aligned, mode, False)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(grad_in, ref_grad, rtol=1e-5, atol=1e-6)
