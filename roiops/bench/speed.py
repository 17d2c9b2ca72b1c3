"""`roiops-bench speed`: roiops against torchvision and the pure-PyTorch reference, in one process.

Every timing is a median over repeats (with the inter-quartile range as spread) of one forward call,
or of one backward call (torch.autograd.grad on a fresh forward graph; the forward is not counted,
the zero-fill of the gradient buffer is). Ratios are peer time / roiops time: > 1 means roiops is faster.
"""
import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

import roiops

try:
    import torchvision.ops as tv_ops
except Exception:  # torchvision is optional: its columns are then left empty
    tv_ops = None

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Case:
    """One workload: an FPN P2 feature map of an 800x1088 image by default (stride 4)."""

    name: str
    op: str  # "roi_align_avg", "roi_align_max" or "roi_pool"
    num_rois: int
    output_size: int
    batch: int = 2
    channels: int = 256
    height: int = 200
    width: int = 272
    spatial_scale: float = 0.25
    sampling_ratio: int = 2
    aligned: bool = True
    dtype: str = "float32"
    layout: str = "nchw"  # or "channels_last"
    threads: int = 2
    min_box: float = 16.0
    max_box: float = 400.0


@dataclass
class Result:
    case: Case
    direction: str  # "forward" or "backward"
    times_ms: Dict[str, List[float]] = field(default_factory=dict)  # impl -> per-repeat times

    def median(self, impl: str) -> Optional[float]:
        t = self.times_ms.get(impl)
        return statistics.median(t) if t else None

    def spread(self, impl: str) -> Optional[float]:
        t = self.times_ms.get(impl)
        if not t or len(t) < 4:
            return None
        q = statistics.quantiles(t, n=4)
        return q[2] - q[0]

    def ratio(self, impl: str) -> Optional[float]:
        ours, theirs = self.median("roiops"), self.median(impl)
        return theirs / ours if ours and theirs else None


def make_inputs(case: Case, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, case.channels, case.height, case.width, generator=g)
    image_h, image_w = case.height / case.spatial_scale, case.width / case.spatial_scale
    size = case.min_box + (case.max_box - case.min_box) * torch.rand(case.num_rois, 2, generator=g)
    x1 = torch.rand(case.num_rois, generator=g) * (image_w - size[:, 0])
    y1 = torch.rand(case.num_rois, generator=g) * (image_h - size[:, 1])
    batch_index = torch.randint(0, case.batch, (case.num_rois,), generator=g).float()
    rois = torch.stack([batch_index, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)
    dtype = DTYPES[case.dtype]
    x = x.to(device=device, dtype=dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, rois.to(device=device, dtype=dtype)


def implementations(case: Case, with_reference: bool) -> Dict[str, Callable]:
    """The callables to time, each taking (input, rois)."""
    a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale)
    s = dict(sampling_ratio=case.sampling_ratio, aligned=case.aligned)
    impls: Dict[str, Callable] = {}
    if with_reference:
        from roiops.reference import roi_align_reference, roi_pool_reference
    if case.op == "roi_pool":
        impls["roiops"] = lambda x, r: roiops.roi_pool(x, r, **a)
        if tv_ops is not None and case.dtype != "bfloat16":
            impls["torchvision"] = lambda x, r: tv_ops.roi_pool(x, r, **a)
        if with_reference:
            impls["reference"] = lambda x, r: roi_pool_reference(x, r, **a)
    else:
        mode = "max" if case.op == "roi_align_max" else "avg"
        impls["roiops"] = lambda x, r: roiops.roi_align(x, r, **a, **s, pool_mode=mode)
        # torchvision has no max mode and no bfloat16 RoIAlign on the CPU.
        if tv_ops is not None and mode == "avg" and case.dtype != "bfloat16":
            impls["torchvision"] = lambda x, r: tv_ops.roi_align(x, r, **a, **s)
        if with_reference:
            impls["reference"] = lambda x, r: roi_align_reference(x, r, **a, **s, pool_mode=mode)
    return impls


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forward(fn, x, rois, repeats: int, warmup: int, device: str) -> List[float]:
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn(x, rois)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_backward(fn, x, rois, repeats: int, warmup: int, device: str) -> List[float]:
    x = x.detach().requires_grad_(True)
    times = []
    grad = None
    for i in range(warmup + repeats):
        out = fn(x, rois)
        if grad is None:
            grad = torch.randn_like(out)
        _sync(device)
        t0 = time.perf_counter()
        torch.autograd.grad(out, x, grad)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def samples_per_call(case: Case) -> int:
    """Bilinear samples (RoIAlign) or cells read (RoIPool, approximate) per forward call."""
    if case.op == "roi_pool":
        mean_box = (case.min_box + case.max_box) / 2 * case.spatial_scale
        return int(case.num_rois * case.channels * (mean_box + 1) ** 2)
    grid = case.sampling_ratio if case.sampling_ratio > 0 else 2
    return case.num_rois * case.channels * case.output_size**2 * grid * grid


def stream_bandwidth_gbs(device: str, repeats: int = 10) -> float:
    """What a plain streaming pass reaches here: torch.add over 64 MiB operands (2 reads + 1 write)."""
    n = 16 * 1024 * 1024
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    out = torch.empty_like(a)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        torch.add(a, b, out=out)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 3 * n * 4 / statistics.median(times) / 1e9


def standard_cases(full: bool) -> List[Case]:
    """The cases of the issue: box head (512 RoIs -> 7x7) and mask head (100 RoIs -> 14x14)."""
    heads = [("box_head_7x7", 512, 7), ("mask_head_14x14", 100, 14)]
    ops = ["roi_align_avg", "roi_align_max", "roi_pool"] if full else ["roi_align_avg", "roi_pool"]
    dtypes = ["float32", "bfloat16"] if full else ["float32"]
    threads = [1, 2] if full else [2]
    cases = []
    for name, k, size in heads:
        for op in ops:
            for dtype in dtypes:
                for layout in ["nchw", "channels_last"]:
                    for t in threads:
                        cases.append(Case(name, op, k, size, dtype=dtype, layout=layout, threads=t))
    return cases


def sweep_cases() -> List[Case]:
    """How the cost grows: RoIAlign box-head forward/backward vs number of RoIs and vs channels."""
    cases = [Case(f"rois_{k}", "roi_align_avg", k, 7) for k in (16, 64, 256, 1024, 2048)]
    cases += [Case(f"channels_{c}", "roi_align_avg", 512, 7, channels=c) for c in (16, 64, 256)]
    return cases


def run_case(case: Case, device: str, repeats: int, warmup: int, with_reference: bool, directions) -> List[Result]:
    torch.set_num_threads(case.threads)
    x, rois = make_inputs(case, device)
    results = []
    for direction in directions:
        res = Result(case, direction)
        for impl, fn in implementations(case, with_reference).items():
            # The reference is orders of magnitude slower: a few repeats are enough to place it.
            reps = repeats if impl != "reference" else max(1, min(3, repeats))
            timer = time_forward if direction == "forward" else time_backward
            try:
                res.times_ms[impl] = timer(fn, x, rois, reps, warmup if impl != "reference" else 0, device)
            except (RuntimeError, NotImplementedError) as e:  # a peer lacking a dtype/device
                res.times_ms[impl] = []
                print(f"  ({impl} skipped on {case.name}/{case.op}/{case.dtype}: {str(e).splitlines()[0][:80]})")
        results.append(res)
    return results


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: List[Result], stream_gbs: float) -> None:
    header = (
        f"{'case':<16} {'op':<14} {'dir':<4} {'dtype':<8} {'layout':<13} {'thr':>3} "
        f"{'roiops ms':>14} {'tv ms':>9} {'x tv':>6} {'ref ms':>9} {'x ref':>7} {'Gsamp/s':>8} {'GB/s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r.case
        ours = r.median("roiops")
        spread = r.spread("roiops")
        ours_s = f"{_fmt(ours, '.2f')}±{_fmt(spread, '.2f')}" if spread is not None else _fmt(ours, ".2f")
        rate = samples_per_call(c) / (ours / 1e3) / 1e9 if ours else None
        # Each sample gathers 4 taps of one element (RoIPool: 1 cell read).
        taps = 1 if c.op == "roi_pool" else 4
        gbs = rate * taps * torch.tensor([], dtype=DTYPES[c.dtype]).element_size() if rate else None
        print(
            f"{c.name:<16} {c.op:<14} {r.direction[:3]:<4} {c.dtype:<8} {c.layout:<13} {c.threads:>3} "
            f"{ours_s:>14} {_fmt(r.median('torchvision'), '.2f'):>9} {_fmt(r.ratio('torchvision'), '.2f'):>6} "
            f"{_fmt(r.median('reference'), '.0f'):>9} {_fmt(r.ratio('reference'), '.0f'):>7} "
            f"{_fmt(rate, '.2f'):>8} {_fmt(gbs, '.1f'):>6}"
        )
    print(f"\nstreaming reference on this machine: torch.add reaches {stream_gbs:.1f} GB/s "
          "(GB/s column: bytes the samples gather, an upper bound on traffic; cache hits make it exceed DRAM speed)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="all ops (incl. max mode), float32+bfloat16, 1 and 2 threads")
    p.add_argument("--sweep", action="store_true", help="also time versus number of RoIs and versus channels")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reference", action="store_true", help="also time the pure-PyTorch reference (slow)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--cases", default="", help="comma-separated substrings: only cases whose name/op matches")
    p.add_argument("--json", default="", help="write machine-readable results here")


def run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("speed: --device cuda asked for, but no CUDA device is available")
        return 2
    cases = standard_cases(args.full) + (sweep_cases() if args.sweep else [])
    if args.device.startswith("cuda"):
        for c in cases:
            c.threads = torch.get_num_threads()
    if args.cases:
        keys = args.cases.split(",")
        cases = [c for c in cases if any(k in f"{c.name}/{c.op}/{c.dtype}/{c.layout}" for k in keys)]
    directions = ["forward"] if args.forward_only else ["forward", "backward"]
    threads_before = torch.get_num_threads()
    print(f"roiops {roiops.__version__} | torch {torch.__version__} | device {args.device} | "
          f"torchvision {'yes' if tv_ops is not None else 'not importable'} | repeats {args.repeats}")
    results: List[Result] = []
    try:
        for i, case in enumerate(cases):
            print(f"[{i + 1}/{len(cases)}] {case.name} {case.op} {case.dtype} {case.layout} threads={case.threads}",
                  flush=True)
            results += run_case(case, args.device, args.repeats, args.warmup, args.reference, directions)
    finally:
        torch.set_num_threads(threads_before)
    stream = stream_bandwidth_gbs(args.device)
    print()
    print_table(results, stream)
    if args.json:
        payload = {
            "roiops": roiops.__version__,
            "torch": torch.__version__,
            "device": args.device,
            "stream_gbs": stream,
            "results": [
                {
                    **asdict(r.case),
                    "direction": r.direction,
                    "times_ms": r.times_ms,
                    "median_ms": {k: r.median(k) for k in r.times_ms},
                    "speedup": {k: r.ratio(k) for k in r.times_ms if k != "roiops"},
                }
                for r in results
            ],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)
        print(f"wrote {args.json}")
    return 0
