"""Tests of level 3 of the misalignment benchmark (learned features), its statistics and its report, and of
``roiops.models.round_boxes_to_grid`` (RoIWarp's box rounding). Tiny configurations, so each runs in seconds.

Expected values come from hand computation or closed forms, or from pycocotools itself, never from the module
under test.
"""

import argparse
import copy
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

import roiops  # noqa: E402
from roiops.bench import misalign as m  # noqa: E402
from roiops.bench.misalign import coco, level3_report, level3_runs, level3_tables, plots, stats, summary  # noqa: E402
from roiops.bench.misalign import data as bdata  # noqa: E402
from roiops.bench.misalign import level3_learned as l3  # noqa: E402
from roiops.models import round_boxes_to_grid  # noqa: E402


# ----------------------------------------------------------------------------------------- RoIWarp's rounding
def test_round_boxes_to_grid_by_hand():
    boxes = torch.tensor(
        [
            [5.0, 7.9, 24.0, 40.0],  # cells 0.31 0.49 1.5 2.5 -> 0 0 2 3 (halves away from zero)
            [-8.0, 8.0, 47.9, 56.1],  # -0.5 0.5 2.99 3.51 -> -1 1 3 4
            [1.0, 30.0, 3.0, 33.0],
        ]
    )  # x collapses (0, 0) and keeps one cell; y 1.875 2.06 -> 2, 2 -> 3
    expected = torch.tensor([[0.0, 0.0, 32.0, 48.0], [-16.0, 16.0, 48.0, 64.0], [0.0, 32.0, 16.0, 48.0]])
    torch.testing.assert_close(round_boxes_to_grid(boxes, 1 / 16), expected)
    # the dtype is kept, and a scale of 1 rounds to whole pixels
    out = round_boxes_to_grid(boxes.double(), 1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0], torch.tensor([5.0, 8.0, 24.0, 40.0], dtype=torch.float64))


def test_round_boxes_to_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="Tensor\\[N, 4\\]"):
        round_boxes_to_grid(torch.zeros(3, 5), 0.5)
    with pytest.raises(ValueError, match="Tensor\\[N, 4\\]"):
        round_boxes_to_grid(torch.zeros(3, 4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="positive"):
        round_boxes_to_grid(torch.zeros(3, 4), 0.0)


def test_roiwarp_pooler_is_roialign_on_rounded_boxes():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 10, 10, generator=g)
    boxes = [torch.tensor([[3.0, 5.0, 70.0, 90.0]]), torch.tensor([[20.0, 9.0, 41.0, 77.0], [0.0, 0.0, 9.0, 9.0]])]
    warp = l3.make_pooler(l3.PoolOp("RoIWarp", round_boxes=True), 7, 16, 2)
    out = warp({"0": feats}, boxes, [(160, 160)] * 2)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), round_boxes_to_grid(b, 1 / 16)], 1) for i, b in enumerate(boxes)]
    )
    torch.testing.assert_close(out, roiops.roi_align(feats, rois, 7, 1 / 16, 2, True))


def test_backbone_stride_and_channels():
    cfg = l3.Config()
    for stride in (16, 32):
        net = l3.Backbone(stride, cfg.widths)
        assert net(torch.zeros(2, 1, 64, 96)).shape == (2, net.out_channels, 64 // stride, 96 // stride)
    with pytest.raises(ValueError, match="power of two"):
        l3.Backbone(24, cfg.widths)


def test_default_backbones_hold_the_same_values_per_pixel_at_both_strides():
    fine, coarse = (l3.Backbone(s, m.DEFAULTS["synthetic"].widths) for s in (16, 32))
    assert fine.out_channels / 16**2 == coarse.out_channels / 32**2


# ----------------------------------------------------------------------------------------- statistics
def test_percentile_interval_and_resample_counts():
    assert stats.percentile_interval(np.arange(1001.0)) == pytest.approx((25.0, 975.0))
    assert stats.percentile_interval([np.nan, 1.0, 1.0]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.percentile_interval([np.nan]))
    counts = stats.resample_counts(7, 500, seed=1)
    assert counts.shape == (500, 7) and (counts.sum(1) == 7).all()
    assert counts.mean() == pytest.approx(1.0)


def test_bootstrap_interval_of_a_mean_matches_the_normal_closed_form():
    """For the mean of n values the bootstrap standard error is the population sd / sqrt(n), so the 95% interval
    is about mean ± 1.96 sd / sqrt(n)."""
    x = np.random.default_rng(3).normal(5.0, 2.0, size=200)
    w = stats.resample_counts(len(x), 4000, seed=2)
    lo, hi = stats.percentile_interval(w @ x / len(x))
    half = 1.96 * x.std() / math.sqrt(len(x))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)
    assert (lo + hi) / 2 == pytest.approx(x.mean(), abs=0.1 * half)


def test_crossover_interpolates_in_log_size():
    assert summary.crossover([10, 20, 40], [-2.0, -1.0, 1.0]) == pytest.approx(math.sqrt(20 * 40))
    assert summary.crossover([10, 20, 40], [-3.0, float("nan"), 1.0]) == pytest.approx(10 * 4**0.75)
    # the last change of sign counts: a positive blip among small objects is not the crossover
    assert summary.crossover([10, 20, 40, 80], [-1.0, 1.0, -1.0, 3.0]) == pytest.approx(40 * 2**0.25)
    assert summary.crossover([10, 20], [1.0, 2.0]) is None  # never negative: it grows at every size
    assert summary.crossover([10, 20], [1.0, -2.0]) is None  # negative at the largest size: no crossover in range


# ----------------------------------------------------------------------------------------- AP against pycocotools
def _tiny_set_and_detections(seed=0):
    samples = bdata.make_shapes(6, size=64, seed=seed, min_diameter=8, max_diameter=40, instances_per_image=(2, 4))
    data = bdata.L3Data.from_samples("t", samples, len(bdata.SHAPE_CLASSES))
    rng = np.random.default_rng(seed)
    dets = []
    for i, (masks, labels) in enumerate(zip(data.masks, data.labels)):
        for mk, lab in zip(masks.numpy() > 0.5, labels.tolist()):
            shifted = np.roll(mk, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))  # IoUs spread over 0..1
            dets.append(
                dict(
                    image_id=i + 1,
                    category_id=lab if rng.random() > 0.2 else 1 + lab % 3,
                    segmentation=coco._rle(shifted),
                    score=float(rng.random()),
                )
            )
        spurious = np.zeros(mk.shape, bool)
        spurious[5:15, 5:15] = True
        dets.append(dict(image_id=i + 1, category_id=1, segmentation=coco._rle(spurious), score=float(rng.random())))
    return data, dets


def _cocoeval_stats(gt, dets):
    with np.errstate(all="ignore"):
        dt = gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:3]


def test_average_precision_equals_cocoeval(capsys):
    data, dets = _tiny_set_and_detections()
    gt = coco.coco_gt(data)
    table = coco.match_detections(gt, copy.deepcopy(dets), [0.0, 1e4])
    ours = coco.average_precision(table, np.ones((1, len(data.images))))
    ref = _cocoeval_stats(gt, dets)
    assert [ours["AP"][0], ours["AP50"][0], ours["AP75"][0]] == pytest.approx(list(ref), abs=1e-12)
    assert ours["AP"][0] > 0.05 and ours["AP"][0] < 0.95  # a case that actually tests something


def test_image_weights_equal_duplicating_and_dropping_images():
    """Weight 2 on image 1 and 0 on image 3 gives the AP pycocotools finds on a test set holding image 1 twice
    and no image 3: what a bootstrap resample means."""
    data, dets = _tiny_set_and_detections(seed=1)
    gt = coco.coco_gt(data)
    weights = np.ones((1, len(data.images)))
    weights[0, 0], weights[0, 2] = 2.0, 0.0
    ours = coco.average_precision(coco.match_detections(gt, copy.deepcopy(dets), [0.0, 1e4]), weights)
    dup = COCO()
    images = [im for im in gt.dataset["images"] if im["id"] != 3] + [dict(gt.dataset["images"][0], id=99)]
    anns = [a for a in gt.dataset["annotations"] if a["image_id"] != 3]
    anns += [dict(a, id=1000 + a["id"], image_id=99) for a in gt.dataset["annotations"] if a["image_id"] == 1]
    dup.dataset = dict(images=images, annotations=anns, categories=gt.dataset["categories"])
    dup.createIndex()
    dup_dets = [d for d in dets if d["image_id"] != 3] + [dict(d, image_id=99) for d in dets if d["image_id"] == 1]
    ref = _cocoeval_stats(dup, dup_dets)
    assert [ours["AP"][0], ours["AP50"][0], ours["AP75"][0]] == pytest.approx(list(ref), abs=1e-9)


def test_constant_score_ap_is_one_point_of_the_curve():
    """Detections that equal their object's mask (IoU 1) or overlap nothing (IoU 0) match the same way at every
    IoU threshold, so with k hits, f misses and G objects the one-point AP is k / (k + f) times the share of
    COCO's 101 recall thresholds (0, 0.01, .., 1) at or below k / G."""
    samples = bdata.make_shapes(4, size=64, seed=5, min_diameter=8, max_diameter=24, instances_per_image=(2, 3))
    data = bdata.L3Data.from_samples("t", samples, 1)
    for s in samples:
        for inst in s.instances:
            inst.label = 1
    data = bdata.L3Data.from_samples("t", samples, 1)
    gt = coco.coco_gt(data)
    masks = [(i, mk) for i, ms in enumerate(data.masks) for mk in ms.numpy() > 0.5]
    G, hits = len(masks), masks[:-2]  # the last two objects are missed
    empty = np.zeros((64, 64), bool)
    empty[0:2, 0:2] = True  # (a corner no shape of this seed reaches: checked below)
    assert not any((mk & empty).any() for _, mk in masks)
    dets = [dict(image_id=i + 1, category_id=1, segmentation=coco._rle(mk), score=0.5) for i, mk in hits]
    dets += [dict(image_id=1, category_id=1, segmentation=coco._rle(empty), score=0.1) for _ in range(3)]
    table = coco.match_detections(gt, dets, [0.0, 1e4])
    out = coco.constant_score_ap(table, np.ones((2, len(data.images))))
    k, f = len(hits), 3
    expected = k / (k + f) * sum(1 for j in range(101) if j / 100 <= k / G + 1e-12) / 101
    for key in ("AP", "AP50", "AP75"):
        assert out[key] == pytest.approx([expected, expected], abs=1e-12)
    # the scores rank the misses last: precision is 1 up to recall k / G, which the constant scores do not see
    reached = sum(1 for j in range(101) if j / 100 <= k / G + 1e-12) / 101
    assert coco.average_precision(table, np.ones((1, len(data.images))))["AP"][0] == pytest.approx(reached)


# ----------------------------------------------------------------------------------------- two-level bootstrap
def test_two_level_sd_adds_the_seed_and_image_variances():
    """v[s, b] = a_s + e_b: the bootstrap variance of a mean of n seeds is var_pop(a) / n, the images add
    var(e) (e is shared by the seeds, as a common test-image resample is); independent sources add."""
    rng = np.random.default_rng(0)
    n, B = 8, 4000
    a = rng.normal(0, 3.0, n)
    e = rng.normal(0, 2.0, B)
    v = a[:, None] + np.concatenate([[0.0], e])[None, :]
    r = stats.summarize_two_level(stats.two_level(v), n)
    assert r["mean"] == pytest.approx(a.mean())
    assert r["sd_seed"] == pytest.approx(a.std() / math.sqrt(n), rel=0.06)
    assert r["sd_image"] == pytest.approx(e.std(), rel=0.03)
    assert r["sd"] == pytest.approx(math.sqrt(a.var() / n + e.var()), rel=0.06)
    assert r["lo"] < r["seed_lo"] and r["hi"] > r["seed_hi"]  # wider than either source alone


def test_seed_draws_pair_statistics_over_the_same_seeds():
    np.testing.assert_array_equal(stats.seed_draws(5, 50), stats.seed_draws(5, 50))
    assert (stats.seed_draws(5, 50).sum(1) == 5).all()


@pytest.mark.parametrize(
    "lo, hi, expected",
    [(0.1, 2.0, "held"), (-2.0, 0.0, "not held"), (-3.0, -1.0, "not held"), (-0.1, 2.0, "undecided")],
)
def test_verdict(lo, hi, expected):
    assert stats.verdict(lo, hi) == expected
    assert stats.verdict(float("nan"), 1.0) == "undecided"


def _synthetic_result(gap, strides=(16, 32), seeds=4, B=300, medians=(12.0, 24.0, 48.0, 96.0, 192.0)):
    """A level-3 result dict without training: gap(stride, cells, seed) is RoIAlign avg minus RoIPool in every
    size range (RoIPool at 50), the image resamples adding the same noise to both ops."""
    rng = np.random.default_rng(1)
    noise = np.concatenate([[0.0], rng.normal(0, 1.0, B)])
    boot, runs = {}, []
    for s in strides:
        for seed in range(seeds):
            for op in (l3.BASELINE, l3.REFERENCE):
                vals = {}
                for b, med in enumerate(medians):
                    g = gap(s, med / s, seed) if op == l3.REFERENCE else 0.0
                    for metric in ("mIoU", "AP"):
                        vals[f"{metric}@{b}"] = 50.0 + g + noise
                g = gap(s, 3.0, seed) if op == l3.REFERENCE else 0.0
                for metric in summary.METRICS + summary.CONST:
                    vals[metric] = 50.0 + g + noise
                boot[(s, op, seed)] = vals
                runs.append(dict(stride=s, op=op, seed=seed, steps=10, curve=[dict(step=10, AP=vals["AP"][0])]))
    data = dict(
        size_edges=[0.0, 16.0, 32.0, 64.0, 128.0, 1e4],
        objects_per_bin=[100] * len(medians),
        bin_median_px=list(medians),
    )
    ops_at = {str(s): [l3.BASELINE, l3.REFERENCE] for s in strides}
    return dict(bootstrap=boot, strides=list(strides), ops_at=ops_at, data=data, n_bins=len(medians), runs=runs)


def test_gap_that_depends_on_cells_only_has_no_stride_effect_at_equal_cells():
    res = _synthetic_result(lambda s, cells, seed: 4.0 * math.log2(cells) + seed)
    sm = summary.summarize(res)["size_map"]
    for m_ in ("mIoU", "AP"):
        eq = sm["equal_cells"][m_]
        assert [(p["fine"], p["coarse"]) for p in eq["pairs"]] == [(0, 1), (1, 2), (2, 3), (3, 4)]
        for key in ("stride_effect", "interaction"):
            assert (eq[key]["mean"], eq[key]["lo"], eq[key]["hi"]) == pytest.approx((0, 0, 0), abs=1e-9)
    # at equal pixels the same gap is 4 points lower at stride 32 (one octave fewer cells): the trend is -4
    assert sm["bins"][2]["trend_mIoU"]["mean"] == pytest.approx(-4.0)
    # RoIAlign's own AP depends on cells only too: equal at equal cells, whatever it is at equal pixels
    regime = sm["regime_equal_cells"]
    assert (regime["mean"], regime["lo"], regime["hi"]) == pytest.approx((0, 0, 0), abs=1e-9)


def test_stride_effect_and_interaction_at_equal_cells():
    """gap = f(cells) + [stride 32] (3 + 0.5 log2 cells): effect 3 + 0.5 x mean log2 cells, slope 0.5."""
    res = _synthetic_result(lambda s, c, seed: 2 * math.log2(c) + seed + (3 + 0.5 * math.log2(c)) * (s == 32))
    eq = summary.summarize(res)["size_map"]["equal_cells"]["AP"]
    cells = [math.log2(math.sqrt((12.0 * 2**k / 16) * (12.0 * 2 ** (k + 1) / 32))) for k in range(4)]
    assert eq["stride_effect"]["mean"] == pytest.approx(3 + 0.5 * np.mean(cells))
    assert eq["interaction"]["mean"] == pytest.approx(0.5)
    assert eq["interaction"]["lo"] == pytest.approx(0.5) and eq["interaction"]["hi"] == pytest.approx(0.5)


def test_gaps_are_paired_by_seed_and_resample():
    """RoIAlign = RoIPool + 2 + seed in every resample: the gap's seeds-only interval is the bootstrap of the
    seed offsets 0..3 and the test-image resamples add nothing, however noisy each op is alone."""
    res = _synthetic_result(lambda s, c, seed: 2.0 + seed)
    summ = summary.summarize(res)
    gap = next(r for r in summ["rows"] if r["stride"] == 16 and r["op"] == l3.REFERENCE)["gap_AP"]
    assert gap["mean"] == pytest.approx(3.5) and gap["sd_image"] == pytest.approx(0.0, abs=1e-9)
    assert 2.0 <= gap["lo"] < 3.5 < gap["hi"] <= 5.0
    alone = next(r for r in summ["rows"] if r["stride"] == 16 and r["op"] == l3.REFERENCE)["AP"]
    assert alone["sd_image"] > 0.9  # each op alone carries the image noise (sd 1)
    assert summ["trend"]["AP"]["mean"] == pytest.approx(0.0) and summ["trend"]["AP"]["sd"] == pytest.approx(0.0)


def test_crossover_interval_covers_the_point_and_says_how_often_one_exists():
    """At equal pixels the trend (gap at 32 minus gap at 16) is log2(px / 48) plus a seed term of mean 0: it
    crosses 0 at 48 px, and resampling the seeds moves the crossing within the neighbouring size ranges."""
    res = _synthetic_result(lambda s, c, seed: (math.log2(c * s / 48.0) + 0.4 * (seed - 1.5)) * (s == 32))
    c = summary.summarize(res)["size_map"]["crossover"]["mIoU"]
    assert c["px"] == pytest.approx(48.0)
    assert 24.0 <= c["lo"] < 48.0 < c["hi"] <= 96.0 and c["found"] == pytest.approx(1.0)
    never = _synthetic_result(lambda s, c, seed: 5.0 * (s == 32))  # grows at every size: no crossover at all
    c = summary.summarize(never)["size_map"]["crossover"]["AP"]
    assert math.isnan(c["px"]) and c["found"] == 0.0


# ----------------------------------------------------------------------------------------- end to end, report
TINY = l3.Config(
    steps=4,
    train_images=6,
    test_images=8,
    image_size=64,
    diameter=(8.0, 40.0),
    bootstrap=40,
    size_edges=(0.0, 8.0, 16.0, 32.0, 1e4),
    curve_points=2,
    plateau_seeds=2,
)


def _parser():
    parser = argparse.ArgumentParser()
    m.add_arguments(parser)
    return parser


def test_tiny_level3_run_writes_every_key_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "QUICK", {"synthetic": TINY})
    out, js = tmp_path / "rep", tmp_path / "r.json"
    args = _parser().parse_args(
        ["--quick", "--levels", "3", "--seeds", "3", "--out", str(out), "--json", str(js), "--workers", "1"]
    )
    assert m.run(args) == 0
    res = json.loads(js.read_text())
    r3 = res["level3"]["synthetic"]
    assert {(r["stride"], r["op"], r["seed"]) for r in r3["runs"]} == {
        (s, op, seed) for s in (16, 32) for op in ("RoIPool", "RoIAlign avg") for seed in (0, 1, 2)
    }
    for r in r3["runs"]:
        # RoIAlign avg's first TINY.plateau_seeds seeds train on to 8 steps for the plateau check
        on = r["op"] == l3.REFERENCE and r["seed"] < TINY.plateau_seeds
        assert [p["step"] for p in r["curve"]] == ([2, 4, 6, 8] if on else [2, 4]) and r["steps"] == 4
        assert r["trained"] == (8 if on else 4)
        assert r["curve"][1]["AP"] == r["AP"]  # the result is the EMA at the nominal steps
        for k in ("AP", "AP50", "AP75", "mIoU", "constAP", "AP@0", "mIoU@1"):
            assert r[k] is None or 0.0 <= r[k] <= 100.0
    gap = next(r for r in r3["summary"]["rows"] if r["op"] == "RoIAlign avg")["gap_AP"]
    assert {"mean", "lo", "hi", "sd", "sd_seed", "sd_image", "seed_lo", "image_hi"} <= set(gap)
    sm = r3["summary"]["size_map"]
    assert len(sm["bins"]) == 4 and set(sm["crossover"]) == {"mIoU", "AP"}
    report = (out / "REPORT.md").read_text()
    for heading in (
        "Plateau check",
        "changed by",
        "Table 2c",
        "Table 2d",
        "Learning curves",
        "in feature cells",
        "Every run",
        "Regime",
        "aligned=False",
    ):
        assert heading in report
    # every run's row is in the report
    assert sum(line.startswith("| RoIPool | 32 |") for line in report.splitlines()) == 3
    for png in ("mask_ap", "size_map", "curves"):
        assert (out / f"level3_synthetic_{png}.png").stat().st_size > 0
    # the report re-renders from the JSON alone, to the same bytes
    again = tmp_path / "again"
    assert m.run(_parser().parse_args(["--from-json", str(js), "--out", str(again), "--no-plots"])) == 0
    assert (again / "REPORT.md").read_bytes() == (out / "REPORT.md").read_bytes()


def test_committed_report_is_the_rendering_of_the_committed_json(tmp_path):
    """benchmarks/misalign: REPORT.md is what --from-json makes of results.json, byte for byte (one run)."""
    root = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "misalign")
    assert (
        m.run(
            _parser().parse_args(
                ["--from-json", os.path.join(root, "results.json"), "--out", str(tmp_path), "--no-plots"]
            )
        )
        == 0
    )
    with open(os.path.join(root, "REPORT.md"), "rb") as f:
        assert (tmp_path / "REPORT.md").read_bytes() == f.read()


def test_stardist_absent_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "stardist_paths", lambda: None)
    js = tmp_path / "r.json"
    args = _parser().parse_args(
        ["--quick", "--levels", "3", "--datasets", "stardist", "--out", str(tmp_path), "--json", str(js)]
    )
    assert m.run(args) == 0
    res = json.loads(js.read_text())
    assert res["level3"] == {} and any("stardist" in n and "skipped" in n for n in res["notes"])
    assert "skipped: the stardist package is not installed" in (tmp_path / "REPORT.md").read_text()
    with pytest.raises(SystemExit, match="unknown level-3 dataset"):
        m.run(_parser().parse_args(["--quick", "--levels", "3", "--datasets", "coco", "--out", str(tmp_path)]))


def test_steps_and_seeds_options():
    cfg = m._level3_config("synthetic", _parser().parse_args(["--steps", "7,11", "--seeds", "5"]), False)
    assert (cfg.steps_at(16), cfg.steps_at(32), cfg.seeds) == (7, 11, 5)
    cfg = m._level3_config("stardist", _parser().parse_args(["--steps", "5"]), True)
    assert (cfg.dataset, cfg.steps_at(16), cfg.steps_at(32), cfg.seeds) == ("stardist", 5, 5, 2)
    assert l3.Config(steps=9).steps_at(32) == 9  # no coarse count: the same at every stride
    assert l3.Config(steps=10, curve_points=4).checkpoints(16) == [2, 5, 8, 10]


def test_learning_rate_warms_up_stays_and_cools_down_linearly():
    # 10 steps, 2 of warm-up, the last 40% (steps 7..10) cooling down to a quarter of the peak
    f = [l3.lr_factor(i, 10, 2, 0.4) for i in range(1, 11)]
    assert f == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert [l3.lr_factor(i, 10, 2, 0.0) for i in (1, 2, 10)] == [0.5, 1, 1]  # no cool-down: constant


def test_report_describes_the_schedule_the_run_used():
    cfg = dataclasses.asdict(dataclasses.replace(TINY, cooldown=0.25, plateau_checkpoints=2))
    text = level3_report._schedule_text(cfg) + level3_report._curve_method_text(cfg)
    assert "cool-down to about 0 over the last 25% of the run" in text and "to 2x the steps" in text
    assert "exactly a run of that length" in text and "constant rate makes" not in text
    flat = dataclasses.asdict(TINY)  # no cool-down: the EMA weights along one constant-rate run
    text = level3_report._schedule_text(flat) + level3_report._curve_method_text(flat)
    assert text.endswith("constant rate makes those of a run of that length.") and "cool-down" not in text


def test_training_calls_back_at_the_checkpoints():
    train, _ = l3.make_datasets(TINY)
    cfg = dataclasses.replace(TINY, steps=8, curve_points=4, warmup=0.25)
    seen = []
    l3.train(l3.OPS[0], 16, 0, train, cfg, lambda step, model: seen.append((step, model.training)))
    assert seen == [(2, False), (4, False), (6, False)]  # the last checkpoint is the returned model


def test_every_op_trains_and_scores_at_both_strides():
    train, test = l3.make_datasets(TINY)
    scorer = l3.Scorer(test, TINY)
    proposals = l3.fixed_test_proposals(test, TINY.jitter)
    for op in l3.OPS:
        for stride in (16, 32):
            dets = l3.detect(l3.train(op, stride, 0, train, TINY), test, proposals)
            values = scorer.score(dets)
            assert values["AP"].shape == (1 + TINY.bootstrap,)
            assert 0.0 <= values["mIoU"][0] <= 100.0
            point = scorer.score(dets, resamples=False)
            assert all(point[k].shape == (1,) and point[k][0] == values[k][0] for k in ("AP", "constAP", "mIoU"))


def test_worker_processes_give_the_numbers_of_a_serial_run():
    ops = [op for op in l3.OPS if op.name in (l3.BASELINE, l3.REFERENCE)]
    cfg = dataclasses.replace(TINY, seeds=1)
    serial = level3_runs.run_level3([16], ops, cfg, log=lambda _: None, workers=1)
    pooled = level3_runs.run_level3([16], ops, cfg, log=lambda _: None, workers=2)
    assert pooled["workers"] == 2
    assert [r["op"] for r in pooled["runs"]] == [op.name for op in ops]  # the fixed order, whatever finished first
    drop = ("seconds",)
    for a, b in zip(serial["runs"], pooled["runs"]):
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    for key, values in serial["bootstrap"].items():
        for metric, v in values.items():
            np.testing.assert_array_equal(v, pooled["bootstrap"][key][metric])


def test_the_op_table_decides_strides_and_seeds_and_the_report_says_so(tmp_path):
    ops = [op for op in l3.OPS if op.name in (l3.BASELINE, "RoIWarp", "RoIAlign max", l3.REFERENCE)]
    cfg = dataclasses.replace(TINY, seeds=2, seeds_single=1)
    r3 = level3_runs.run_level3([16, 32], ops, cfg, log=lambda _: None)
    across = [op.name for op in ops if op.across_strides]
    assert across == [l3.BASELINE, "RoIWarp", l3.REFERENCE]
    assert sorted((r["stride"], r["op"], r["seed"]) for r in r3["runs"]) == sorted(
        [(s, op, seed) for s in (16, 32) for op in across for seed in (0, 1)] + [(16, "RoIAlign max", 0)]
    )
    assert r3["seeds"] == {l3.BASELINE: 2, "RoIWarp": 2, "RoIAlign max": 1, l3.REFERENCE: 2}
    r3["summary"] = summary.summarize(r3)
    assert {c["stride"]: c["n_seeds"] for c in r3["summary"]["contrasts"] if c["minus"] == "RoIAlign max"} == {16: 1}
    assert {"beats_16", "warp_16", "share_32", "ap75_32"} <= set(r3["summary"]["claims"])
    plots.plot_level3(r3["summary"], r3["runs"], str(tmp_path / "l3.png"))  # (no bar where an op did not train)
    assert (tmp_path / "l3.png").stat().st_size > 0
    text = "\n".join(level3_report.level3_section(r3))
    assert "2 seeds for RoIPool, RoIWarp, RoIAlign avg; 1 seeds for RoIAlign max" in text
    assert "| 32 | RoIPool |" in text and "| RoIAlign max | 32 |" not in text


def test_stratified_test_objects_spread_over_the_log_size_range():
    """Every octave of box size inside the diameter range holds a fair share of the test objects (a box's side
    is at most the diameter, so the octaves are counted from 8 px)."""
    kw = dict(size=160, seed=200, min_diameter=12, max_diameter=150, instances_per_image=(2, 5), stratify=True)
    samples = bdata.make_shapes(80, **kw)
    sizes = np.array([math.sqrt(np.prod(np.subtract(i.box()[2:], i.box()[:2]))) for s in samples for i in s.instances])
    counts = np.histogram(sizes, bins=(8, 16, 32, 64, 128))[0]
    assert counts.sum() >= 0.97 * len(sizes) and (counts > 0.15 * len(sizes)).all()
    assert [len(s.instances) for s in bdata.make_shapes(80, **kw)] == [len(s.instances) for s in samples]


def test_every_checkpoint_is_exactly_a_run_of_that_length():
    """A checkpoint's weights come from a branch of the constant-rate trunk that cools down on its own; they must
    be exactly those of a run that stops there (its own cool-down; the warm-up and the data stream do not depend
    on the run's length), and the plateau check's longer runs must leave the nominal run's result alone."""
    train, _ = l3.make_datasets(TINY)
    cfg = dataclasses.replace(TINY, cooldown=0.5)  # 4 nominal steps, checkpoints 2, 4 (and 6, 8 extended)
    op = next(o for o in l3.OPS if o.name == l3.REFERENCE)
    assert cfg.extends(op, 0) and not cfg.extends(op, cfg.plateau_seeds) and not cfg.extends(l3.OPS[0], 0)
    seen = {}

    def keep(step, model):
        seen[step] = copy.deepcopy(model.state_dict())

    longer = l3.train(op, 16, 0, train, cfg, keep, extended=True)
    assert sorted(seen) == [2, 4, 6]  # and it stops at 8, the returned model
    plain = l3.train(op, 16, 0, train, cfg).state_dict()
    short = l3.train(op, 16, 0, train, dataclasses.replace(cfg, steps=2, curve_points=1)).state_dict()
    # the same arithmetic on copied tensors: equal up to float32 rounding of the last bits (vectorised CPU
    # kernels may split their work differently on differently aligned memory)
    for k, v in plain.items():
        torch.testing.assert_close(seen[4][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(seen[2][k], short[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(longer.state_dict()[k], v) for k, v in plain.items() if v.is_floating_point())
    # the cool-down is real: without it the run of 4 steps ends elsewhere
    flat = l3.train(op, 16, 0, train, dataclasses.replace(cfg, cooldown=0.0)).state_dict()
    assert any(not torch.allclose(flat[k], v) for k, v in plain.items() if v.is_floating_point())


def _curve_runs(extended):
    """Three seeds at 5 and 10 (nominal) steps; the seeds in ``extended`` also at 15 and 20, AP up by 1 + seed
    and then 2 + seed since step 10."""
    runs = []
    for seed, (a5, a10) in enumerate([(10.0, 20.0), (12.0, 26.0), (11.0, 23.0)]):
        curve = [dict(step=5, AP=a5), dict(step=10, AP=a10)]
        if seed in extended:
            curve += [dict(step=15, AP=a10 + 1 + seed), dict(step=20, AP=a10 + 2 + seed)]
        runs.append(dict(stride=16, op=l3.REFERENCE, seed=seed, steps=10, curve=curve))
    return dict(strides=[16], ops_at={"16": [l3.REFERENCE]}, runs=runs)


def test_curves_add_the_paired_change_of_the_seeds_that_trained_on():
    (c,) = summary.curves(_curve_runs({0, 1}))
    assert c["nominal"] == 10 and c["steps"] == [5, 10, 15, 20]
    assert c["AP"][:2] == pytest.approx([11.0, 23.0])
    # past 10: the 3-seed mean at 10 plus the mean change of seeds 0 and 1 (1, 2 then 2, 3)
    assert c["AP"][2:] == pytest.approx([23.0 + 1.5, 23.0 + 2.5])
    assert [(e["step"], e["n_seeds"], e["mean"]) for e in c["extra"]] == [(15, 2, 1.5), (20, 2, 2.5)]
    assert c["extra"][-1]["lo"] == pytest.approx(2.0) and c["extra"][-1]["hi"] == pytest.approx(3.0)
    final = dict(mean=23.0, lo=21.0, hi=26.0)
    # 25.5 is inside [21, 26], but the gain's own interval [2, 3] excludes 0: still rising, not on the plateau
    assert summary.at_plateau(c, final) is False
    flat = dict(c, extra=[dict(c["extra"][-1], lo=-0.5)])
    assert summary.at_plateau(flat, final) is True
    assert summary.at_plateau(flat, dict(final, hi=25.0)) is False  # 25.5 outside [21, 25]
    assert summary.plateau_step(c, final) == 10  # 11 at step 5 is outside; the estimates past 10 do not count
    (plain,) = summary.curves(_curve_runs(set()))
    assert plain["steps"] == [5, 10] and plain["extra"] == [] and summary.at_plateau(plain, final) is None


def test_curves_table_reads_fractions_of_the_nominal_steps():
    summ = dict(
        curves=summary.curves(_curve_runs({0, 1})),
        rows=[dict(stride=16, op=l3.REFERENCE, AP=dict(mean=23.0, lo=21.0, hi=26.0))],
    )
    head, _, row = level3_tables.curves_table(summ)
    assert head.startswith("| stride | op | N | AP @ 0.5 N | AP @ 1 N | AP @ 1.5 N (2 seeds, paired) |")
    assert head.endswith("| in the N-step interval from | at its plateau |")
    # 25.5 lies inside [21, 26] but the gain's interval [2, 3] excludes 0
    assert row.startswith("| 16 | RoIAlign avg | 10 | 11.0 [") and row.endswith(
        "| 24.5 [24.0, 25.0] | 25.5 [25.0, 26.0] | 10 | no: still rising |"
    )
