"""The hand-checkable cases of docs/semantics.md, exactly, forward and gradient: the kernels of every
device (cpu, cuda, emulated cuda: tests/devices.py) and, on the cpu parameter, the reference."""

import pytest
import torch

import roiops
from roiops.reference import roi_align_reference, roi_pool_reference

from devices import ALL_DEVICES, select
from helpers import input_grad

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=ALL_DEVICES)
def dev(request):
    return select(request)


def _implementations(dev, op, reference):
    """(name, fn) pairs to check: the op on dev (results back on the CPU), and the reference on cpu."""

    def on_dev(x, rois, *args):
        x_dev = dev.to(x.detach()).contiguous(memory_format=_format(x)).requires_grad_(x.requires_grad)
        with dev.python_layer():
            out = op(x_dev, dev.to(rois), *args)
        return out, x_dev

    impls = [("kernel", on_dev)]
    if dev.name == "cpu":
        impls.append(("reference", lambda x, rois, *args: (reference(x, rois, *args), x)))
    return impls


def _format(x):
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() else torch.contiguous_format


def _both_align(dev, x, rois, *args):
    """Outputs (on the CPU) of the kernel on dev and, on cpu, the reference, for the same arguments."""
    return [
        fn(x, rois, *args)[0].detach().cpu() for _, fn in _implementations(dev, roiops.roi_align, roi_align_reference)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "aligned,expected",
    [
        (False, [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]),
        (True, [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]),
    ],
    ids=["unaligned", "aligned"],
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_arange_5x5(dev, dtype, aligned, expected, layout):
    x = (
        torch.arange(25, dtype=dtype)
        .reshape(1, 1, 5, 5)
        .contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    )
    rois = torch.tensor([[0, 1, 1, 3, 3]], dtype=dtype)
    expected = torch.tensor(expected, dtype=dtype).reshape(1, 1, 4, 4)
    for out in _both_align(dev, x, rois, (4, 4), 1.0, 0, aligned):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # The adaptive grid is ceil(2 / 4) = 1 sample per bin, so max mode equals avg mode here.
    for out in _both_align(dev, x, rois, (4, 4), 1.0, 0, aligned, "max"):
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_2x2_aligned_sampling2(dev, dtype, layout):
    base = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=dtype)
    rois = torch.tensor([[0, 0, 0, 1, 1]], dtype=dtype)
    expected = torch.tensor([[[[1.0, 1.25], [1.5, 1.75]]]], dtype=dtype)
    expected_grad = torch.tensor([[[[3.0625, 0.4375], [0.4375, 0.0625]]]], dtype=dtype)
    for _, fn in _implementations(dev, roiops.roi_align, roi_align_reference):
        x = base.clone()
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        out, x_used = fn(x.requires_grad_(True), rois, (2, 2), 1.0, 2, True)
        torch.testing.assert_close(out.detach().cpu(), expected, rtol=0, atol=1e-12)
        grad = input_grad(out, x_used, torch.ones_like(out))
        torch.testing.assert_close(grad.cpu(), expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_roi_pool_4x4(dev, dtype, layout):
    base = torch.tensor([[1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]], dtype=dtype).reshape(
        1, 1, 4, 4
    )
    rois = torch.tensor([[0, 0, 0, 3, 3]], dtype=dtype)
    expected = torch.tensor([[4, 8], [12, 16]], dtype=dtype).reshape(1, 1, 2, 2)
    expected_grad = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=dtype).reshape(
        1, 1, 4, 4
    )
    for _, fn in _implementations(dev, roiops.roi_pool, roi_pool_reference):
        x = base.clone()
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        out, x_used = fn(x.requires_grad_(True), rois, (2, 2), 1.0)
        torch.testing.assert_close(out.detach().cpu(), expected, rtol=0, atol=0)
        grad = input_grad(out, x_used, torch.ones_like(out))
        torch.testing.assert_close(grad.cpu(), expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("sampling_ratio", [0, -1])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_zero_height_box_aligned_adaptive(dev, sampling_ratio, mode):
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    rois = torch.tensor([[0, 3, 4, 5, 4.0]])
    for _, fn in _implementations(dev, roiops.roi_align, roi_align_reference):
        out, x_used = fn(x, rois, (7, 7), 1.0, sampling_ratio, True, mode)
        assert out.shape == (1, 3, 7, 7)
        assert torch.count_nonzero(out) == 0
        grad = input_grad(out, x_used, torch.randn(out.shape, device=out.device))
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_zero_rois(op, layout):
    x = torch.randn(2, op.channels(3, output_size=(4, 5)), 6, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = torch.zeros(0, 5)
    outs = [op(x, rois, output_size=(4, 5)), op.call_reference(x, rois, output_size=(4, 5))]
    for out in outs:
        assert out.shape == (0, 3, 4, 5)
        assert out.dtype == x.dtype
        grad = input_grad(out, x, torch.zeros(out.shape))
        assert grad.shape == x.shape and torch.count_nonzero(grad) == 0
    # The list form with an empty list per image gives the same.
    assert roiops.roi_align(x[:, :3], [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


def test_zero_images_zero_rois(op):
    x = torch.randn(0, op.channels(3, output_size=2), 6, 6, requires_grad=True)
    rois = torch.zeros(0, 5)
    out = op(x, rois, output_size=2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert roiops.roi_align(x[:, :3], [], 3).shape == (0, 3, 3, 3)


def test_misalignment_example_665_box_stride_32(dev):
    # docs/semantics.md, case 5: a 665 px box at stride 32 ends at 20.78 cells. RoIPool rounds the end to
    # cell 21, so the box spans 22 cells and the bins are 22/7 cells wide with floor/ceil edges:
    # bin pw covers cells [floor(pw * 22/7), ceil((pw + 1) * 22/7)). On a map holding each cell's
    # x index the bin maximum is the last covered cell: 3, 6, 9, 12, 15, 18, 21.
    W = 25
    x = torch.arange(W, dtype=torch.float64).repeat(W, 1).reshape(1, 1, W, W)
    rois = torch.tensor([[0, 0, 0, 665, 665]], dtype=torch.float64)
    x, rois = dev.to(x), dev.to(rois)
    with dev.python_layer():
        pooled = roiops.roi_pool(x, rois, 7, 1 / 32)
        aligned = roiops.roi_align(x, rois, 7, 1 / 32, 2, True)
    assert pooled[0, 0, 0].tolist() == [3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0]
    # RoIAlign (aligned, on a linear ramp) averages to the exact bin centres instead.
    # The bin centres of the aligned RoIAlign are at (pw + 0.5) * 20.78 / 7 - 0.5 cells.
    centres = (torch.arange(7, dtype=torch.float64) + 0.5) * (665 / 32) / 7 - 0.5
    torch.testing.assert_close(aligned[0, 0, 0].cpu(), centres, rtol=0, atol=1e-9)


def _nan_maps(channels, first, second_nan):
    """A [1, channels, 4, 4] map of zeros; channel c has a NaN at cell first + c (row-major) and, with
    second_nan, another one at the last cell (after the first in every visiting order)."""
    x = torch.zeros(1, channels, 4, 4, dtype=torch.float64)
    for c in range(channels):
        x[0, c].view(-1)[first + c] = float("nan")
        if second_nan:
            x[0, c, 3, 3] = float("nan")
    return x


# Bilinear weights along one axis of RoIAlign max, case 6: sample 0 at 0.75 reads cells 0 and 1, sample 1
# at 2.25 reads cells 2 and 3.
_AXIS_WEIGHTS = {0: {0: 0.25, 1: 0.75}, 1: {2: 0.75, 3: 0.25}}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [4, 16], ids=["4ch", "16ch"])  # 16: RoIPool NCHW takes its NHWC loop
@pytest.mark.parametrize("second_nan", [False, True], ids=["one-nan", "two-nans"])
def test_nan_anywhere_in_a_max_bin(dev, dtype, layout, channels, second_nan):
    """docs/semantics.md, case 6: one NaN at any of the 16 cells of a 4x4 map of zeros, one bin over
    the map: both max modes give NaN and route the gradient to the first NaN (RoIPool: its cell;
    RoIAlign: the four taps of the first sample that reads it); avg mode gives NaN too."""
    rois = torch.tensor([[0, 0, 0, 3, 3]], dtype=dtype)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for first in range(0, 16, channels):
        base = _nan_maps(channels, first, second_nan).to(dtype).contiguous(memory_format=memory_format)
        pool_grad = torch.zeros(1, channels, 4, 4, dtype=dtype)
        align_grad = torch.zeros(1, channels, 4, 4, dtype=dtype)
        for c in range(channels):
            i, j = divmod(first + c, 4)
            pool_grad[0, c, i, j] = 1
            for r, wr in _AXIS_WEIGHTS[i // 2].items():
                for q, wq in _AXIS_WEIGHTS[j // 2].items():
                    align_grad[0, c, r, q] = wr * wq
        checks = [
            (roiops.roi_pool, roi_pool_reference, (1, 1.0), pool_grad),
            (roiops.roi_align, roi_align_reference, (1, 1.0, 2, False, "max"), align_grad),
        ]
        for op, reference, args, expected_grad in checks:
            for name, fn in _implementations(dev, op, reference):
                out, x_used = fn(base.clone().requires_grad_(True), rois, *args)
                assert out.isnan().all(), (name, op.__name__, first)
                grad = input_grad(out, x_used, torch.ones_like(out))
                torch.testing.assert_close(grad.cpu(), expected_grad, rtol=0, atol=0, msg=f"{name} {op.__name__}")
        for out in _both_align(dev, base, rois, 1, 1.0, 2, False, "avg"):
            assert out.isnan().all()
