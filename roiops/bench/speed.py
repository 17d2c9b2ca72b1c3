"""`roiops-bench speed`: roiops against every alternative a user would pick, in one process.

Peers (roiops/bench/peers.py): torchvision, ONNX Runtime and OpenVINO when installed, with the same
inputs and thread count; each peer's largest disagreement with roiops is shown beside its time.
Every timing is a median over repeats (inter-quartile range as spread) of one forward call, or of
one backward call (torch.autograd.grad on a fresh forward graph; the forward is not counted, the
zero-fill of the gradient buffer is). "x best" is the fastest peer's time over roiops' (> 1: roiops
is faster); "x limit" is roiops' time over this machine's lower bound for the case (limits.py).
"""

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

import roiops

from . import limits, peers
from .speed_cases import Case, make_inputs, standard_cases, sweep_cases

__all__ = ["Case", "Result", "implementations", "make_inputs", "standard_cases", "run"]


@dataclass
class Result:
    case: Case
    direction: str  # "forward" or "backward"
    times_ms: Dict[str, List[float]] = field(default_factory=dict)  # impl -> per-repeat times
    disagreement: Dict[str, float] = field(default_factory=dict)  # peer -> max |peer - roiops| (forward)
    bound_ms: Optional[float] = None

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

    def best_peer(self) -> Optional[str]:
        timed = [p for p in peers.PEERS if self.median(p)]
        return min(timed, key=self.median) if timed else None


def implementations(case: Case, with_reference: bool) -> Dict[str, Callable]:
    """roiops (and the pure-PyTorch reference) as callables taking (input, rois)."""
    a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale)
    s = dict(sampling_ratio=case.sampling_ratio, aligned=case.aligned)
    impls: Dict[str, Callable] = {}
    if case.op == "roi_pool":
        impls["roiops"] = lambda x, r: roiops.roi_pool(x, r, **a)
    else:
        mode = "max" if case.op == "roi_align_max" else "avg"
        impls["roiops"] = lambda x, r: roiops.roi_align(x, r, **a, **s, pool_mode=mode)
    if with_reference:
        from roiops.reference import roi_align_reference, roi_pool_reference

        if case.op == "roi_pool":
            impls["reference"] = lambda x, r: roi_pool_reference(x, r, **a)
        else:
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


def run_case(
    case: Case, device: str, args, machine: limits.Machine, usable: List[str], runtime_cache: Dict[tuple, tuple]
) -> List[Result]:
    """Times roiops and the peers on one case. The runtimes' timings are shared between the two
    layouts of a case (they get the same NCHW arrays either way): runtime_cache holds them."""
    torch.set_num_threads(case.threads)
    x, rois = make_inputs(case, device)
    directions = ["forward"] if args.forward_only else ["forward", "backward"]
    results = [Result(case, d) for d in directions]
    ours = implementations(case, args.reference)
    with torch.no_grad():
        want = ours["roiops"](x, rois).float()
    timers = {"forward": time_forward, "backward": time_backward}
    for res in results:
        res.bound_ms = limits.bound_ms(case, rois, res.direction, machine)
        for impl, fn in ours.items():
            # The reference is orders of magnitude slower: a few repeats are enough to place it.
            slow = impl == "reference"
            res.times_ms[impl] = timers[res.direction](
                fn, x, rois, min(3, args.repeats) if slow else args.repeats, 0 if slow else args.warmup, device
            )
    for name in usable:
        key = (name, *(v for k, v in asdict(case).items() if k != "layout"))
        if name != "torchvision" and key in runtime_cache:
            results[0].disagreement[name], results[0].times_ms[name] = runtime_cache[key]
            continue
        built = peers.build(name, case, x, rois)
        if built is None:
            continue
        fn, differentiable = built
        with torch.no_grad():
            results[0].disagreement[name] = float((fn(x, rois).float() - want).abs().max())
        for res in results:
            if res.direction == "forward" or differentiable:
                res.times_ms[name] = timers[res.direction](
                    fn, x, rois, min(peers.REPEATS[name], args.repeats), 1, device
                )
        runtime_cache[key] = results[0].disagreement[name], results[0].times_ms[name]
    return results


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: List[Result], machine: limits.Machine, usable: List[str]) -> None:
    short = {"torchvision": "tv", "onnxruntime": "ort", "openvino": "ov"}
    peer_cols = "".join(f" {short[p] + ' ms':>9} {short[p] + ' diff':>9}" for p in usable)
    header = (
        f"{'case':<16} {'op':<14} {'dir':<4} {'dtype':<8} {'layout':<13} {'thr':>3} {'roiops ms':>13}"
        f"{peer_cols} {'x best':>6} {'limit ms':>8} {'x limit':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r.case
        ours, spread = r.median("roiops"), r.spread("roiops")
        ours_s = f"{_fmt(ours, '.1f')}±{_fmt(spread, '.1f')}" if spread is not None else _fmt(ours, ".1f")
        cells = ""
        for p in usable:
            diff = r.disagreement.get(p) if r.direction == "forward" else None
            cells += f" {_fmt(r.median(p), '.1f'):>9} {_fmt(diff, '.1e'):>9}"
        best = r.best_peer()
        x_limit = ours / r.bound_ms if ours and r.bound_ms else None
        print(
            f"{c.name:<16} {c.op:<14} {r.direction[:3]:<4} {c.dtype:<8} {c.layout:<13} {c.threads:>3} "
            f"{ours_s:>13}{cells} {_fmt(r.ratio(best) if best else None, '.2f'):>6} "
            f"{_fmt(r.bound_ms, '.1f'):>8} {_fmt(x_limit, '.1f'):>7}"
        )
    print(
        f"\nthis machine: streaming {machine.stream_gbs:.1f} GB/s (torch.add), float32 matmul "
        f"{machine.matmul_gflops:.0f} GFLOP/s; 'limit ms' = max(bytes that must move / bandwidth, "
        "flops / matmul rate), see roiops/bench/limits.py"
    )
    print(
        "diff: the peer's largest |difference| from roiops (forward). ONNX's RoiAlign max mode computes another "
        "quantity (max of weighted taps), so only its speed compares; a nonzero diff elsewhere is a peer that "
        "departs from the definition (docs/semantics.md)."
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="also bfloat16 and 1 thread")
    p.add_argument("--sweep", action="store_true", help="also time versus number of RoIs and versus channels")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reference", action="store_true", help="also time the pure-PyTorch reference (slow)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--cases", default="", help="comma-separated substrings: only cases whose name/op matches")
    p.add_argument("--peers", default=",".join(peers.PEERS), help="comma-separated peers to time")
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
    status = peers.availability()
    wanted = [p for p in args.peers.split(",") if p]
    usable = [p for p in peers.PEERS if p in wanted and status[p] is None]
    threads_before = torch.get_num_threads()
    print(f"roiops {roiops.__version__} | torch {torch.__version__} | device {args.device} | repeats {args.repeats}")
    print(
        "peers: " + ", ".join(f"{p} ({'yes' if status[p] is None else status[p]})" for p in peers.PEERS if p in wanted)
    )
    start = time.perf_counter()
    results: List[Result] = []
    runtime_cache: Dict[tuple, tuple] = {}
    try:
        machine = limits.measure(args.device)
        for i, case in enumerate(cases):
            print(
                f"[{i + 1}/{len(cases)}] {case.name} {case.op} {case.dtype} {case.layout} threads={case.threads}",
                flush=True,
            )
            results += run_case(case, args.device, args, machine, usable, runtime_cache)
    finally:
        torch.set_num_threads(threads_before)
    print()
    print_table(results, machine, usable)
    print(
        f"repeats: roiops {args.repeats} (after {args.warmup} warm-up calls); peers at most "
        f"{peers.REPEATS} after 1 warm-up (slow peers get fewer); total {time.perf_counter() - start:.0f} s"
    )
    if args.json:
        payload = {
            "roiops": roiops.__version__,
            "torch": torch.__version__,
            "device": args.device,
            "machine": asdict(machine),
            "peers": status,
            "results": [
                {
                    **asdict(r.case),
                    "direction": r.direction,
                    "times_ms": r.times_ms,
                    "median_ms": {k: r.median(k) for k in r.times_ms},
                    "speedup": {k: r.ratio(k) for k in r.times_ms if k != "roiops"},
                    "disagreement": r.disagreement,
                    "bound_ms": r.bound_ms,
                }
                for r in results
            ],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0
