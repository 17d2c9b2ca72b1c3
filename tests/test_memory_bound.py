"""The largest arguments the API accepts run in bounded memory (docs/semantics.md, Limits) and give the
right result: a 2^24-sample bin (sampling_ratio 4096) and adaptive sampling of a huge box, forward
and backward, both modes, both layouts (the bins cut into pieces are also compared with the
reference at smaller sizes, every CPU path). Each case runs in a fresh interpreter that reports how much
its peak resident memory (VmHWM, not ru_maxrss: that one includes the forking parent's) rose above
the resident memory before the calls, after its inputs were allocated; the
results are checked here against a separable oracle: a sample's bilinear weight is the product of
one weight per axis, so sums over a bin's grid factor into two sums over 4096 samples each."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import roiops
from roiops import _C
from roiops.reference import roi_align_reference

from helpers import input_grad, make_input, to_layout

SANITIZED = os.environ.get("ROIOPS_SANITIZED") == "1"
NO_MEASUREMENT = SANITIZED or not os.path.exists("/proc/self/status")

GRID = 4096  # sampling_ratio 4096: the largest accepted, 2^24 samples per bin
assert GRID * GRID == _C.limits["max_samples_per_bin"]
# What a call may add to the peak resident memory. The kernels' own buffers stay under ~15 MB
# (docs/semantics.md); before the bound, a 2^24-sample bin took 1-1.2 GB of taps.
BOUND_MIB = {"sampling-4096": 64, "adaptive-huge-box": 48}

# Both cases: map [1, 2, H, W] of float64, one box, output 1x1, scale 1, aligned=False.
CASES = {
    # Every one of the 2^24 samples lies on the map (no clamping): a ramp has its maximum at the last.
    "sampling-4096": dict(H=6, W=7, box=(0.5, 0.5, 5.5, 4.5), sampling_ratio=GRID),
    # Adaptive: a 4096-cell box gives a 4096 x 4096 grid, of which about 1026 x 1026 touch the map.
    "adaptive-huge-box": dict(H=1024, W=1024, box=(-1500.0, -1700.0, 2596.0, 2396.0), sampling_ratio=0),
}

_CHILD = r"""
import json, sys, torch, roiops
torch.set_num_threads(2)
H, W, box, sr, out_path, package = json.loads(sys.argv[1])
assert roiops.__file__.startswith(package), (roiops.__file__, package)
ramp = 1 + torch.arange(H * W, dtype=torch.float64).reshape(H, W)  # increasing along rows and columns
x = torch.stack([ramp, ramp.clone()]).unsqueeze(0)  # [1, 2, H, W]
x[0, 1, H // 2, W // 3] = float("nan")  # channel 1: a NaN in the middle of the bin
rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
grad = torch.tensor([1.5, -2.0], dtype=torch.float64).reshape(1, 2, 1, 1)
inputs = [x, x.contiguous(memory_format=torch.channels_last)]
roiops.roi_align(inputs[1], torch.tensor([[0.0, 0, 0, 1, 1]], dtype=torch.float64), 1, 1.0, 2, False, "max")
def status(key):  # KiB
    return int(next(line for line in open("/proc/self/status") if line.startswith(key + ":")).split()[1])
try:
    open("/proc/self/clear_refs", "w").write("5")  # the peak so far (importing torch) := resident now
except OSError:
    pass  # (then the peak below may be the import's: an overestimate)
before = status("VmRSS")
results = {}
for layout, t in zip(("nchw", "nhwc"), inputs):
    for mode in ("avg", "max"):
        out, argmax = torch.ops.roiops.roi_align(t, rois, 1.0, 1, 1, sr, False, mode)
        results[(layout, mode)] = (out, argmax)
        if layout == "nhwc":
            continue  # (a 1x1 output is contiguous in both formats: the backward would be the NCHW one again)
        gin = torch.ops.roiops._roi_align_backward(grad, rois, argmax, 1.0, 1, 1, 1, 2, H, W, sr, False, mode, False)
        # (Each gradient goes to disk at once: the growth should be the calls', not the results'.)
        torch.save(gin, f"{out_path}.{layout}.{mode}")
        del gin
after = status("VmHWM")
torch.save(results, out_path)
print(json.dumps({"growth_kib": after - before}))
"""


def _axis(start, bin_size, size):
    """Per-axis sample coordinates (as the kernels compute them), taps and weights of the 4096 samples."""
    i = torch.arange(GRID, dtype=torch.float64)
    v = start + 0 * bin_size + (i + 0.5) * bin_size / GRID
    valid = (v >= -1) & (v <= size)
    c = v.clamp(min=0)
    low = c.floor().long().clamp(max=size - 1)
    at_end = low >= size - 1
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(c), c - low)
    w_low = torch.where(valid, 1 - frac, 0.0)
    w_high = torch.where(valid, frac, 0.0)
    per_cell = torch.zeros(size, dtype=torch.float64)
    per_cell.index_add_(0, low, w_low).index_add_(0, high, w_high)
    return v, low, high, w_low, w_high, valid, per_cell


def _first(mask):
    return int(mask.nonzero()[0])


@pytest.mark.skipif(NO_MEASUREMENT, reason="needs /proc/self/status; ASan's quarantine and shadow dwarf the bound")
@pytest.mark.parametrize("case", CASES)
def test_largest_accepted_bins_run_in_bounded_memory(case, tmp_path):
    spec = CASES[case]
    H, W, (x1, y1, x2, y2) = spec["H"], spec["W"], spec["box"]
    out_path = tmp_path / "results.pt"
    # The child must import the roiops under test, not the one its working directory or an editable
    # install would give: it runs beside this package, with its folder first on the path, and checks.
    package = pathlib.Path(roiops.__file__).resolve().parent
    args = json.dumps([H, W, spec["box"], spec["sampling_ratio"], str(out_path), str(package)])
    path = os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, args], capture_output=True, text=True, env=env, cwd=package.parent, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    growth_mib = json.loads(proc.stdout.strip().splitlines()[-1])["growth_kib"] / 1024
    print(f"{case}: peak resident memory grew by {growth_mib:.1f} MiB over 6 calls")
    assert growth_mib < BOUND_MIB[case], f"{case}: peak memory grew by {growth_mib:.0f} MiB"

    ramp = 1 + torch.arange(H * W, dtype=torch.float64).reshape(H, W)
    ys, y_low, y_high, wy_low, wy_high, vy, wy = _axis(y1, y2 - y1, H)
    xs, x_low, x_high, wx_low, wx_high, vx, wx = _axis(x1, x2 - x1, W)
    count = GRID * GRID
    grad = torch.tensor([1.5, -2.0], dtype=torch.float64)
    # avg: the sum over the grid factors into the per-axis sums of weights.
    avg = (wy @ ramp @ wx) / count
    avg_grad = torch.outer(wy, wx) / count
    # max, channel 0 (no NaN): the ramp grows with the row and the column, so the maximum is at the
    # first sample of the largest y and of the largest x on the map (beyond H - 1 samples clamp to it).
    y_top = ys[vy].clamp(max=H - 1).max()
    x_top = xs[vx].clamp(max=W - 1).max()
    iy, ix = _first(vy & (ys.clamp(max=H - 1) == y_top)), _first(vx & (xs.clamp(max=W - 1) == x_top))
    # channel 1: the NaN at (H // 2, W // 3) wins from the first sample with a tap on its row and column.
    ny = _first(vy & ((y_low == H // 2) | (y_high == H // 2)))
    nx = _first(vx & ((x_low == W // 3) | (x_high == W // 3)))

    def taps_grad(jy, jx, g):
        out = torch.zeros(H, W, dtype=torch.float64)
        for r, a in ((y_low[jy], wy_low[jy]), (y_high[jy], wy_high[jy])):
            for q, b in ((x_low[jx], wx_low[jx]), (x_high[jx], wx_high[jx])):
                out[r, q] += a * b * g
        return out

    results = torch.load(out_path)
    for layout in ("nchw", "nhwc"):
        out, _ = results[(layout, "avg")]
        gin = torch.load(f"{out_path}.nchw.avg")
        torch.testing.assert_close(out[0, 0, 0, 0], avg, rtol=1e-9, atol=0)
        assert out[0, 1].isnan().all()
        torch.testing.assert_close(gin[0], grad[:, None, None] * avg_grad, rtol=1e-9, atol=1e-15)

        out, argmax = results[(layout, "max")]
        gin = torch.load(f"{out_path}.nchw.max")
        assert argmax.flatten().tolist() == [iy * GRID + ix, ny * GRID + nx], layout
        top = (taps_grad(iy, ix, 1.0) * ramp).sum()
        torch.testing.assert_close(out[0, 0, 0, 0], top, rtol=1e-12, atol=0)
        assert out[0, 1].isnan().all()
        torch.testing.assert_close(gin[0, 0], taps_grad(iy, ix, grad[0]), rtol=0, atol=1e-12)
        torch.testing.assert_close(gin[0, 1], taps_grad(ny, nx, grad[1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio,box", [(257, (0.3, 0.6, 9.2, 7.9)), (0, (-150.0, -80.0, 520.0, 480.0))])
def test_bins_cut_into_pieces_match_the_reference(layout, mode, sampling_ratio, box):
    """Bins of more than 2^16 samples are visited in pieces (257^2 = 66049 samples: the cut falls
    inside a row of the grid; the adaptive grid of 335 x 280 samples, about 17 x 8 of them on the map
    and the rest outside, gives pieces with a stand-in). Forward and backward of every CPU path
    equal the reference's, with NaN and inf in the map."""
    x = make_input((1, 3, 9, 10), torch.float64, seed=5)
    x[0, 1, 4, 5] = float("nan")
    x[0, 2, 2, 7] = float("inf")
    x = to_layout(x, layout).requires_grad_(True)
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    out = roiops.roi_align(x, rois, (2, 3), 1.0, sampling_ratio, False, mode)
    ref = roi_align_reference(x, rois, (2, 3), 1.0, sampling_ratio, False, mode)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12, equal_nan=True)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(input_grad(out, x, g), input_grad(ref, x, g), rtol=1e-9, atol=1e-12, equal_nan=True)
