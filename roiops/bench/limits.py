"""How close a timing is to this machine's limit: a lower bound on the time of a case from the bytes
that must move (at the measured streaming bandwidth) and from the arithmetic (at the measured matmul
rate), whichever is larger. roiops' time divided by it says how much room is left.

Bytes that must move, at least:
- forward: every feature cell that some box samples (read once: the union of the boxes' footprints,
  times channels), and the output (written once);
- backward: the upstream gradient (read once) and the whole input gradient (written once: cells no
  box touches are zeros, and they must be written too).
Arithmetic: RoIAlign takes 4 multiply-adds per sample and channel (8 flops), forward or backward;
RoIPool one comparison per cell read. The matmul rate overstates what a gather can use, so the
bound is loose in the compute-bound direction; it is a bound, not a prediction.
"""

import math
import statistics
import time
from dataclasses import dataclass

import torch

from .speed_cases import DTYPES, Case, pooled_channels


@dataclass
class Machine:
    stream_gbs: float  # torch.add over 64 MiB operands (2 reads + 1 write per element)
    matmul_gflops: float  # float32 1024x1024 matmul at the case's thread count


def _median_seconds(fn, repeats: int, sync) -> float:
    times = []
    for i in range(repeats + 2):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(device: str) -> Machine:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    n = 16 * 1024 * 1024
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    out = torch.empty_like(a)
    stream = 3 * n * 4 / _median_seconds(lambda: torch.add(a, b, out=out), 10, sync) / 1e9
    m = torch.randn(1024, 1024, device=device)
    flops = 2 * 1024**3 / _median_seconds(lambda: torch.mm(m, m), 10, sync) / 1e9
    return Machine(stream, flops)


def samples_per_call(case: Case) -> int:
    """Bilinear samples times channels (RoIAlign), or cells read times channels (RoIPool, approximate)."""
    channels = pooled_channels(case)
    if case.op in ("roi_pool", "ps_roi_pool"):
        mean_box = (case.min_box + case.max_box) / 2 * case.spatial_scale
        # (Position-sensitive: each output channel reads each cell of the box once, over its bins' channels.)
        cells = (mean_box + 1) ** 2 if case.op == "roi_pool" else mean_box**2
        return int(case.num_rois * channels * cells)
    grid = case.sampling_ratio if case.sampling_ratio > 0 else 2
    return case.num_rois * channels * case.output_size**2 * grid * grid


def touched_cells(case: Case, rois: torch.Tensor) -> int:
    """Feature cells (per channel) that at least one box reads: the union of the box footprints,
    widened by the one-cell reach of bilinear taps."""
    offset = 0.5 if case.aligned and case.op not in ("roi_pool", "ps_roi_pool") else 0.0
    covered = torch.zeros(case.batch, case.height, case.width, dtype=torch.bool)
    for b, x1, y1, x2, y2 in rois.double().cpu().tolist():
        c0 = max(0, math.floor(x1 * case.spatial_scale - offset))
        c1 = min(case.width, math.ceil(x2 * case.spatial_scale - offset) + 2)
        r0 = max(0, math.floor(y1 * case.spatial_scale - offset))
        r1 = min(case.height, math.ceil(y2 * case.spatial_scale - offset) + 2)
        covered[int(b), r0:r1, c0:c1] = True
    return int(covered.sum())


def bound_ms(case: Case, rois: torch.Tensor, direction: str, machine: Machine) -> float:
    element = torch.tensor([], dtype=DTYPES[case.dtype]).element_size()
    pooled = case.num_rois * pooled_channels(case) * case.output_size**2 * element
    # (A position-sensitive op reads each input channel in one bin of each box only.)
    read_channels = case.channels / case.output_size**2 if case.op.startswith("ps_") else case.channels
    if direction == "forward":
        moved = touched_cells(case, rois) * read_channels * element + pooled
    else:
        moved = pooled + case.batch * case.channels * case.height * case.width * element
    flops = samples_per_call(case) * (1 if case.op in ("roi_pool", "ps_roi_pool") else 8)
    return max(moved / (machine.stream_gbs * 1e9), flops / (machine.matmul_gflops * 1e9)) * 1e3
