"""Markdown tables of level 3 (learned features), with the paper's rows beside ours.

Every cell of ours reads "mean [lo, hi]": the mean over seeds and its 95% two-level bootstrap interval (seeds,
then test images; summary.py).
"""

from typing import Dict, List, Optional

from .level3_learned import BASELINE, REFERENCE
from .paper import TABLE_2C, TABLE_2D
from .summary import METRICS, at_plateau, plateau_step


def fmt_entry(e: Optional[dict], signed: bool = False) -> str:
    if not e or e["mean"] != e["mean"]:
        return "–"
    sign = "+" if signed else ""
    interval = f" [{e['lo']:{sign}.1f}, {e['hi']:{sign}.1f}]" if e.get("lo") == e.get("lo") else ""
    return f"{e['mean']:{sign}.1f}{interval}"


def _rows(summary: dict, stride: int) -> Dict[str, dict]:
    return {r["op"]: r for r in summary["rows"] if r["stride"] == stride}


def _paper(values) -> List[str]:
    return [f"{v:.1f}" for v in values] if values else ["–"] * 3


def table_2c(summary: dict, stride: int = 16) -> List[str]:
    """Every op at one stride beside the paper's Table 2c (stride 16, mask AP / AP50 / AP75)."""
    lines = [
        "| op | seeds | AP | AP50 | AP75 | mask IoU | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for op, r in _rows(summary, stride).items():
        paper = TABLE_2C.get(op) if stride == 16 else None
        lines.append(
            f"| {op} | {r['n_seeds']} | "
            + " | ".join(fmt_entry(r[m]) for m in METRICS)
            + " | "
            + " | ".join(_paper(paper))
            + " |"
        )
    return lines


def table_2d(summary: dict) -> List[str]:
    """RoIPool and RoIAlign (avg, aligned) at each stride and their gap, beside the paper's Table 2d."""
    lines = [
        "| stride | op | AP | AP50 | AP75 | mask IoU | paper AP | paper AP50 | paper AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted({r["stride"] for r in summary["rows"]}):
        rows = _rows(summary, s)
        if BASELINE not in rows or REFERENCE not in rows:
            continue
        paper = TABLE_2D.get(s, {})
        for op, key in ((BASELINE, "RoIPool"), (REFERENCE, "RoIAlign")):
            cells = [fmt_entry(rows[op][m]) for m in METRICS] + _paper(paper.get(key))
            lines.append(f"| {s} | {op} | " + " | ".join(cells) + " |")
        gap = [f"{a - p:+.1f}" for a, p in zip(paper["RoIAlign"], paper["RoIPool"])] if paper else ["–"] * 3
        cells = [fmt_entry(rows[REFERENCE]["gap_" + m], True) for m in METRICS] + gap
        lines.append(f"| {s} | **gap** | " + " | ".join(cells) + " |")
    return lines


def gap_table(summary: dict) -> List[str]:
    """Every op minus RoIPool, paired by seed, at each stride."""
    lines = ["| stride | op | ΔAP | ΔAP50 | ΔAP75 | Δ mask IoU |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["op"] != BASELINE:
            cells = [fmt_entry(r.get("gap_" + m), True) for m in METRICS]
            lines.append(f"| {r['stride']} | {r['op']} | " + " | ".join(cells) + " |")
    return lines


def ranking_table(summary: dict) -> List[str]:
    """Scored AP beside the AP of the same detections all scored equal: what the ranking contributes."""
    lines = [
        "| stride | op | AP | AP, constant scores | AP − constant | AP75 | AP75, constant scores |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        cells = [r["AP"], r["constAP"]]
        lines.append(
            f"| {r['stride']} | {r['op']} | "
            + " | ".join(fmt_entry(e) for e in cells)
            + f" | {fmt_entry(r['ranking'], True)} | {fmt_entry(r['AP75'])} | {fmt_entry(r['constAP75'])} |"
        )
    return lines


def variance_table(summary: dict) -> List[str]:
    """Per gap to RoIPool: the SD of the seed mean with only the seeds resampled, with only the test images,
    and with both (the two-level bootstrap)."""
    lines = ["| stride | op | metric | SD, seeds | SD, test images | SD, both |", "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        for m in METRICS:
            g = r.get("gap_" + m)
            if g:
                lines.append(
                    f"| {r['stride']} | {r['op']} | Δ{m} | {g['sd_seed']:.2f} | {g['sd_image']:.2f} | {g['sd']:.2f} |"
                )
    return lines


def runs_table(runs: List[dict]) -> List[str]:
    """Every run: its point estimates, steps and seconds (training and the learning curve's scoring)."""
    lines = [
        "| op | stride | seed | AP | AP50 | AP75 | mask IoU | AP, constant scores | steps | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["op"], r["stride"], r["seed"])):
        vals = " | ".join(f"{r[k]:.1f}" for k in ("AP", "AP50", "AP75", "mIoU", "constAP"))
        steps = f"{r['steps']}" + (f" (on to {r['trained']})" if r.get("trained", r["steps"]) > r["steps"] else "")
        lines.append(f"| {r['op']} | {r['stride']} | {r['seed']} | {vals} | {steps} | {r['seconds']:.0f} |")
    return lines


def plateau_text(curve: dict, final: dict) -> str:
    """The plateau check of one curve, in words (summary.at_plateau): '–' where no seed trained on."""
    check = at_plateau(curve, final)
    if check is None:
        return "–"
    if check:
        return "yes"
    e = curve["extra"][-1]
    return "no: still rising" if final["lo"] <= final["mean"] + e["mean"] <= final["hi"] else "no"


def curves_table(summary: dict) -> List[str]:
    """The learning curves: seed-mean AP [95% interval over seeds] at each checkpoint, as a fraction of each
    stride's nominal steps N; past N, the plateau check's estimate (N-step mean plus the paired change of the
    seeds that trained on); the first checkpoint inside the N-step interval; and the plateau check."""
    fracs = sorted({round(s / c["nominal"], 4) for c in summary["curves"] for s in c["steps"]})
    finals = {(r["stride"], r["op"]): r["AP"] for r in summary["rows"]}
    extra = {c["extra"][0]["n_seeds"] for c in summary["curves"] if c.get("extra")}
    seeds = f" ({', '.join(map(str, sorted(extra)))} seeds, paired)" if extra else ""
    lines = [
        "| stride | op | N | "
        + " | ".join(f"AP @ {f:g} N" + (seeds if f > 1 else "") for f in fracs)
        + " | in the N-step interval from | at its plateau |",
        "|---|---|---|" + "---|" * (len(fracs) + 2),
    ]
    for c in summary["curves"]:
        at = {
            round(s / c["nominal"], 4): f"{a:.1f} [{lo:.1f}, {hi:.1f}]"
            for s, a, lo, hi in zip(c["steps"], c["AP"], c["lo"], c["hi"])
        }
        final = finals[(c["stride"], c["op"])]
        p = plateau_step(c, final)
        lines.append(
            f"| {c['stride']} | {c['op']} | {c['nominal']} | "
            + " | ".join(at.get(f, "–") for f in fracs)
            + f" | {p if p is not None else '–'} | {plateau_text(c, final)} |"
        )
    return lines


def size_map_table(size_map: dict) -> List[str]:
    """The gap per object-size range at each stride (with the range in cells at each) and the stride trend at
    equal pixels (largest stride minus smallest)."""
    strides = size_map["strides"]
    head = ["size (px)", "median px", "objects"] + [f"cells at {s}" for s in strides]
    for m in ("mIoU", "AP"):
        head += [f"Δ{m} s{s}" for s in strides] + ([f"Δ{m} s{strides[-1]} − s{strides[0]}"] if len(strides) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in size_map["bins"]:
        hi = "∞" if e["hi"] >= 1e3 else f"{e['hi']:g}"
        cells = [f"[{e['lo']:g}, {hi})", f"{e['median_px']:.0f}", str(e["n"])]
        cells += [f"{e['median_px'] / s:.2f}" for s in strides]
        for m in ("mIoU", "AP"):
            cells += [fmt_entry(e[f"gap_{m}_s{s}"], True) for s in strides]
            if len(strides) > 1:
                cells.append(fmt_entry(e[f"trend_{m}"], True))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def equal_cells_table(size_map: dict) -> List[str]:
    """The gap at the coarse stride minus the gap at the fine stride for objects of the same size in cells."""
    s0, s1 = size_map["strides"][0], size_map["strides"][-1]
    lines = [
        f"| cells (stride {s0} / {s1} medians) | Δ mIoU gap, s{s1} − s{s0} | Δ AP gap, s{s1} − s{s0} |",
        "|---|---|---|",
    ]
    eq = size_map["equal_cells"]
    for k, p in enumerate(eq["mIoU"]["pairs"]):
        lines.append(
            f"| {p['cells_fine']:.2f} / {p['cells_coarse']:.2f} | {fmt_entry(p['diff'], True)} | "
            f"{fmt_entry(eq['AP']['pairs'][k]['diff'], True)} |"
        )
    lines.append(
        f"| **mean (stride effect at equal cells)** | {fmt_entry(eq['mIoU']['stride_effect'], True)} | "
        f"{fmt_entry(eq['AP']['stride_effect'], True)} |"
    )
    lines.append(
        f"| **slope per octave of cells (stride x cells interaction)** | "
        f"{fmt_entry(eq['mIoU']['interaction'], True)} | {fmt_entry(eq['AP']['interaction'], True)} |"
    )
    return lines
