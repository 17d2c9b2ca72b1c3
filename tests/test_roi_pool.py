"""roiops.roi_pool's own tests: rounding, torchvision, and its CPU kernel paths (channel blocks, the
sparse NCHW path, the backward's parts). The standard tests (reference, layouts, dtypes, gradcheck,
opcheck, compile, edges) run over the op table in test_ops.py and test_ops_edges.py."""

import pytest
import torch

import roiops
from roiops.reference import roi_pool_reference

from devices import CPU
from helpers import input_grad, make_input, make_rois, to_layout
from op_table import OPS, check_against_oracle


def test_rounding_half_away_from_zero():
    # 2.5 rounds to 3 and -0.5 to -1 (C round), not to 2 / -0 (Python/torch round-half-even):
    # with a 1x1 output the pooled maximum tells which cells the rounded box covers.
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 2] = 5.0  # covered only if x1 = 2.5 rounded to 2 (it must round to 3)
    x[0, 0, 0, 3] = 1.0
    rois = torch.tensor([[0, 2.5, 0.0, 4.0, 0.0]])
    assert roiops.roi_pool(x, rois, 1).item() == 1.0
    assert roi_pool_reference(x, rois, 1).item() == 1.0
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, 0, 1] = 2.0
    # x1 = -0.5 -> -1, x2 = 0.5 -> 1: width 3, bin [-1, 2) clipped to [0, 2) includes cell 1
    # (half-to-even would give x1 = x2 = 0 and cover cell 0 only).
    r = torch.tensor([[0, -0.5, 0, 0.5, 0]])
    assert roiops.roi_pool(y, r, 1).item() == 2.0
    assert roi_pool_reference(y, r, 1).item() == 2.0


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("kind", ["inside", "partial", "outside", "inverted", "zero", "mixed"])
def test_vs_torchvision(scale, kind):
    tv_ops = pytest.importorskip("torchvision.ops")
    x = make_input((2, 3, 10, 12), seed=41, distinct=True)
    rois = make_rois(15, 2, 10, 12, scale, kind, seed=42)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    out = roiops.roi_pool(xa, rois, (3, 4), scale)
    ref = tv_ops.roi_pool(xb, rois, (3, 4), scale)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(43))
    torch.testing.assert_close(input_grad(out, xa, grad_out), input_grad(ref, xb, grad_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dense_bins_in_channel_blocks_vs_reference(dtype, layout, restore_threads):
    """Bins that cover the map densely take the channel-block kernel (an NCHW input transposed block by
    block): 70 channels are two full blocks of 32 and a partial one of 6, on 1 and 2 threads."""
    x = make_input((2, 70, 12, 14), dtype, layout=layout, seed=31, distinct=True)
    rois = make_rois(64, 2, 12, 14, 1.0, "mixed", dtype, seed=32)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        if dtype == torch.bfloat16:  # (its gradient sums up to 64 contributions: the reference's bfloat16 sums drift)
            torch.testing.assert_close(roiops.roi_pool(x, rois, 3), roi_pool_reference(x, rois, 3), rtol=0, atol=0)
        else:
            check_against_oracle(OPS["roi_pool"], CPU, x, rois, layout, output_size=3, spatial_scale=1.0)


@pytest.mark.parametrize("special", ["ties", "inf_nan"])
def test_sparse_nchw_path_matches_channels_last_on_ties_inf_nan(special):
    """Few small boxes on a large map take the NCHW column-max kernel; a channels-last input takes
    the NHWC kernel. Both must give the same values and route the gradient to the same cell, also
    with many ties (first cell in row-major order wins) and with -inf / NaN cells."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 3, (2, 8, 64, 80), generator=g).float()
    if special == "inf_nan":
        x[torch.rand(x.shape, generator=g) < 0.1] = float("-inf")
        x[torch.rand(x.shape, generator=g) < 0.05] = float("nan")
    rois = torch.tensor([[0, 3.0, 5.0, 40.0, 33.0], [1, 10.0, 2.0, 17.0, 60.0], [1, -5.0, -5.0, 6.0, 6.0]])
    outs, grads = [], []
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.clone().contiguous(memory_format=layout).requires_grad_(True)
        out = roiops.roi_pool(xi, rois, (5, 4), spatial_scale=0.5)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
        outs.append(out.detach())
        grads.append(xi.grad)
    torch.testing.assert_close(outs[0], outs[1], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_is_the_serial_scatter_for_any_argmax_and_thread_count(dtype, layout, restore_threads):
    """The backward writes the gradient part by part (a channel's planes, or for channels_last a band
    of rows), each part visiting only the bins whose argmax falls in it. Whatever the argmax (the
    caller's: cells far from the bin, on band edges, invalid ones) and the thread count, the result
    is exactly the serial scatter in (RoI, bin) order, accumulated in float for the half types."""
    g = torch.Generator().manual_seed(61)
    n, c, h, w, k = 3, 5, 37, 11, 40
    rois = make_rois(k, n, h, w, 1.0, "mixed", seed=62)
    argmax = torch.randint(-3, h * w + 3, (k, c, 2, 3), generator=g, dtype=torch.int32)
    grad = torch.randn(k, c, 2, 3, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch.zeros(n, c, h * w, dtype=acc)
    for r in range(k):
        for ch in range(c):
            for i, v in zip(argmax[r, ch].flatten().tolist(), grad[r, ch].flatten().to(acc)):
                if 0 <= i < h * w:
                    expected[int(rois[r, 0]), ch, i] += v
    expected = expected.view(n, c, h, w).to(dtype)
    grad, argmax = to_layout(grad, layout), to_layout(argmax, layout)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        gi = torch.ops.roiops._roi_pool_backward(grad, rois.to(dtype), argmax, 1.0, 2, 3, n, c, h, w, False)
        torch.testing.assert_close(gi, expected, rtol=0, atol=0)
        assert gi.is_contiguous(
            memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
        )
