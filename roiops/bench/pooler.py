"""`roiops-bench pooler`: FPN pooling (MultiScaleRoIAlign) against torchvision's pooler in one process.

The pyramid is P2-P5 of two 800x1088 images (256 channels, strides 4-32); the box head pools 1024
RoIs to 7x7, the mask head 200 RoIs to 14x14, with boxes spread over every level. Each timing is a
median over repeats of one forward call, or of one backward call through a kept forward graph.
"single op" is roiops.roi_align on the same RoIs from the finest map alone (one single-level call):
what the one-call pooler costs beside the plain op.
"""

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch

import roiops

NAMES = ["p2", "p3", "p4", "p5"]
HEADS = [("box_head_7x7", 1024, 7), ("mask_head_14x14", 200, 14)]
IMAGE = (800, 1088)
CHANNELS = 256


def pyramid(layout: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for i, name in enumerate(NAMES):
        stride = 4 * 2**i
        x = torch.randn(2, CHANNELS, IMAGE[0] // stride, IMAGE[1] // stride, generator=g)
        feats[name] = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    return feats


def boxes(num_rois: int, seed: int = 1) -> List[torch.Tensor]:
    """Per image, boxes whose sizes are log-uniform from 16 to 640 px (every FPN level gets some)."""
    g = torch.Generator().manual_seed(seed)
    per_image = []
    for _ in range(2):
        n = num_rois // 2
        size = 16 * 40 ** torch.rand(n, 2, generator=g)
        x1 = torch.rand(n, generator=g) * (IMAGE[1] - size[:, 0])
        y1 = torch.rand(n, generator=g) * (IMAGE[0] - size[:, 1])
        per_image.append(torch.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1))
    return per_image


def _median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _time(fn, feats, repeats):
    """(forward ms, backward ms) of fn(feats dict) -> Tensor."""
    with torch.no_grad():
        forward = _median_ms(lambda: fn(feats), repeats)
    leaves = {k: v.detach().requires_grad_(True) for k, v in feats.items()}
    out = fn(leaves)
    grad = torch.randn_like(out)
    inputs = list(leaves.values())
    backward = _median_ms(lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True, allow_unused=True), repeats)
    return forward, backward


def run_cases(repeats: int, threads: int) -> List[dict]:
    from torchvision.ops import MultiScaleRoIAlign as TorchvisionPooler

    torch.set_num_threads(threads)
    shapes = [IMAGE, IMAGE]
    rows = []
    for layout in ("nchw", "channels_last"):
        feats = pyramid(layout)
        for head, num_rois, size in HEADS:
            per_image = boxes(num_rois)
            ours = roiops.MultiScaleRoIAlign(NAMES, size, 2)
            theirs = TorchvisionPooler(NAMES, size, 2)
            diff = (ours(feats, per_image, shapes) - theirs(feats, per_image, shapes)).abs().max().item()
            rois = torch.cat(
                [torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(per_image)]
            )
            impls = {
                "roiops": lambda f, p=ours, b=per_image: p(f, b, shapes),
                "torchvision": lambda f, p=theirs, b=per_image: p(f, b, shapes),
                "single op": lambda f, s=size: roiops.roi_align(f["p2"], rois, s, 0.25, 2),
            }
            row = dict(head=head, layout=layout, threads=threads, max_abs_diff=diff)
            for name, fn in impls.items():
                row[f"{name} forward ms"], row[f"{name} backward ms"] = _time(fn, feats, repeats)
            for d in ("forward", "backward"):
                row[f"x torchvision {d}"] = row[f"torchvision {d} ms"] / row[f"roiops {d} ms"]
            rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    header = f"{'case':<16} {'layout':<14} {'dir':<4} {'roiops ms':>10} {'tv ms':>9} {'x tv':>6} {'single op ms':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        for d in ("forward", "backward"):
            lines.append(
                f"{r['head']:<16} {r['layout']:<14} {d[:3]:<4} {r[f'roiops {d} ms']:>10.1f} "
                f"{r[f'torchvision {d} ms']:>9.1f} {r[f'x torchvision {d}']:>6.2f} {r[f'single op {d} ms']:>13.1f}"
            )
    lines.append(f"outputs equal to torchvision's pooler within {max(r['max_abs_diff'] for r in rows):.1e}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows to this JSON file")


def run(args) -> int:
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # the comparison needs torchvision's pooler
        print(f"pooler: needs torchvision ({e})")
        return 2
    rows = run_cases(args.repeats, args.threads)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
