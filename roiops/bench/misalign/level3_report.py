"""The level-3 part of REPORT.md: the setup, the tables beside the paper's, and which of the paper's findings the
run reproduces. Every number is read from the run's results; nothing here is written in by hand except the
paper's rows (paper.py)."""

from typing import List

from . import level3_tables as tab
from .level3_learned import BASELINE, EXACT, REFERENCE
from .level3_tables import fmt_entry
from .paper import TABLE_2C, TABLE_2D
from .stats import verdict
from .summary import at_plateau, plateau_step


def _data_text(r3: dict) -> str:
    cfg, d = r3["config"], r3["data"]
    cells = ", ".join(f"{d['size_median'] / s:.1f} cells at stride {s}" for s in sorted(r3["strides"]))
    if r3.get("dataset") == "stardist":
        text = (
            f"Data: the nuclei image that the `stardist` package ships (512x512 fluorescence microscopy, labelled "
            f"nuclei), upscaled {cfg['stardist_scale']}x (image bilinear, labels nearest); left half for training "
            f"({d['train_images']} random {cfg['stardist_crop']} px crops of its 8 flips/rotations, "
            f"{d['train_objects']} nuclei), right half for testing ({d['test_images']} tiles, {d['test_objects']} "
            "nuclei). One image: the test set is small and the nuclei alike in size."
        )
    else:
        text = (
            f"Data: synthetic {cfg['image_size']}x{cfg['image_size']} grey images, {cfg['objects_per_image'][0]}-"
            f"{cfg['objects_per_image'][1]} occluding ellipses, star polygons and rings (diameter "
            f"{cfg['diameter'][0]:g}-{cfg['diameter'][1]:g} px, log-uniform"
            + (", stratified in the test set" if cfg.get("stratify_test") else "")
            + f") on a noisy background, one category; {d['train_images']} training images ({d['train_objects']} "
            f"objects), {d['test_images']} test images ({d['test_objects']} objects)."
        )
    return (
        text + f" Median object size {d['size_median']:.0f} px ({cells}; size = geometric mean of the box's sides). "
        f"Proposals are the ground-truth boxes with each side moved by {cfg['jitter']} x side x N(0, 1): two per "
        "object, redrawn at every training step (plus random background boxes); one per test object, the same "
        "for every op and seed. Each test proposal gives one detection (class score, refined box, mask in it). "
        "AP / AP50 / AP75: pycocotools' matching; mask IoU: each object against the detection from its own proposal."
    )


def _mapping_text(cfg: dict) -> List[str]:
    return [
        "How the rows map to the paper's, and what compares:",
        "",
        "- The paper's RoIAlign (Detectron, ResNet) samples without the half-pixel offset, i.e. `aligned=False`; "
        "its ResNet's padded stride-2 convolutions and pooling centre feature cell c on image pixel c·s, within "
        "half a pixel of where `aligned=False` puts it, so there it is nearly exact. This backbone's 2x2 stride-2 convolutions tile "
        "the image, which puts a cell's centre where `aligned=True` assumes: here `aligned=True` is the exact "
        "one, and the paper's RoIAlign rows are set beside `RoIAlign avg` (aligned=True).",
        "- RoIWarp here is RoIAlign avg with "
        f"{cfg['sampling_ratio']}x{cfg['sampling_ratio']} samples per bin on boxes rounded to the feature grid: it "
        "isolates the box rounding. MNC's RoIWarp layer (as the paper ran it) instead takes one sample at each "
        "bin's start and max-pools; the paper's RoIWarp row is beside ours for the direction only.",
        "- AP here ranks masks by the box head's score, with one detection per test proposal (ground-truth boxes "
        "jittered) and no background false positives, on one category of synthetic shapes. Only the directions of "
        "differences compare with COCO AP, not their sizes. The AP with every score equal is given beside the "
        "scored AP, so that what the ranking contributes is visible.",
    ]


def level3_section(r3: dict) -> List[str]:
    cfg, summ = r3["config"], r3["summary"]
    name = r3.get("dataset", "synthetic")
    strides = sorted(r3["strides"])
    steps = ", ".join(f"{r3['steps'][str(s)]} at stride {s}" for s in strides)
    seeds = sorted(set(r3["seeds"].values()), reverse=True)
    seed_text = "; ".join(f"{n} seeds for {', '.join(op for op, k in r3['seeds'].items() if k == n)}" for n in seeds)
    L = [
        f"## Level 3, {name}: mask AP with learned features",
        "",
        "Per op, stride and seed, a small Mask R-CNN second stage is trained end to end from scratch: a backbone of "
        f"conv + BatchNorm + ReLU layers (stage widths {list(cfg['widths'])}: the stride-32 stage is 4x as wide as "
        "the stride-16 one, so both feature maps hold the same number of values per image pixel) downsampling by "
        "2x2 stride-2 convolutions, so feature cell c at stride s covers exactly pixels [cs, (c+1)s); "
        f"`roiops.models.RoIHeads` with `BoxHead` (7x7, fc {cfg['fc_dim']}) and `MaskHead` (14x14 -> 28x28, 2 convs "
        f"x {cfg['head_channels']}), their targets and losses; both poolers are `roiops.MultiScaleRoIAlign` set to "
        'the op (RoIPool: `op="roi_pool"`; RoIWarp: RoIAlign aligned=True on boxes rounded by '
        f"`roiops.models.round_boxes_to_grid`; RoIAlign with sampling ratio {cfg['sampling_ratio']}). AdamW steps "
        f"({steps}; {_schedule_text(cfg)}; weight decay {cfg['weight_decay']:g}) of {cfg['images_per_step']} "
        f"images; the evaluated weights are an exponential moving average (decay {cfg['ema_decay']})"
        + _curve_method_text(cfg),
        "",
        _data_text(r3),
        "",
        f"Statistics: {seed_text} (the other ops at stride {strides[0]} only). A cell reads mean over seeds "
        f"[95% two-level bootstrap interval, {cfg['bootstrap']} resamples: each resample draws the seeds with "
        "replacement, then uses one resample of the test images, the same for every run]. Differences are paired "
        "by seed and by resample. All values x100. A finding is held when its interval lies above 0, not held "
        "when it lies at or below 0, and undecided otherwise; the intervals with only the seeds or only the test "
        "images resampled are given where they would decide differently.",
        "",
    ]
    L += _mapping_text(cfg) + [""]
    L += [f"### Table 2c: the ops at stride {strides[0]}, beside the paper's (mask AP, COCO, ResNet-50-C4)", ""]
    L += tab.table_2c(summ, strides[0]) + [""]
    if len(strides) > 1:
        L += [f"The ops trained at both strides, at stride {strides[-1]}:", ""] + tab.table_2c(summ, strides[-1])
        L += [""]
    L += ["### Table 2d: RoIPool and RoIAlign by stride, beside the paper's (C4 = stride 16, C5 = stride 32)", ""]
    L += tab.table_2d(summ) + [""]
    L += ["### Every op minus RoIPool", ""] + tab.gap_table(summ) + [""]
    if summ.get("contrasts"):
        L += [
            "### Contrasts: RoIAlign (avg, aligned) minus each other op",
            "",
            "| stride | RoIAlign avg minus | seeds | ΔAP | ΔAP50 | ΔAP75 | Δ mask IoU |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in summ["contrasts"]:
            cells = [fmt_entry(c[m], True) for m in ("AP", "AP50", "AP75", "mIoU")]
            L.append(f"| {c['stride']} | {c['minus']} | {c['n_seeds']} | " + " | ".join(cells) + " |")
        L += [""]
    L += ["### Scored AP and AP with constant scores", ""] + tab.ranking_table(summ) + [""]
    L += [
        "### Seeds against test images: SDs of each gap to RoIPool",
        "",
        "The SD of the resampled seed mean with only the seeds resampled, only the test images, and both.",
        "",
    ]
    L += tab.variance_table(summ) + [""]
    L += [f"![level 3, {name}](level3_{name}_mask_ap.png)", ""]
    if summ.get("curves"):
        L += [
            "### Learning curves",
            "",
            f"Seed-mean AP of {_curve_point_text(cfg)} [95% interval over seeds], at fractions of each "
            "stride's nominal steps N; past N, the nominal mean plus the paired change of the seeds that trained "
            "on [interval over those seeds]. 'In the N-step interval from': the first checkpoint whose mean lies "
            "inside the N-step two-level interval (N itself where none before it does). 'At its plateau': where seeds "
            "trained on past N, whether the AP they reach lies inside that interval and their gain's own interval "
            "reaches 0 ('no: still rising' where only the first holds).",
            "",
        ]
        L += tab.curves_table(summ) + ["", f"![learning curves, {name}](level3_{name}_curves.png)", ""]
    if summ.get("size_map"):
        L += _size_map_lines(summ["size_map"], name)
    L += ["### Every run", ""] + tab.runs_table(r3["runs"]) + [""]
    L += [_cost_text(r3), ""]
    return L


def _regime_cells_text(summ: dict) -> str:
    """Whether the regime difference is the objects' size in cells (the test objects are the same pixels at both
    strides, so half as many cells at the coarser one) or the coarser stride's features."""
    e = summ.get("size_map", {}).get("regime_equal_cells")
    if not e:
        return ""
    return (
        f" At equal size in cells (each coarse-stride size range one octave above its fine-stride one) "
        f"RoIAlign's AP differs by {fmt_entry(e, True)}: "
        + (
            "the whole difference is the objects being fewer cells at the coarser stride."
            if e["lo"] <= 0 <= e["hi"]
            else "the objects' size in cells explains only part of it; the rest is what the coarser stage's "
            "features hold at equal cells (of this backbone, trained this long: see the learning curves)."
        )
    )


def _schedule_text(cfg: dict) -> str:
    head = f"lr {cfg['lr']:g} after a linear warm-up over {cfg['warmup']:.0%} of them, then constant"
    if not cfg.get("cooldown"):
        return head
    return head + f", then a linear cool-down to about 0 over the last {cfg['cooldown']:.0%} of the run"


def _curve_method_text(cfg: dict) -> str:
    """How the learning curves and the plateau check are made (the runs of JSONs without a cool-down kept a
    constant rate to the end, so there the EMA weights at step n were those of a run of n steps)."""
    plateau = cfg.get("plateau_seeds") and cfg.get("plateau_checkpoints")
    longer = f"{(cfg['curve_points'] + cfg['plateau_checkpoints']) / cfg['curve_points']:g}x"
    if not cfg.get("cooldown"):
        return f", scored also at {cfg['curve_points'] - 1} earlier checkpoints for the learning curves. " + (
            f"Plateau check: the first {cfg['plateau_seeds']} seeds of {REFERENCE} train on for "
            f"{cfg['plateau_checkpoints']} more checkpoints (to {longer} the steps); their result is still their "
            "EMA weights at the nominal steps, which the constant rate makes those of a run of that length."
            if plateau
            else ""
        )
    return (
        f". Learning curve: the runs of {cfg['curve_points'] - 1} shorter lengths (fractions of the steps) are "
        "scored too; each branches off the same constant-rate run where its own cool-down starts, so it is "
        "exactly a run of that length (same warm-up, data and schedule), at the cost of its cool-down. "
        + (
            f"Plateau check: the first {cfg['plateau_seeds']} seeds of {REFERENCE} are also run for "
            f"{cfg['plateau_checkpoints']} longer lengths (to {longer} the steps), each with its own cool-down; "
            "their result is still the run of the nominal steps. The curve is on its plateau when the longer runs' "
            "paired gain is inside the nominal run's two-level interval and its own interval includes 0."
            if plateau
            else ""
        )
    )


def _curve_point_text(cfg: dict) -> str:
    return "the run of each length (EMA weights)" if cfg.get("cooldown") else "the EMA weights at each checkpoint"


def _cost_text(r3: dict) -> str:
    """What a run cost, per stride, and so what one more op in the op table adds."""
    per = []
    for s in sorted(r3["strides"]):
        secs = [r["seconds"] for r in r3["runs"] if r["stride"] == s]
        per.append(f"{sum(secs) / len(secs):.0f} s at stride {s} ({r3['steps'][str(s)]} steps)")
    return (
        "Seconds are each run's training and learning-curve scoring to its nominal steps, in a worker process of "
        "one thread, while other work shared the machine. A run took on average " + ", ".join(per) + ". An op "
        "joins the comparison as one row of `level3_learned.OPS` and costs only its own runs: its seeds times "
        "these, at stride 16 only or at both strides (the statistics, the plateau check and the report add no "
        "training per op)."
    )


def _size_map_lines(sm: dict, name: str) -> List[str]:
    s0, s1 = sm["strides"][0], sm["strides"][-1]
    L = [
        "### The object-size map, in feature cells",
        "",
        f"The gap ({REFERENCE} minus {BASELINE}) on the test objects of each size range (octaves of size in px), "
        f"at each stride, and the stride trend at equal pixels (the gap at stride {s1} minus the gap at stride "
        f"{s0}; positive where the gap grows with the stride, as in the paper). Two-level intervals.",
        "",
    ]
    L += tab.size_map_table(sm) + [""]
    exact_cols = [s for s in sm["strides"] if f"exact_AP_s{s}" in sm["bins"][0]]
    if exact_cols:
        L += [
            f"{EXACT} (the exact integral of each bin) minus {REFERENCE} (2x2 samples per bin), AP on the test "
            "objects of each size range, two-level intervals (paired by seed):",
            "",
            "| size px | objects | " + " | ".join(f"cells at {s} | ΔAP at stride {s}" for s in exact_cols) + " |",
            "|---|---|" + "---|---|" * len(exact_cols),
        ]
        for e in sm["bins"]:
            cells = [f"{e['median_px'] / s:.1f} | {fmt_entry(e[f'exact_AP_s{s}'], True)}" for s in exact_cols]
            L.append(f"| {e['lo']:.0f}-{e['hi']:.0f} | {e['n']} | " + " | ".join(cells) + " |")
        L += [""]
    if sm.get("equal_cells"):
        L += [
            f"At equal size in cells (the stride-{s1} size range one octave above the stride-{s0} one; ranges of "
            "fewer than 20 objects left out): does the gap depend on the stride beyond what the size in cells "
            "explains (stride effect), and does that change with size (interaction, per octave of cells)?",
            "",
        ]
        L += tab.equal_cells_table(sm) + [""]
    for m in ("mIoU", "AP"):
        c = sm["crossover"][m]
        label = "mask IoU" if m == "mIoU" else "AP"
        where = (
            f"{c['px']:.0f} px = {c['px'] / s1:.1f} cells at stride {s1}"
            if c["px"] == c["px"]
            else "none in the sizes searched (the trend does not go from negative to positive)"
        )
        interval = (
            f" [{c['lo']:.0f}, {c['hi']:.0f}] px over the resamples that have one ({c['found']:.0%} of them)"
            if c["lo"] == c["lo"]
            else " (no resample has one)"
        )
        L.append(f"- Pixel crossover of the stride trend ({label}), a consequence of the map above: {where}{interval}.")
    L += ["", f"![size map, {name}](level3_{name}_size_map.png)", ""]
    return L


def _get(summ, stride, op):
    return next((r for r in summ["rows"] if r["stride"] == stride and r["op"] == op), None)


def _contrast(summ, stride, minus):
    return next((c for c in summ["contrasts"] if c["stride"] == stride and c["minus"] == minus), None)


def _decided(e: dict) -> str:
    """The verdict of a claimed-positive quantity, and which interval decided it."""
    v = verdict(e["lo"], e["hi"])
    text = f"**{v}** (two-level interval [{e['lo']:+.1f}, {e['hi']:+.1f}]"
    alone = {
        "seeds alone": verdict(e["seed_lo"], e["seed_hi"]),
        "test images alone": verdict(e["image_lo"], e["image_hi"]),
    }
    other = [f"{k} would say {w}" for k, w in alone.items() if w != v]
    return text + ("; " + ", ".join(other) if other else "; either source alone agrees") + ")"


def level3_findings(r3: dict) -> List[str]:
    """The paper's level-3 findings, each held, not held or undecided by this run's two-level intervals."""
    summ = r3["summary"]
    strides = sorted(r3["strides"])
    claims = summ.get("claims", {})
    paper_share = (
        100
        * (TABLE_2C["RoIAlign avg"][0] - TABLE_2C["RoIWarp"][0])
        / (TABLE_2C["RoIAlign avg"][0] - TABLE_2C["RoIPool"][0])
    )
    out = []
    for s in strides:
        if f"exact_{s}" in claims:
            e = claims[f"exact_{s}"]
            out.append(
                f"Stride {s}, exact integration ({EXACT}) beats 2x2 sampling ({REFERENCE}) in AP: {_decided(e)}; "
                f"ΔAP {fmt_entry(e, True)} (not a finding of the paper: IoU-Net's question, asked of masks)."
            )
        if f"beats_{s}" in claims:
            e = claims[f"beats_{s}"]
            out.append(f"Stride {s}, RoIAlign beats RoIPool in AP: {_decided(e)}; ΔAP {fmt_entry(e, True)}.")
        if f"warp_{s}" in claims:
            e, sh = claims[f"warp_{s}"], claims[f"share_{s}"]
            out.append(
                f"Stride {s}, RoIWarp is nearer RoIPool than RoIAlign (paper, stride 16: {TABLE_2C['RoIPool'][0]} ≈ "
                f"{TABLE_2C['RoIWarp'][0]} < {TABLE_2C['RoIAlign avg'][0]}; tested as (RoIAlign − RoIWarp) − "
                f"(RoIWarp − RoIPool) > 0): {_decided(e)}; that difference {fmt_entry(e, True)} AP. "
                + (
                    f"Share of RoIPool's loss that rounding the box explains: {fmt_entry(sh)}% (paper "
                    f"{paper_share:.0f}%)."
                    if claims[f"beats_{s}"]["lo"] > 0
                    else "(No share of RoIPool's loss is given: RoIPool's loss itself is not established here.)"
                )
            )
        if f"ap75_{s}" in claims:
            e = claims[f"ap75_{s}"]
            align = _get(summ, s, REFERENCE)
            out.append(
                f"Stride {s}, RoIAlign's gain is larger at AP75 than at AP50 (the paper's stated finding): "
                f"{_decided(e)}; ΔAP75 − ΔAP50 {fmt_entry(e, True)} (ΔAP75 {fmt_entry(align['gap_AP75'], True)}, "
                f"ΔAP50 {fmt_entry(align['gap_AP50'], True)})."
            )
        for minus, what in (
            ("RoIAlign aligned=False", "aligned=True minus aligned=False"),
            ("RoIAlign max", "avg minus max"),
        ):
            c = _contrast(summ, s, minus)
            if c:
                paper = (
                    f" (paper: {TABLE_2C['RoIAlign avg'][0] - TABLE_2C['RoIAlign max'][0]:+.1f})"
                    if minus == "RoIAlign max"
                    else ""
                )
                inside = "includes" if c["AP"]["lo"] <= 0 <= c["AP"]["hi"] else "excludes"
                out.append(
                    f"Stride {s}, RoIAlign {what}, {c['n_seeds']} seeds: {fmt_entry(c['AP'], True)} AP{paper}, "
                    f"{fmt_entry(c['mIoU'], True)} mask IoU; the AP interval {inside} 0."
                )
    gaps = [r["gap_" + m] for r in summ["rows"] for m in ("AP", "AP50", "AP75", "mIoU") if "gap_" + m in r]
    if gaps:
        wider = sum(g["sd_seed"] > g["sd_image"] for g in gaps)
        out.append(
            f"Seeds against test images: the SD over seeds exceeds the SD over test images for {wider} of "
            f"{len(gaps)} gaps to RoIPool ("
            + ("training randomness dominates" if 2 * wider > len(gaps) else "the choice of test images dominates")
            + "; both are in every interval above)."
        )
    if summ.get("trend"):
        t = summ["trend"]["AP"]
        paper_trend = [TABLE_2D[s]["RoIAlign"][0] - TABLE_2D[s]["RoIPool"][0] for s in (16, 32)]
        out.append(
            f"The AP gap grows from stride {strides[0]} to {strides[-1]} over all objects (paper: "
            f"{paper_trend[1] - paper_trend[0]:+.1f}, from {paper_trend[0]:+.1f} to {paper_trend[1]:+.1f}): "
            f"{_decided(t)}; change {fmt_entry(t, True)} AP, {fmt_entry(summ['trend']['mIoU'], True)} mask IoU."
        )
    sm = summ.get("size_map")
    if sm and sm.get("equal_cells"):
        eq = sm["equal_cells"]["mIoU"]
        out.append(
            f"At equal size in cells, the mask-IoU gap at stride {strides[-1]} minus at stride {strides[0]}: "
            f"{fmt_entry(eq['stride_effect'], True)} (the interval "
            + (
                "includes 0: no effect of the stride beyond the size in cells is detected"
                if eq["stride_effect"]["lo"] <= 0 <= eq["stride_effect"]["hi"]
                else "excludes 0: the stride matters beyond the size in cells"
            )
            + f"); stride x cells interaction {fmt_entry(eq['interaction'], True)} per octave of cells."
        )
    if "regime" in summ:
        e = summ["regime"]
        a0, a1 = _get(summ, strides[0], REFERENCE), _get(summ, strides[-1], REFERENCE)
        same = e["lo"] <= 0 <= e["hi"]
        out.append(
            f"Regime: RoIAlign's AP at stride {strides[0]} / {strides[-1]} is {fmt_entry(a0['AP'])} / "
            f"{fmt_entry(a1['AP'])} (paper {TABLE_2D[16]['RoIAlign'][0]} / {TABLE_2D[32]['RoIAlign'][0]}); the "
            f"difference {fmt_entry(e, True)} "
            + (
                "includes 0: equal within the interval, as in the paper."
                if same
                else "excludes 0: NOT equal, unlike the paper, so the stride comparisons also measure the features."
            )
            + _regime_cells_text(summ)
        )
    finals = {(r["stride"], r["op"]): r["AP"] for r in summ["rows"]}
    for c in summ.get("curves", []):
        if c["op"] != REFERENCE:
            continue
        final = finals[(c["stride"], c["op"])]
        p = plateau_step(c, final)
        check = at_plateau(c, final)
        text = f"Learning curve, stride {c['stride']}: RoIAlign's AP enters its {c['nominal']}-step interval " + (
            f"at step {p}" if p is not None and p < c["nominal"] else "only at the last checkpoint"
        )
        if check is not None:
            e = c["extra"][-1]
            inside = final["lo"] <= final["mean"] + e["mean"] <= final["hi"]
            text += (
                f"; the {e['n_seeds']} seed{'s' if e['n_seeds'] != 1 else ''} that trained on to step {e['step']} "
                "changed by "
                f"{e['mean']:+.1f} [{e['lo']:+.1f}, {e['hi']:+.1f}] AP after step {c['nominal']}, so the AP they "
                f"reach, {final['mean'] + e['mean']:.1f}, is "
                + (
                    f"inside the {c['nominal']}-step interval {fmt_entry(final)}: within its interval of the AP "
                    "further on"
                    if inside
                    else f"outside the {c['nominal']}-step interval {fmt_entry(final)}: NOT yet at its plateau"
                )
                + (
                    ", but the change's interval excludes 0: the curve still rises, so this is near a plateau, not "
                    "on it, and slower-training ops may gain more with more steps."
                    if e["lo"] > 0
                    else "."
                )
            )
        else:
            text += "; no seed trained on past the nominal steps, so the plateau is not checked."
        out.append(text)
    return out
