"""The PNG plots of the misalignment benchmark (matplotlib, Agg backend)."""

import numpy as np
import torch

from .level1_geometry import STRIDES, roialign_bins


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_level1(res, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    rows = res["rows"]
    colors = dict(zip(STRIDES, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for stride in STRIDES:
        for op, ls in (("RoIPool", "-"), ("RoIAlign aligned=False", "--")):
            rs = [r for r in rows if r["stride"] == stride and r["op"] == op]
            lab = f"{op.replace('RoIAlign aligned=False', 'RoIAlign (not aligned)')}, stride {stride}"
            axes[0].plot(
                [r["size"] for r in rs],
                [r["centre_err"] for r in rs],
                ls,
                marker="o",
                ms=3,
                color=colors[stride],
                label=lab,
            )
            axes[1].plot(
                [r["size"] for r in rs], [r["edge_err"] for r in rs], ls, marker="o", ms=3, color=colors[stride]
            )
            axes[2].plot(
                [r["size"] for r in rs],
                [max(r["centre_spread"], 1e-2) for r in rs],
                ls,
                marker="o",
                ms=3,
                color=colors[stride],
            )
            axes[3].plot(
                [r["size"] for r in rs], [r["bin_iou"] for r in rs], ls, marker="o", ms=3, color=colors[stride]
            )
    titles = (
        "mean |bin-centre error| (px)",
        "mean |edge error| of pooled region (px)",
        "box-to-box spread of bin-centre error (px)\n(a constant offset can be learned; this cannot)",
        "mean bin IoU with true bin",
    )
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("box size (px)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    _save(plt, fig, path, "Level 1: where the pooled bins are (RoIAlign aligned=True: error 0, bin IoU 1)")


def plot_level2(res, path):
    plt = _plt()
    shown = [
        "RoIPool (max)",
        "RoIPool bins, avg",
        "RoIAlign avg aligned=True sr=2",
        "RoIAlign avg aligned=False sr=2",
        "RoIAlign avg aligned=True sr=1",
        "RoIAlign max aligned=True sr=2",
        "PrRoIPool (exact integral)",
    ]
    fig, axes = plt.subplots(2, len(STRIDES), figsize=(4 * len(STRIDES), 7), sharey="row")
    rows = res["rows"]
    for j, stride in enumerate(STRIDES):
        for o in shown:
            rs = [r for r in rows if r["stride"] == stride and r["op"] == o]
            axes[0, j].plot([r["size"] for r in rs], [max(r["err_px"], 1e-3) for r in rs], marker="o", ms=3, label=o)
            axes[1, j].plot([r["size"] for r in rs], [max(r["err_periodic"], 1e-4) for r in rs], marker="o", ms=3)
        axes[0, j].set_title(f"stride {stride}")
        for i in range(2):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_yscale("log")
            axes[i, j].grid(alpha=0.3)
            axes[1, j].set_xlabel("box size (px)")
    axes[0, 0].set_ylabel("f = x, y: mean |error| (px)")
    axes[1, 0].set_ylabel("periodic f: mean |error|")
    axes[0, 0].legend(fontsize=7)
    _save(plt, fig, path, "Level 2: pooled value vs the exact bin mean (avg ops) / bin max (max ops)")


def _save(plt, fig, path, title=None):
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _interval_bars(entries):
    """matplotlib's asymmetric error bars [[below], [above]] for entries with a mean and an interval."""
    return [[e["mean"] - e["lo"] for e in entries], [e["hi"] - e["mean"] for e in entries]]


def plot_level3(summary, runs, path, dataset=""):
    """Bars per op and stride for AP, AP50, AP75 and mask IoU with the two-level interval, and every seed's
    value as a point on its bar."""
    plt = _plt()
    rows = summary["rows"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    strides = sorted({r["stride"] for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    width = 0.8 / len(ops)
    for ax, m in zip(axes, ("AP", "AP50", "AP75", "mIoU")):
        for k, op in enumerate(ops):
            at = [(n, s, r[m]) for n, s in enumerate(strides) for r in rows if r["op"] == op and r["stride"] == s]
            xs = [n + (k - (len(ops) - 1) / 2) * width for n, _, _ in at]  # (an op not trained at a stride: no bar)
            es = [e for _, _, e in at]
            ax.bar(xs, [e["mean"] for e in es], width, yerr=_interval_bars(es), capsize=2, label=op, alpha=0.8)
            for x, (_, s, _) in zip(xs, at):
                pts = [r[m] for r in runs if r["op"] == op and r["stride"] == s]
                ax.scatter([x] * len(pts), pts, s=7, color="k", zorder=3, linewidths=0)
        ax.set_xticks(range(len(strides)))
        ax.set_xticklabels([f"stride {s}" for s in strides])
        ax.set_title(f"mask {m if m != 'mIoU' else 'IoU'} (x100; bars: 95% two-level; dots: seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(plt, fig, path, f"Level 3 ({dataset}): a small Mask R-CNN trained end to end with each op")


def plot_curves(summary, runs, path, dataset=""):
    """AP against training steps per op, one panel per stride: each seed's curve thin, the seed mean thick (past
    the nominal steps, the nominal mean plus the paired change of the seeds that trained on)."""
    plt = _plt()
    strides = sorted({c["stride"] for c in summary["curves"]})
    fig, axes = plt.subplots(1, len(strides), figsize=(6.5 * len(strides), 4.2), sharey=True, squeeze=False)
    colors = {}
    for ax, s in zip(axes[0], strides):
        for c in (c for c in summary["curves"] if c["stride"] == s):
            color = colors.setdefault(c["op"], f"C{len(colors)}")
            for r in runs:
                if r["op"] == c["op"] and r["stride"] == s:
                    ax.plot(
                        [p["step"] for p in r["curve"]], [p["AP"] for p in r["curve"]], color=color, lw=0.5, alpha=0.4
                    )
            ax.plot(c["steps"], c["AP"], color=color, lw=2, marker="o", ms=3, label=c["op"])
            ax.fill_between(c["steps"], c["lo"], c["hi"], color=color, alpha=0.15)
        nominal = next(c["nominal"] for c in summary["curves"] if c["stride"] == s and "nominal" in c)
        ax.axvline(nominal, color="0.4", lw=0.8, ls=":")  # where the runs' results are taken
        ax.set_title(f"stride {s} (results at {nominal} steps; past them, the plateau check's seeds)")
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mask AP (x100)")
    axes[0, 0].legend(fontsize=7)
    _save(plt, fig, path, f"Level 3 ({dataset}): learning curves (thin: seeds; band: 95% over seeds)")


def plot_size_map(size_map, path, dataset=""):
    """The gap (RoIAlign avg - RoIPool) against object size in feature cells, both strides on one axis, and
    the stride trend at equal pixels against object size in px with the crossover and its interval."""
    plt = _plt()
    bins, strides = size_map["bins"], size_map["strides"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for row, m in enumerate(("mIoU", "AP")):
        ax = axes[row, 0]
        for s in strides:
            es = [e[f"gap_{m}_s{s}"] for e in bins]
            ax.errorbar(
                [e["median_px"] / s for e in bins],
                [e["mean"] for e in es],
                yerr=_interval_bars(es),
                marker="o",
                capsize=3,
                label=f"stride {s}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("object size in feature cells (box side / stride, median of the size range)")
        ax.set_ylabel(f"Δ {'mask IoU' if m == 'mIoU' else 'mask AP'} (RoIAlign - RoIPool)")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(strides) > 1:
            ax = axes[row, 1]
            es = [e[f"trend_{m}"] for e in bins]
            ax.errorbar(
                [e["median_px"] for e in bins],
                [e["mean"] for e in es],
                yerr=_interval_bars(es),
                marker="o",
                capsize=3,
                color="tab:purple",
            )
            c = size_map["crossover"][m]
            if c["px"] == c["px"]:
                ax.axvline(c["px"], color="tab:red", ls="--", label=f"crossover {c['px']:.0f} px")
                if c["lo"] == c["lo"]:
                    ax.axvspan(c["lo"], c["hi"], color="tab:red", alpha=0.1, label="its 95% interval")
                ax.legend(fontsize=8)
            ax.axhline(0, color="0.5", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("object size (px, median of the size range)")
            ax.set_ylabel(f"gap at stride {strides[-1]} minus gap at stride {strides[0]}")
            ax.set_title("> 0: the gap grows with the stride at equal pixels", fontsize=9)
            ax.grid(alpha=0.3)
    _save(plt, fig, path, f"{dataset}: the gap by object size (bars: 95% two-level bootstrap, seeds and test images)")


def plot_article(ex, path):
    plt = _plt()
    from matplotlib.patches import Rectangle

    s, box, k = ex["stride"], ex["box"], ex["bins"]
    boxes = torch.tensor([[0.0, 0.0, float(box), float(box)]], dtype=torch.float64)
    x0, x1, _, _ = roialign_bins(boxes, s, k, aligned=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.6))
    for ax, key, title in (
        (axes[0], "floor", "article's description: floor(665/32) = 20, floor(20/7) = 2"),
        (axes[1], "real", "real RoIPool rule: round(20.78) = 21, 22 cells, floor/ceil bin edges"),
    ):
        n = ex["image"] // s
        for c in range(n + 1):
            ax.axvline(c * s, color="0.88", lw=0.6, zorder=0)
            ax.axhline(c * s, color="0.88", lw=0.6, zorder=0)
        bins = ex[key]["bins_px"]
        for a, b in bins:  # the pooled bins: column a..b of every row of bins
            for c, d in bins:
                ax.add_patch(Rectangle((a, c), b - a, d - c, fill=True, alpha=0.07, color="tab:blue", lw=0))
                ax.add_patch(Rectangle((a, c), b - a, d - c, fill=False, ec="tab:blue", lw=0.8, alpha=0.7))
        ax.add_patch(Rectangle((0, 0), box, box, fill=False, ec="tab:red", lw=2.2, label=f"box {box}x{box}"))
        # RoIAlign bins and its 2x2 sample points per bin
        edges = [x0[0, 0].item()] + x1[0].tolist()
        for e in edges:
            ax.plot([e, e], [0, box], color="tab:green", lw=0.6, ls=":")
            ax.plot([0, box], [e, e], color="tab:green", lw=0.6, ls=":")
        bw = box / k
        pts = [(i * bw + (q + 0.5) * bw / 2) for i in range(k) for q in range(2)]
        px, py = np.meshgrid(pts, pts)
        ax.scatter(px.ravel(), py.ravel(), s=6, color="tab:green", label="RoIAlign samples (2x2 per bin)", zorder=3)
        ax.plot([], [], color="tab:blue", label="RoIPool bins")
        ax.set_xlim(-10, 740)
        ax.set_ylim(740, -10)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path, "800x800 image, 665x665 box, stride 32 (grey: 32 px feature cells), 7x7 bins")
