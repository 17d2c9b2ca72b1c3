"""`roiops-bench speed`: roiops against every alternative a user would pick, in one process.

Peers (roiops/bench/peers.py): torchvision, ONNX Runtime and OpenVINO when installed, with the same
inputs and thread count; each peer's largest disagreement with roiops is shown beside its time.
Every timing is a median over repeats (inter-quartile range as spread) of one forward call, or of
one backward call (torch.autograd.grad on one forward graph kept for all repeats; the forward is not
counted, the first touch and zeroing of the gradient buffer are). "x best" is the fastest peer's
time over roiops' (> 1: roiops is faster); "x limit" is roiops' time over this machine's lower
bound for the case (limits.py).
"""

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional

import torch

import roiops

from . import limits, peers
from .speed_cases import (
    DTYPES,
    Case,
    integration_cases,
    make_inputs,
    rotated_cases,
    rotated_rois,
    standard_cases,
    sweep_cases,
)

__all__ = ["Case", "Result", "implementations", "make_inputs", "standard_cases", "run"]

FLOAT32 = "roiops float32"  # roiops on the float32 copy of a bfloat16/float16 case's inputs


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

    def vs_float32(self) -> Optional[float]:
        """roiops' time over its float32 time on the same values (bfloat16/float16 cases)."""
        ours, f32 = self.median("roiops"), self.median(FLOAT32)
        return ours / f32 if ours and f32 else None

    def best_peer(self) -> Optional[str]:
        timed = [p for p in peers.PEERS if self.median(p)]
        return min(timed, key=self.median) if timed else None


def implementations(case: Case, with_reference: bool) -> Dict[str, Callable]:
    """roiops (and the pure-PyTorch reference) as callables taking (input, rois)."""
    a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale)
    s = dict(sampling_ratio=case.sampling_ratio, aligned=case.aligned)
    impls: Dict[str, Callable] = {}
    mode = "max" if case.op == "roi_align_max" else "avg"
    if case.op == "roi_pool":
        impls["roiops"] = lambda x, r: roiops.roi_pool(x, r, **a)
    elif case.op == "ps_roi_pool":
        impls["roiops"] = lambda x, r: roiops.ps_roi_pool(x, r, **a)
    elif case.op == "ps_roi_align":
        impls["roiops"] = lambda x, r: roiops.ps_roi_align(x, r, **a, sampling_ratio=case.sampling_ratio)
    else:
        impls["roiops"] = lambda x, r: roiops.roi_align(x, r, **a, **s, pool_mode=mode)
    if with_reference:
        from roiops import reference

        impls["reference"] = {
            "roi_pool": lambda x, r: reference.roi_pool_reference(x, r, **a),
            "ps_roi_pool": lambda x, r: reference.ps_roi_pool_reference(x, r, **a),
            "ps_roi_align": lambda x, r: reference.ps_roi_align_reference(
                x, r, **a, sampling_ratio=case.sampling_ratio
            ),
        }.get(case.op, lambda x, r: reference.roi_align_reference(x, r, **a, **s, pool_mode=mode))
    return impls


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_step(fn, x, rois, device: str) -> Callable[[], float]:
    """A callable that times one forward call (ms) each time it is called."""

    def step() -> float:
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            fn(x, rois)
            _sync(device)
        return (time.perf_counter() - t0) * 1e3

    return step


def backward_step(fn, x, rois, device: str, graph=None) -> Callable[[], float]:
    """A callable that times one backward call (ms) each time it is called, through one forward graph
    that is kept (retain_graph): the forward runs once, not once per repeat (torchvision's RoIPool
    forward takes seconds). `graph` = (x requiring grad, fn's output on it) reuses a forward."""
    if graph is None:
        x = x.detach().requires_grad_(True)
        graph = x, fn(x, rois)
    x, out = graph
    grad = torch.randn_like(out)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        torch.autograd.grad(out, x, grad, retain_graph=True)
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    return step


STEPS = {"forward": forward_step, "backward": backward_step}


def measure(steps: Dict[str, Callable[[], float]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Times every step `repeats` times after `warmup` untimed calls, round-robin: a change in the
    machine's load hits all of them alike, so their ratio stays fair."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            t = step()
            if i >= warmup:
                times[name].append(t)
    return times


# Peers are timed for as many repeats as fit in this many seconds per measurement (at least 1, at
# most --repeats; --full: always --repeats): the slow serial torchvision kernels get one, which keeps
# the default run short. Their first call (the disagreement check) is their warm-up; where it alone
# takes longer than this, it is also the one forward measurement (first-call costs are noise then),
# and its graph is the one the backward is timed on.
PEER_BUDGET_S = 1.0


def peer_repeats(first_call_ms: float, args) -> int:
    if args.full:
        return args.repeats
    return max(1, min(args.repeats, int(PEER_BUDGET_S * 1e3 / max(first_call_ms, 1e-3))))


def run_case(
    case: Case, device: str, args, machine: limits.Machine, usable: List[str], runtime_cache: Dict[tuple, tuple]
) -> List[Result]:
    """Times roiops and the peers on one case. The runtimes' timings are shared between the two
    layouts of a case (they get the same NCHW arrays either way): runtime_cache holds them. A
    bfloat16/float16 case also times roiops in float32 on the same values, interleaved ("x f32")."""
    torch.set_num_threads(case.threads)
    x, rois = make_inputs(case, device)
    directions = ["forward"] if args.forward_only else ["forward", "backward"]
    results = [Result(case, d) for d in directions]
    ours = {name: (fn, x, rois) for name, fn in implementations(case, args.reference).items()}
    if case.dtype != "float32":
        f32 = replace(case, dtype="float32")
        ours[FLOAT32] = (implementations(f32, False)["roiops"], *make_inputs(f32, device))
    with torch.no_grad():
        want = ours["roiops"][0](x, rois).float()
    for res in results:
        res.bound_ms = limits.bound_ms(case, rois, res.direction, machine)
        step = STEPS[res.direction]
        fast = {name: step(fn, a, r, device) for name, (fn, a, r) in ours.items() if name != "reference"}
        res.times_ms.update(measure(fast, args.repeats, args.warmup))
        if "reference" in ours:  # orders of magnitude slower: a few repeats are enough to place it
            res.times_ms.update(measure({"reference": step(*ours["reference"], device)}, min(3, args.repeats), 0))
    for name in usable:
        key = (name, *(v for k, v in asdict(case).items() if k != "layout"))
        if name != "torchvision" and key in runtime_cache:
            results[0].disagreement[name], results[0].times_ms[name] = runtime_cache[key]
            continue
        built = peers.build(name, case, x, rois)
        if built is None:
            continue
        fn, differentiable = built
        xg = x.detach().requires_grad_(differentiable and not args.forward_only)
        _sync(device)
        t0 = time.perf_counter()
        got = fn(xg, rois)
        _sync(device)
        first_ms = (time.perf_counter() - t0) * 1e3
        results[0].disagreement[name] = float((got.detach().float() - want).abs().max())
        repeats = peer_repeats(first_ms, args)
        for res in results:
            if res.direction == "backward" and differentiable:
                res.times_ms[name] = measure({name: backward_step(fn, x, rois, device, (xg, got))}, repeats, 0)[name]
            elif res.direction == "forward":
                once = repeats == 1 and first_ms > PEER_BUDGET_S * 1e3
                step = forward_step(fn, x, rois, device)
                res.times_ms[name] = [first_ms] if once else measure({name: step}, repeats, 0)[name]
        runtime_cache[key] = results[0].disagreement[name], results[0].times_ms[name]
    return results


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: List[Result], machine: limits.Machine, usable: List[str]) -> None:
    short = {"torchvision": "tv", "onnxruntime": "ort", "openvino": "ov"}
    peer_cols = "".join(f" {short[p] + ' ms':>9} {short[p] + ' diff':>9}" for p in usable)
    with_f32 = any(r.vs_float32() for r in results)
    header = (
        f"{'case':<16} {'op':<14} {'dir':<4} {'dtype':<8} {'layout':<13} {'thr':>3} {'roiops ms':>13}"
        f"{' x f32' if with_f32 else ''}{peer_cols} {'x best':>6} {'limit ms':>8} {'x limit':>7}"
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
        f32_cell = f" {_fmt(r.vs_float32(), '.2f'):>5}" if with_f32 else ""
        x_limit = ours / r.bound_ms if ours and r.bound_ms else None
        print(
            f"{c.name:<16} {c.op:<14} {r.direction[:3]:<4} {c.dtype:<8} {c.layout:<13} {c.threads:>3} "
            f"{ours_s:>13}{f32_cell}{cells} "
            f"{_fmt(r.ratio(best) if best else None, '.2f'):>6} "
            f"{_fmt(r.bound_ms, '.1f'):>8} {_fmt(x_limit, '.1f'):>7}"
        )
    print(
        f"\nthis machine: streaming {machine.stream_gbs:.1f} GB/s (torch.add), float32 matmul "
        f"{machine.matmul_gflops:.0f} GFLOP/s; 'limit ms' = max(bytes that must move / bandwidth, "
        "flops / matmul rate), see roiops/bench/limits.py"
    )
    if with_f32:
        print("x f32: roiops' time over its float32 time on the same values, timed alternately (< 1: faster)")
    print(
        "diff: the peer's largest |difference| from roiops (forward). ONNX's RoiAlign max mode computes another "
        "quantity (max of weighted taps), so only its speed compares; a nonzero diff elsewhere is a peer that "
        "departs from the definition (docs/semantics.md)."
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--full", action="store_true", help="also bfloat16 and 1 thread; every peer timed for --repeats repeats"
    )
    p.add_argument(
        "--dtypes",
        default="",
        help="comma-separated dtypes of the standard cases (default float32; --full adds bfloat16)",
    )
    p.add_argument("--sweep", action="store_true", help="also time versus number of RoIs and versus channels")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reference", action="store_true", help="also time the pure-PyTorch reference (slow)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--cases", default="", help="comma-separated substrings: only cases whose name/op matches")
    p.add_argument("--peers", default=",".join(peers.PEERS), help="comma-separated peers to time")
    p.add_argument("--json", default="", help="write machine-readable results here")
    p.add_argument(
        "--rotated",
        action="store_true",
        help="only the cost of rotation: roi_align_rotated at angle 0 against roi_align on the same boxes",
    )
    p.add_argument(
        "--prroi",
        action="store_true",
        help="only the cost of exact integration: prroi_pool against roi_align (2x2 and adaptive) on the same boxes",
    )


def cost_beside(args, cases: List[Case], make_fns, note: str) -> List[dict]:
    """Ops on the same inputs, timed round-robin: make_fns(case, rois) gives {name: fn(x, rois)}, the
    baselines first and the op under study last. Prints each one's median ms, the op's time over each
    baseline's and their largest forward |difference|; returns one row per case and direction."""
    rows = []
    for case in cases:
        torch.set_num_threads(case.threads)
        x, rois = make_inputs(case, args.device)
        fns = make_fns(case, rois)
        *baselines, subject = fns
        if not rows:
            heads = "".join(f" {name + ' ms':>20}" for name in fns) + "".join(f" {'x ' + b:>18}" for b in baselines)
            print(f"{'case':<16} {'layout':<13} {'dir':<4}{heads} {'max diff':>9}")
        with torch.no_grad():
            out = fns[subject](x, rois)
            diff = {b: float((out - fns[b](x, rois)).abs().max()) for b in baselines}
        for direction in ["forward"] if args.forward_only else ["forward", "backward"]:
            steps = {name: STEPS[direction](fn, x, rois, args.device) for name, fn in fns.items()}
            times = measure(steps, args.repeats, args.warmup)
            ms = {name: statistics.median(t) for name, t in times.items()}
            ratio = {b: ms[subject] / ms[b] for b in baselines}
            rows.append(
                dict(case=case.name, layout=case.layout, direction=direction, ms=ms, ratio=ratio, max_diff=diff)
            )
            cells = "".join(f" {ms[name]:>20.1f}" for name in fns) + "".join(f" {ratio[b]:>18.2f}" for b in baselines)
            print(f"{case.name:<16} {case.layout:<13} {direction[:3]:<4}{cells} {max(diff.values()):>9.1e}")
    print(note)
    return rows


def rotation_cost(args, cases: Optional[List[Case]] = None) -> List[dict]:
    """roi_align_rotated at angle 0 beside roi_align (avg) on the same boxes."""

    def fns(case, rois):
        a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale, sampling_ratio=case.sampling_ratio)
        rotated = rotated_rois(rois)
        return {
            "roi_align": lambda t, r: roiops.roi_align(t, r, **a, aligned=case.aligned),
            "rotated": lambda t, r: roiops.roi_align_rotated(t, rotated, **a, aligned=case.aligned),
        }

    note = "x roi_align: rotated time over roi_align time on the same boxes (angle 0); max diff: forward |difference|"
    return cost_beside(args, cases or rotated_cases(), fns, note)


def integration_cost(args, cases: Optional[List[Case]] = None) -> List[dict]:
    """prroi_pool beside roi_align (avg, aligned) with 2x2 samples and with adaptive sampling, same boxes."""

    def fns(case, rois):
        a = dict(output_size=case.output_size, spatial_scale=case.spatial_scale, aligned=True)
        return {
            "roi_align sr=2": lambda t, r: roiops.roi_align(t, r, **a, sampling_ratio=2),
            "roi_align adaptive": lambda t, r: roiops.roi_align(t, r, **a, sampling_ratio=0),
            "prroi_pool": lambda t, r: roiops.prroi_pool(t, r, case.output_size, case.spatial_scale),
        }

    note = (
        "x <roi_align>: prroi_pool's time over roi_align's on the same boxes; max diff: forward |difference| "
        "(sampling against the exact integral)"
    )
    return cost_beside(args, cases or integration_cases(), fns, note)


def _only_cost_table(args, label: str, rows_of) -> int:
    threads_before = torch.get_num_threads()
    try:
        rows = rows_of(args)
    finally:
        torch.set_num_threads(threads_before)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"roiops": roiops.__version__, "torch": torch.__version__, label: rows}, f, indent=1)
    return 0


def run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("speed: --device cuda asked for, but no CUDA device is available")
        return 2
    if args.rotated:
        return _only_cost_table(args, "rotation_cost", rotation_cost)
    if args.prroi:
        return _only_cost_table(args, "integration_cost", integration_cost)
    dtypes = [d for d in args.dtypes.split(",") if d] or None
    unknown = [d for d in dtypes or [] if d not in DTYPES]
    if unknown:
        print(f"speed: unknown dtype {unknown[0]!r}; choose from {', '.join(DTYPES)}")
        return 2
    cases = standard_cases(args.full, dtypes) + (sweep_cases() if args.sweep else [])
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
    peer_rule = (
        f"{args.repeats}"
        if args.full
        else f"as many as fit in {PEER_BUDGET_S:g} s per measurement (1 to {args.repeats}; slow ones get fewer, "
        "--full gives all the same)"
    )
    print(
        f"repeats: roiops {args.repeats} (after {args.warmup} warm-up calls); peers {peer_rule}, after their "
        f"first call as warm-up; total {time.perf_counter() - start:.0f} s"
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
                    "speedup": {k: r.ratio(k) for k in r.times_ms if k not in ("roiops", FLOAT32)},
                    "vs_float32": r.vs_float32(),
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
