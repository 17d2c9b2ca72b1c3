"""`roiops-bench misalign`: what RoIPool's quantization costs, measured at three levels.

Level 1, geometric: the region RoIPool actually pools (read from ``roiops.roi_pool`` run on an index map,
so the operator itself is the one source of truth) against the true box and its true k x k bins, in input
pixels, for strides 4/8/16/32 and box sizes 16..512; RoIAlign (aligned and not) beside it, from its
definition. Includes the article's worked example (800x800 image, 665x665 box, stride 32).

Level 2, feature: feature maps whose cells are exact averages of a known function f over the cell
(f = x, so errors read in pixels, and a smooth periodic f), so the true mean (and max) of f over every true
bin is known in closed form; error of RoIPool and RoIAlign (avg/max, aligned on/off, sampling ratio
1/2/4/adaptive) by stride and box size.

Level 3, task: a small Mask R-CNN second stage (learned conv backbone, ``roiops.models`` box and mask heads,
targets and losses, ``roiops.MultiScaleRoIAlign``) trained end to end once per op and seed (the op table
``level3_learned.OPS``: RoIPool, RoIWarp, RoIAlign avg and PrRoIPool at strides 16 and 32, RoIAlign aligned=False and max at
stride 16) on synthetic shapes (stardist's nuclei image on request); COCO mask AP and mask IoU with two-level
bootstrap intervals (seeds, then test images), learning curves, and the gap mapped against object size in
feature cells at both strides.

Modules: level1_geometry, level2_features, level3_learned (the model, training, scoring), level3_runs (the runs,
in worker processes), summary (level-3 statistics, curves and the size map), data and coco (datasets, AP from
pycocotools' matching), stats, tables, level3_tables, plots, report, level3_report, paper (the published
numbers, once).

Coordinate convention everywhere: image pixel j covers [j, j + 1); feature cell c at stride s covers the
pixels [c s, (c + 1) s) and its value is the average over them (cell centre at (c + 0.5) s). This is the
convention under which RoIAlign with aligned=True is exact.
"""

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Dict, List

import torch

import roiops

from .data import stardist_paths
from .level1_geometry import run_level1
from .level2_features import run_level2
from .level3_learned import BASELINE, OPS, REFERENCE, Config
from .level3_runs import run_level3
from .level3_tables import gap_table, table_2d
from .plots import plot_article, plot_curves, plot_level1, plot_level2, plot_level3, plot_size_map
from .report import findings, write_report
from .summary import summarize
from .tables import article_lines, level1_table, level2_sampling_table, level2_table

# The default level-3 settings per dataset (REPORT.md says why). Synthetic: objects of 12-150 px on 160 px images
# (boxes of about 0.25-4.5 cells at stride 32, 0.5-9 at stride 16, so three octaves of cells are seen at both
# strides); 8 seeds for the ops trained at both strides, 2 for the others. The steps are what the time budget
# allows (30 minutes on 2 cores, with room for one more op at both strides), not the plateau, which RoIAlign
# reaches only near 960 steps at stride 16 and 720 at stride 32: the plateau check (3 seeds trained on to twice the
# steps) says in the report how far below it the nominal runs are. A stride-32 step costs about 1.5-1.85 stride-16
# steps, hence 3/4 of the steps there. stardist (one image, 18 test tiles) is not in the default run: at the seeds
# the budget allows its intervals decide nothing.
DEFAULTS = {
    "synthetic": Config(
        seeds=8, seeds_single=2, steps=528, steps_coarse=396, curve_points=2, plateau_seeds=3, plateau_checkpoints=2
    ),
    "stardist": Config(
        dataset="stardist",
        seeds=3,
        seeds_single=2,
        steps=240,
        stardist_crop=160,
        size_edges=(0.0, 32.0, 64.0, 128.0, 1e4),
    ),
}
# --quick (CI): every code path of level 3 in about a minute; its numbers only show that things run
QUICK = {
    "synthetic": Config(
        steps=40,
        train_images=48,
        test_images=48,
        image_size=128,
        diameter=(12.0, 120.0),
        bootstrap=200,
        curve_points=2,
        plateau_seeds=1,
        plateau_checkpoints=1,
    ),
    "stardist": Config(
        dataset="stardist",
        steps=30,
        stardist_crop=128,
        stardist_crops=32,
        bootstrap=200,
        curve_points=2,
        plateau_seeds=1,
        plateau_checkpoints=1,
        size_edges=(0.0, 32.0, 64.0, 128.0, 1e4),
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (CI): fewer boxes; level 3 with 2 ops x 2 strides x 2 seeds, short training",
    )
    parser.add_argument("--out", default="misalign_report", help="report folder (REPORT.md + PNGs + results.json)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="level-3 seeds of the ops trained at every stride (default per dataset; quick 2); the other ops "
        "keep their smaller count",
    )
    parser.add_argument("--levels", default="1,2,3", help="comma-separated levels to run (default 1,2,3)")
    parser.add_argument("--strides", default=None, help="level-3 strides (default 16,32, the paper's C4 and C5)")
    parser.add_argument(
        "--datasets",
        default="synthetic",
        help="level-3 datasets, of synthetic,stardist (default synthetic; stardist is skipped with a note when "
        "not installed)",
    )
    parser.add_argument(
        "--steps",
        default=None,
        metavar="N[,N32]",
        help="level-3 training steps per run at stride 16 and, if given, at stride 32 (default per dataset: "
        + "; ".join(f"{k} {c.steps_at(16)},{c.steps_at(32)}" for k, c in DEFAULTS.items())
        + ")",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per process (default 1: on a shared 2-core machine a second thread spins "
        "against other processes; 2 helps only on an idle machine)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="level-3 runs trained at once, in separate processes of --threads threads each (default: the number "
        "of CPU cores); the numbers do not depend on it",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="re-render the report and plots of an earlier run's results.json into --out (no compute)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _jsonable(x):
    """NaN (e.g. APl with no large test objects) -> null; tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x


def _unjson(x):
    if isinstance(x, dict):
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return float("nan") if x is None else x


def render(results, out_dir, plots=True) -> str:
    """The PNG plots and REPORT.md of a results dict."""
    if plots:
        if "level1" in results:
            plot_level1(results["level1"], os.path.join(out_dir, "level1_geometry.png"))
            plot_article(results["level1"]["article"], os.path.join(out_dir, "article_example.png"))
        if "level2" in results:
            plot_level2(results["level2"], os.path.join(out_dir, "level2_features.png"))
        for name, r3 in results.get("level3", {}).items():
            plot_level3(r3["summary"], r3["runs"], os.path.join(out_dir, f"level3_{name}_mask_ap.png"), name)
            if r3["summary"].get("curves"):
                plot_curves(r3["summary"], r3["runs"], os.path.join(out_dir, f"level3_{name}_curves.png"), name)
            if r3["summary"].get("size_map"):
                plot_size_map(r3["summary"]["size_map"], os.path.join(out_dir, f"level3_{name}_size_map.png"), name)
    return write_report(results, out_dir)


def _level3_config(name: str, args, quick: bool) -> Config:
    if name not in DEFAULTS:
        raise SystemExit(f"roiops-bench misalign: unknown level-3 dataset {name!r} (one of {', '.join(DEFAULTS)})")
    cfg = (QUICK if quick else DEFAULTS)[name]
    if args.steps:
        steps = [int(x) for x in str(args.steps).split(",")]
        cfg = dataclasses.replace(cfg, steps=steps[0], steps_coarse=steps[-1])
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=args.seeds)
    elif quick:
        cfg = dataclasses.replace(cfg, seeds=2, seeds_single=2)
    return cfg


def _run_level3(name: str, args, quick: bool, log):
    cfg = _level3_config(name, args, quick)
    if name == "stardist" and stardist_paths() is None:
        log("[misalign] level 3 on the stardist nuclei image skipped: the stardist package is not installed.")
        return None
    t0 = time.perf_counter()
    strides = [int(s) for s in args.strides.split(",")] if args.strides else [16, 32]
    ops = [o for o in OPS if o.name in (BASELINE, REFERENCE)] if quick else list(OPS)
    r3 = run_level3(strides, ops, cfg, log, workers=args.workers)
    r3["summary"] = summarize(r3)
    del r3["bootstrap"]  # per-resample values: summarized above, too bulky for the JSON
    print(f"\n== Level 3, {name}: learned features (x100; mean [two-level bootstrap over seeds and test images]) ==")
    print("\n".join(table_2d(r3["summary"]) + [""] + gap_table(r3["summary"])))
    print(f"(level 3, {name}: {time.perf_counter() - t0:.1f} s)")
    return r3


def _run(args) -> int:
    t_start = time.perf_counter()
    if args.from_json:
        with open(args.from_json) as f:
            results = _unjson(json.load(f))
        os.makedirs(args.out, exist_ok=True)
        results["findings"] = findings(results)
        print(f"report: {render(results, args.out, not args.no_plots)}")
        return 0
    torch.manual_seed(0)
    levels = {int(x) for x in str(args.levels).split(",") if x.strip()}
    quick = bool(args.quick)
    os.makedirs(args.out, exist_ok=True)
    results: Dict[str, object] = {}
    notes: List[str] = []

    def log(msg):
        print(msg, flush=True)
        if msg.startswith("[misalign]"):
            notes.append(msg[len("[misalign] ") :])

    if 1 in levels:
        t0 = time.perf_counter()
        results["level1"] = run_level1(n_boxes=100 if quick else 1000)
        print("\n== Level 1: geometry (input pixels) ==")
        print("\n".join(article_lines(results["level1"]["article"])))
        print("\n".join(level1_table(results["level1"])))
        print(f"(level 1: {time.perf_counter() - t0:.1f} s)")
    if 2 in levels:
        t0 = time.perf_counter()
        results["level2"] = run_level2(n_boxes=40 if quick else 300)
        print("\n== Level 2: feature error ==")
        print("\n".join(level2_table(results["level2"])))
        print("\n".join(level2_sampling_table(results["level2"])))
        print(f"(level 2: {time.perf_counter() - t0:.1f} s)")
    if 3 in levels:
        results["level3"] = {}
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            r3 = _run_level3(name, args, quick, log)
            if r3:
                results["level3"][name] = r3
    results["notes"] = notes
    results["findings"] = findings(results)
    results["meta"] = dict(
        quick=quick,
        roiops=roiops.__version__,
        torch=torch.__version__,
        machine=f"{platform.machine()} {os.cpu_count()} CPUs",
        threads=torch.get_num_threads(),
        workers=args.workers,
        seconds=time.perf_counter() - t_start,
        levels=sorted(levels),
    )

    def save():
        blob = json.dumps(_jsonable(results), indent=1, allow_nan=False)
        for path in [os.path.join(args.out, "results.json")] + ([args.json] if args.json else []):
            with open(path, "w") as f:
                f.write(blob)

    save()  # first: a run of many minutes is not lost to a failure in the plots (--from-json re-renders it)
    if not args.no_plots:
        render(results, args.out, True)  # plots (the report is rewritten below with the final time)
    results["meta"]["seconds"] = time.perf_counter() - t_start
    report = write_report(results, args.out)
    save()
    print(f"\nreport: {report}  ({results['meta']['seconds']:.0f} s)")
    return 0
