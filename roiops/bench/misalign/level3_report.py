"""The level-3 part of REPORT.md: the setup, the tables beside the paper's, and which of the paper's findings the
run reproduces. Every number is read from the run's results; nothing here is written in by hand except the
paper's rows (paper.py)."""

from typing import List

from .level3_learned import BASELINE, REFERENCE
from .level3_tables import fmt_entry, gap_table, size_map_table, table_2c, table_2d
from .paper import TABLE_2C, TABLE_2D
from .summary import in_papers_regime, size_map_crossover


def _data_text(r3: dict) -> str:
    cfg, d = r3["config"], r3["data"]
    cells = ", ".join(f"{d['size_median'] / s:.1f} cells at stride {s}" for s in sorted(r3["strides"]))
    if r3.get("dataset") == "stardist":
        text = (
            f"Data: the nuclei image that the `stardist` package ships (512x512 fluorescence microscopy, labelled "
            f"nuclei), upscaled {cfg['stardist_scale']}x (image bilinear, labels nearest) so that its nuclei, about "
            f"{d['size_median'] / cfg['stardist_scale']:.0f} px in the original, span more than a cell at stride 32; "
            f"left half for training ({d['train_images']} random {cfg['stardist_crop']}x{cfg['stardist_crop']} crops "
            f"of its 8 flips/rotations, {d['train_objects']} nuclei), right half for testing "
            f"({d['test_images']} tiles of {cfg['stardist_tile']} px cores widened so each nucleus is whole in the "
            f"tile of its centre, {d['test_objects']} nuclei). One image: the test set is small and its AP "
            "intervals wide, and the nuclei are alike in size, so its size map spans a narrow range."
        )
    else:
        text = (
            f"Data: synthetic {cfg['image_size']}x{cfg['image_size']} grey images, {cfg['objects_per_image'][0]}-"
            f"{cfg['objects_per_image'][1]} occluding ellipses, star polygons and rings (diameter "
            f"{cfg['diameter'][0]:g}-{cfg['diameter'][1]:g} px, log-uniform) on a noisy background, one category; "
            f"{d['train_images']} training images ({d['train_objects']} objects), {d['test_images']} test images "
            f"({d['test_objects']} objects)."
        )
    return (
        text + f" Median object size {d['size_median']:.0f} px ({cells}; size = geometric mean of the box's sides). "
        f"Proposals are the ground-truth boxes with each side moved by {cfg['jitter']} x side x N(0, 1): two per "
        "object, redrawn at every training step (plus random background boxes); one per test object, the same "
        "for every op and seed. Each test proposal gives one detection (class score, refined box, mask in it). "
        "AP / AP50 / AP75: pycocotools' matching; mask IoU: each object against the detection from its own proposal."
    )


def level3_section(r3: dict) -> List[str]:
    cfg, summ = r3["config"], r3["summary"]
    name = r3.get("dataset", "synthetic")
    strides = sorted(r3["strides"])
    steps = ", ".join(f"{r3['steps'][str(s)]} at stride {s}" for s in strides)
    L = [
        f"## Level 3, {name}: mask AP with learned features",
        "",
        f"Per op, stride and seed, a small Mask R-CNN second stage is trained end to end from scratch: a backbone of "
        f"conv + BatchNorm + ReLU layers (widths {list(cfg['widths'])}) downsampling by 2x2 stride-2 convolutions, so "
        "feature cell c at stride s covers exactly pixels [cs, (c+1)s); `roiops.models.RoIHeads` with `BoxHead` "
        f"(7x7, fc {cfg['fc_dim']}) and `MaskHead` (14x14 -> 28x28, 2 convs x {cfg['head_channels']}), their targets "
        'and losses; both poolers are `roiops.MultiScaleRoIAlign` set to the op (RoIPool: `op="roi_pool"`; '
        "RoIWarp: RoIAlign aligned=True on boxes rounded by `roiops.models.round_boxes_to_grid`; RoIAlign with "
        f"sampling ratio {cfg['sampling_ratio']}). AdamW steps ({steps}; lr {cfg['lr']:g}, one-cycle, weight "
        f"decay {cfg['weight_decay']:g}) of {cfg['images_per_step']} images; the evaluated weights are an "
        f"exponential moving average (decay {cfg['ema_decay']}).",
        "",
        _data_text(r3),
        "",
        f"Statistics: {r3['seeds']} seeds per (op, stride); a cell reads mean ± 95% Student-t half-width over "
        f"seeds [95% bootstrap interval over test images, {cfg['bootstrap']} resamples shared by every run]. "
        "Differences are paired by seed and by resample. All values x100."
        + (
            " One seed here (the budget): no interval over seeds, only the one over test images, which does not "
            "cover training randomness."
            if r3["seeds"] == 1
            else ""
        ),
        "",
    ]
    L += [f"### Table 2c: the ops at stride {strides[0]}, beside the paper's (mask AP, COCO, ResNet-50-C4)", ""]
    L += table_2c(summ, strides[0]) + [""]
    if len(strides) > 1:
        coarse = r3.get("ops_at", {}).get(str(strides[-1]))
        fine = r3.get("ops_at", {}).get(str(strides[0]))
        which = (
            "The same ops"
            if coarse == fine
            else f"{', '.join(coarse[:-1])} and {coarse[-1]} (the ops the comparison across strides needs)"
        )
        L += [f"{which} at stride {strides[-1]}:", ""] + table_2c(summ, strides[-1]) + [""]
    L += ["### Table 2d: RoIPool and RoIAlign by stride, beside the paper's (C4 = stride 16, C5 = stride 32)", ""]
    L += table_2d(summ) + [""]
    L += ["### Every op minus RoIPool", ""] + gap_table(summ) + [""]
    if summ.get("contrasts"):
        L += [
            "### Contrasts: RoIAlign (avg, aligned) minus each other op",
            "",
            "| stride | RoIAlign avg minus | ΔAP | ΔAP50 | ΔAP75 | Δ mask IoU |",
            "|---|---|---|---|---|---|",
        ]
        for c in summ["contrasts"]:
            L.append(
                f"| {c['stride']} | {c['minus']} | "
                + " | ".join(fmt_entry(c[m], True) for m in ("AP", "AP50", "AP75", "mIoU"))
                + " |"
            )
        L += [""]
    L += [f"![level 3, {name}](level3_{name}_mask_ap.png)", ""]
    if summ.get("size_map"):
        sm = summ["size_map"]
        L += [
            "### The object-size map: where the gain comes from",
            "",
            f"The gap ({REFERENCE} minus {BASELINE}) on the test objects of each size range, at each stride "
            "(same runs as above; bootstrap intervals over test images in brackets). Δ mIoU and ΔAP are in points; "
            "the last column of each metric is the stride trend: positive where the gap grows with the stride, as "
            "in the paper.",
            "",
        ]
        L += size_map_table(sm) + [""]
        for m in ("mIoU", "AP"):
            c = size_map_crossover(sm, m)
            if len(sm["strides"]) > 1:
                L.append(
                    f"- Crossover ({'mask IoU' if m == 'mIoU' else 'AP'}): "
                    + (
                        f"{c:.0f} px, {c / sm['strides'][-1]:.1f} cells at stride {sm['strides'][-1]}."
                        if c
                        else "the trend does not change sign from negative to positive over the sizes searched, "
                        f"{sm['bins'][0]['median_px']:.0f}-{sm['bins'][-1]['median_px']:.0f} px (medians of the "
                        f"smallest and largest size range) = {sm['bins'][0]['median_px'] / sm['strides'][-1]:.1f}-"
                        f"{sm['bins'][-1]['median_px'] / sm['strides'][-1]:.1f} cells at stride {sm['strides'][-1]}."
                    )
                )
        L += ["", f"![size map, {name}](level3_{name}_size_map.png)", ""]
    return L


def _get(summ, stride, op):
    return next((r for r in summ["rows"] if r["stride"] == stride and r["op"] == op), None)


def _contrast(summ, stride, minus):
    return next((c for c in summ["contrasts"] if c["stride"] == stride and c["minus"] == minus), None)


def level3_findings(r3: dict) -> List[str]:
    """The paper's level-3 findings, each marked as held or not by this run's numbers."""
    summ = r3["summary"]
    strides = sorted(r3["strides"])
    out = []
    for s in strides:
        pool, warp, align = _get(summ, s, BASELINE), _get(summ, s, "RoIWarp"), _get(summ, s, REFERENCE)
        if pool and warp and align:
            g_warp, g_align = warp["gap_AP"], align["gap_AP"]
            paper_share = 1 - (
                (TABLE_2C["RoIWarp"][0] - TABLE_2C["RoIPool"][0])
                / (TABLE_2C["RoIAlign avg"][0] - TABLE_2C["RoIPool"][0])
            )
            text = (
                f"Stride {s}, ordering RoIPool ≈ RoIWarp < RoIAlign (paper, stride 16: {TABLE_2C['RoIPool'][0]} ≈ "
                f"{TABLE_2C['RoIWarp'][0]} < {TABLE_2C['RoIAlign avg'][0]} AP): "
            )
            if g_align["boot_lo"] > 0:
                share = 1 - g_warp["mean"] / g_align["mean"]
                text += (
                    f"{'held' if share > 0.75 else 'NOT held'}. RoIWarp − RoIPool = {fmt_entry(g_warp, True)} AP, "
                    f"RoIAlign − RoIPool = {fmt_entry(g_align, True)} AP: rounding the box accounts for "
                    f"{100 * share:.0f}% of RoIPool's loss (paper: {100 * paper_share:.0f}%), the bins' own "
                    f"quantization and max for the rest."
                )
                if share <= 0.75:
                    text += (
                        " Likely why: RoIPool's bins are whole cells, so on an object one or two cells wide "
                        "all bins of a row read the same one or two cells and the pooled map has no "
                        "spatial detail left, while RoIWarp still interpolates inside the rounded box; on "
                        "COCO at stride 16 most boxes span many cells, and rounding the box is nearly all "
                        "that is lost."
                    )
            else:
                text += (
                    f"NOT held: RoIAlign does not beat RoIPool here ({fmt_entry(g_align, True)} AP; RoIWarp − "
                    f"RoIPool {fmt_entry(g_warp, True)})."
                )
            out.append(text)
        if align and "gap_AP75" in align:
            a50, a75 = align["gap_AP50"], align["gap_AP75"]
            held = a75["boot_lo"] > 0 and a75["mean"] > a50["mean"]
            pool = _get(summ, s, BASELINE)
            why = ""
            if not held and a50["boot_lo"] > 0:
                why = (
                    f" Likely why: RoIPool's masks here are often below IoU 0.5 (its mean mask IoU is "
                    f"{pool['mIoU']['mean']:.0f}), so its loss already shows at AP50; on COCO, AP50 is bounded mostly "
                    "by detection, which both ops share, and mask quality shows at the tight threshold."
                )
            out.append(
                f"Stride {s}, RoIAlign's gain is larger at AP75 than at AP50 (paper: about twice): "
                f"{'held' if held else 'NOT held'}; ΔAP75 {fmt_entry(a75, True)}, ΔAP50 {fmt_entry(a50, True)}." + why
            )
        unaligned = _contrast(summ, s, "RoIAlign aligned=False")
        if unaligned:
            out.append(
                f"Stride {s}, RoIAlign aligned=True minus aligned=False (the half-cell shift): "
                f"{fmt_entry(unaligned['AP'], True)} AP, {fmt_entry(unaligned['mIoU'], True)} mask IoU."
            )
        mx = _contrast(summ, s, "RoIAlign max")
        if mx:
            out.append(
                f"Stride {s}, RoIAlign avg minus max aggregation: {fmt_entry(mx['AP'], True)} AP (paper: "
                f"{TABLE_2C['RoIAlign avg'][0] - TABLE_2C['RoIAlign max'][0]:+.1f})."
            )
    gaps = [
        r["gap_" + m]
        for r in summ["rows"]
        if r["op"] != BASELINE
        for m in ("AP", "AP50", "AP75", "mIoU")
        if "gap_" + m in r and r["gap_" + m]["seed_ci"] == r["gap_" + m]["seed_ci"]
    ]
    if gaps:
        wider = sum(g["seed_ci"] > (g["boot_hi"] - g["boot_lo"]) / 2 for g in gaps)
        out.append(
            f"Uncertainty: the interval over seeds is wider than the one over test images for {wider} of "
            f"{len(gaps)} gaps to RoIPool: "
            + (
                "training randomness, not the choice of test images, dominates at this training length."
                if 2 * wider > len(gaps)
                else "the choice of test images dominates."
            )
        )
    if summ.get("size_map"):
        for s in strides:
            e0, e1 = summ["size_map"]["bins"][0], summ["size_map"]["bins"][-1]
            small, large = e0[f"gap_mIoU_s{s}"], e1[f"gap_mIoU_s{s}"]
            # (held or not only where the bootstrap intervals do not overlap)
            verdict = (
                "held"
                if small["boot_lo"] > large["boot_hi"]
                else "NOT held"
                if large["boot_lo"] > small["boot_hi"]
                else "undecided (the intervals overlap)"
            )
            out.append(
                f"Stride {s}, small objects gain most (the paper's expectation): {verdict}; Δ mask IoU "
                f"{fmt_entry(small, True)} for objects of {e0['median_px'] / s:.1f} cells, "
                f"{fmt_entry(large, True)} for objects of {e1['median_px'] / s:.1f} cells."
            )
    if summ.get("trend"):
        t = summ["trend"]["AP"]
        paper_trend = [TABLE_2D[s]["RoIAlign"][0] - TABLE_2D[s]["RoIPool"][0] for s in (16, 32)]
        grows = t["boot_lo"] > 0
        out.append(
            f"Over all objects the AP gap changes by {fmt_entry(t, True)} from stride {strides[0]} to "
            f"{strides[-1]} (paper: {paper_trend[1] - paper_trend[0]:+.1f}, from {paper_trend[0]:+.1f} to "
            f"{paper_trend[1]:+.1f}): the paper's growth with stride is "
            f"{'held' if grows else 'NOT held over all objects'}; mask IoU: "
            f"{fmt_entry(summ['trend']['mIoU'], True)}."
        )
        sm = summ["size_map"]
        c = size_map_crossover(sm, "mIoU")
        trend = [e["trend_mIoU"]["mean"] for e in sm["bins"]]
        if c:
            out.append(
                f"By object size (mask IoU), the gap shrinks from stride {strides[0]} to {strides[-1]} for small "
                f"objects and grows (the paper's direction) for objects above about {c:.0f} px = "
                f"{c / strides[-1]:.1f} cells at stride {strides[-1]}: the stride trend per size range is "
                + ", ".join(f"{t:+.1f}" for t in trend)
                + " (smallest to largest)."
            )
        else:
            out.append(
                "By object size (mask IoU), the stride trend does not stay non-negative above any size in range: "
                + ", ".join(f"{t:+.1f}" for t in trend)
                + " (smallest to largest size range)."
            )
        a16, a32 = _get(summ, strides[0], REFERENCE), _get(summ, strides[-1], REFERENCE)
        if a16 and a32:
            drop = a16["AP"]["mean"] - a32["AP"]["mean"]
            paper_drop = TABLE_2D[16]["RoIAlign"][0] - TABLE_2D[32]["RoIAlign"][0]
            regime = in_papers_regime(a16["AP"]["mean"], a32["AP"]["mean"])
            out.append(
                f"Regime check: RoIAlign's AP at stride {strides[0]} / {strides[-1]} is {a16['AP']['mean']:.1f} / "
                f"{a32['AP']['mean']:.1f} (paper {TABLE_2D[16]['RoIAlign'][0]} / {TABLE_2D[32]['RoIAlign'][0]}, a "
                f"change of {-paper_drop:+.1f}: features that keep sub-cell detail at stride 32). "
                + (
                    "In the paper's regime."
                    if regime
                    else f"NOT in the paper's regime: RoIAlign loses {drop:.1f} AP at stride {strides[-1]}, so the "
                    f"stride-{strides[-1]} features of this run have not learned to carry an object's shape "
                    "inside a cell, and the stride comparisons above test that, not the pooling."
                    if drop > 0
                    else f"NOT in the paper's regime: RoIAlign gains {-drop:.1f} AP at stride {strides[-1]}, so the "
                    f"stride-{strides[0]} runs are the weaker ones (too few steps for the finer features, or "
                    "noise between seeds), and the stride comparisons above test that, not the pooling."
                )
            )
    return out
