"""Markdown tables of level 3 (learned features), with the paper's rows beside ours.

Every cell of ours reads "mean ± half-width [lo, hi]": the mean over seeds, the half-width of its 95% Student-t
interval over seeds, and the 95% bootstrap interval over test images (see summary.py).
"""

from typing import Dict, List, Optional

from .level3_learned import BASELINE, REFERENCE
from .paper import TABLE_2C, TABLE_2D
from .summary import METRICS


def fmt_entry(e: Optional[dict], signed: bool = False) -> str:
    if not e or e["mean"] != e["mean"]:
        return "–"
    sign = "+" if signed else ""
    interval = f" [{e['boot_lo']:{sign}.1f}, {e['boot_hi']:{sign}.1f}]" if e.get("boot_lo") == e.get("boot_lo") else ""
    seeds = f" ± {e['seed_ci']:.1f}" if e.get("seed_ci") == e.get("seed_ci") and "seed_ci" in e else ""
    return f"{e['mean']:{sign}.1f}{seeds}{interval}"


def _rows(summary: dict, stride: int) -> Dict[str, dict]:
    return {r["op"]: r for r in summary["rows"] if r["stride"] == stride}


def _paper(values) -> List[str]:
    return [f"{v:.1f}" for v in values] if values else ["–"] * 3


def table_2c(summary: dict, stride: int = 16) -> List[str]:
    """Every op at one stride beside the paper's Table 2c (stride 16, mask AP / AP50 / AP75)."""
    lines = [
        "| op | AP | AP50 | AP75 | mask IoU | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op, r in _rows(summary, stride).items():
        paper = TABLE_2C.get(op) if stride == 16 else None
        lines.append(
            f"| {op} | " + " | ".join(fmt_entry(r[m]) for m in METRICS) + " | " + " | ".join(_paper(paper)) + " |"
        )
    return lines


def table_2d(summary: dict) -> List[str]:
    """RoIPool and RoIAlign (avg, aligned) at each stride and their gap, beside the paper's Table 2d."""
    lines = [
        "| stride | op | AP | AP50 | AP75 | mask IoU | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    strides = sorted({r["stride"] for r in summary["rows"]})
    for s in strides:
        rows = _rows(summary, s)
        if BASELINE not in rows or REFERENCE not in rows:
            continue
        paper = TABLE_2D.get(s, {})
        for op, key in ((BASELINE, "RoIPool"), (REFERENCE, "RoIAlign")):
            lines.append(
                f"| {s} | {op} | "
                + " | ".join(fmt_entry(rows[op][m]) for m in METRICS)
                + " | "
                + " | ".join(_paper(paper.get(key)))
                + " |"
            )
        gap = [f"{a - p:+.1f}" for a, p in zip(paper["RoIAlign"], paper["RoIPool"])] if paper else ["–"] * 3
        lines.append(
            f"| {s} | **gap** | "
            + " | ".join(fmt_entry(rows[REFERENCE]["gap_" + m], True) for m in METRICS)
            + " | "
            + " | ".join(gap)
            + " |"
        )
    return lines


def gap_table(summary: dict) -> List[str]:
    """Every op minus RoIPool, paired by seed, at each stride."""
    lines = ["| stride | op | ΔAP | ΔAP50 | ΔAP75 | Δ mask IoU |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["op"] != BASELINE:
            lines.append(
                f"| {r['stride']} | {r['op']} | "
                + " | ".join(fmt_entry(r.get("gap_" + m), True) for m in METRICS)
                + " |"
            )
    return lines


def size_map_table(size_map: dict) -> List[str]:
    """The gap per object-size range at each stride, and the stride trend (largest stride minus smallest)."""
    strides = size_map["strides"]
    head = ["size (px)", "median px", "objects"] + [f"cells at {s}" for s in strides]
    for m in ("mIoU", "AP"):
        head += [f"Δ{m} s{s}" for s in strides] + ([f"Δ{m} s{strides[-1]} − s{strides[0]}"] if len(strides) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in size_map["bins"]:
        hi = "∞" if e["hi"] >= 1e3 else f"{e['hi']:g}"
        cells = [f"[{e['lo']:g}, {hi})", f"{e['median_px']:.0f}", str(e["n"])]
        cells += [f"{e['median_px'] / s:.1f}" for s in strides]
        for m in ("mIoU", "AP"):
            cells += [fmt_entry(e[f"gap_{m}_s{s}"], True) for s in strides]
            if len(strides) > 1:
                cells.append(fmt_entry(e[f"trend_{m}"], True))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
