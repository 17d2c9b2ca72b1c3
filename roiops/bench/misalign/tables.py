"""Markdown tables of levels 1 and 2."""

import statistics
from typing import List

from .level1_geometry import BOX_SIZES, STRIDES
from .level2_features import level2_ops


def _fmt(m, ci=None, nd=1):
    if m != m:
        return "–"
    return f"{m:.{nd}f}" if ci is None or ci != ci else f"{m:.{nd}f} ± {ci:.{nd}f}"


def level1_table(res) -> List[str]:
    lines = [
        "| stride | box px | RoIPool centre err (px) | RoIPool centre spread (px) | RoIPool worst bin (px) | "
        "RoIPool edge err (px) | RoIPool region IoU | RoIPool bin IoU | RoIAlign aligned=False centre err (px) | "
        "RoIAlign aligned=False centre spread (px) | RoIAlign aligned=False bin IoU | "
        "RoIAlign aligned=True centre err (px) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = res["rows"]
    for stride in STRIDES:
        for size in BOX_SIZES:
            g = {r["op"]: r for r in rows if r["stride"] == stride and r["size"] == size}
            p, u, a = g["RoIPool"], g["RoIAlign aligned=False"], g["RoIAlign aligned=True"]
            lines.append(
                f"| {stride} | {size} | {p['centre_err']:.2f} | {p['centre_spread']:.2f} | "
                f"{p['centre_err_max']:.1f} | {p['edge_err']:.2f} | {p['region_iou']:.3f} | "
                f"{p['bin_iou']:.3f} | {u['centre_err']:.2f} | {u['centre_spread']:.2f} | "
                f"{u['bin_iou']:.3f} | {a['centre_err']:.2g} |"
            )
    return lines


def article_lines(ex) -> List[str]:
    fl, rl = ex["floor"], ex["real"]
    s = ex["stride"]
    return [
        f"Article example: {ex['image']}x{ex['image']} image, {ex['box']}x{ex['box']} box at (0, 0), stride {s}, "
        f"{ex['bins']}x{ex['bins']} bins.",
        f"- feature map {ex['image']}/{s} = {ex['map_cells']:g} cells; box {ex['box']}/{s} = {ex['box_cells']:.2f} cells.",
        f"- article's description (floor, floor): box -> {fl['box_cells']} cells (lost {fl['box_err_cells']:.2f} cells "
        f"= {fl['box_err_px']:.1f} px); bin {fl['box_cells']}/{ex['bins']} = {fl['bin_cells']:.2f} -> "
        f"{fl['bin_cells_q']} cells (lost {fl['bin_err_cells']:.2f} cells = {fl['bin_err_px']:.1f} px per bin); the 7 bins "
        f"cover pixels [{fl['region_px'][0]}, {fl['region_px'][1]}) of the box's [0, {ex['box']}) "
        f"(right edge {fl['right_edge_err_px']:+d} px); bin-centre errors (px): "
        + ", ".join(f"{e:.1f}" for e in fl["centre_err_px"])
        + ".",
        f"- the real RoIPool rule (C round, then floor/ceil bin edges; read from roiops.roi_pool): x2 = "
        f"round({ex['box_cells']:.2f}) = {rl['x2_cells']}, the RoI spans {rl['roi_cells']} cells (inclusive end), "
        f"bin = {rl['roi_cells']}/{ex['bins']} = {rl['bin_cells']:.3f} cells; bins (cells) "
        + ", ".join(f"[{a},{b})" for a, b in rl["bins_cells"])
        + f"; region [{rl['region_px'][0]}, {rl['region_px'][1]}) px (right edge {rl['right_edge_err_px']:+d} px); "
        "bin-centre errors (px): " + ", ".join(f"{e:.1f}" for e in rl["centre_err_px"]) + ".",
        f"- RoIAlign (aligned=True): bin = {ex['box_cells']:.2f}/{ex['bins']} = {ex['roialign']['bin_cells']:.3f} cells "
        f"= {ex['box'] / ex['bins']:.2f} px, no rounding: every bin-centre error is 0.",
    ]


def level2_table(res, ops_shown=None) -> List[str]:
    ops_shown = ops_shown or [
        "RoIPool (max)",
        "RoIPool bins, avg",
        "RoIAlign avg aligned=True sr=2",
        "RoIAlign avg aligned=False sr=2",
        "RoIAlign avg aligned=True sr=adaptive",
        "RoIAlign max aligned=True sr=2",
        "PrRoIPool (exact integral)",
    ]
    head = "| stride | box px | " + " | ".join(ops_shown) + " |"
    lines = [
        "Mean |error| for f = x, y, in pixels / for the periodic f (amplitude 1, period = box size):",
        "",
        head,
        "|" + "---|" * (2 + len(ops_shown)),
    ]
    rows = res["rows"]
    for stride in STRIDES:
        for size in BOX_SIZES:
            g = {r["op"]: r for r in rows if r["stride"] == stride and r["size"] == size}
            cells = [f"{g[o]['err_px']:.2f} / {g[o]['err_periodic']:.3f}" for o in ops_shown]
            lines.append(f"| {stride} | {size} | " + " | ".join(cells) + " |")
    return lines


def level2_sampling_table(res) -> List[str]:
    """Errors averaged over box sizes, by stride, for every RoIAlign variant."""
    rows = res["rows"]
    ops = [o for o, _ in level2_ops()]
    lines = [
        "| op | target | " + " | ".join(f"s={s} px / periodic" for s in STRIDES) + " |",
        "|---|---|" + "---|" * len(STRIDES),
    ]
    for o in ops:
        cells = []
        tgt = ""
        for s in STRIDES:
            rs = [r for r in rows if r["op"] == o and r["stride"] == s]
            tgt = rs[0]["target"]
            cells.append(
                f"{statistics.fmean(r['err_px'] for r in rs):.2f} / "
                f"{statistics.fmean(r['err_periodic'] for r in rs):.3f}"
            )
        lines.append(f"| {o} | {tgt} | " + " | ".join(cells) + " |")
    return lines
