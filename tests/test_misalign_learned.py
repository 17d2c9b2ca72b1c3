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

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("matplotlib")

from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

import roiops  # noqa: E402
from roiops.bench import misalign as m  # noqa: E402
from roiops.bench.misalign import coco, level3_report, level3_runs, plots, stats, summary  # noqa: E402
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


# ----------------------------------------------------------------------------------------- end to end, report
TINY = l3.Config(
    steps=3,
    train_images=6,
    test_images=6,
    image_size=64,
    diameter=(8.0, 40.0),
    bootstrap=20,
    size_edges=(0.0, 16.0, 1e4),
)


def test_tiny_level3_run_writes_every_key_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "QUICK", {"synthetic": TINY})
    parser = argparse.ArgumentParser()
    m.add_arguments(parser)
    out, js = tmp_path / "rep", tmp_path / "r.json"
    args = parser.parse_args(
        ["--quick", "--levels", "3", "--seeds", "2", "--datasets", "synthetic", "--out", str(out), "--json", str(js)]
    )
    assert m.run(args) == 0
    res = json.loads(js.read_text())
    assert set(res["level3"]) == {"synthetic"}
    r3 = res["level3"]["synthetic"]
    assert r3["dataset"] == "synthetic"
    assert {(r["stride"], r["op"], r["seed"]) for r in r3["runs"]} == {
        (s, op, seed) for s in (16, 32) for op in ("RoIPool", "RoIAlign avg") for seed in (0, 1)
    }
    for r in r3["runs"]:
        for k in ("AP", "AP50", "AP75", "mIoU", "AP@0", "mIoU@1"):
            assert r[k] is None or 0.0 <= r[k] <= 100.0
    rows = r3["summary"]["rows"]
    assert {"mean", "seed_ci", "boot_lo", "boot_hi"} <= set(
        next(r for r in rows if r["op"] == "RoIAlign avg")["gap_AP"]
    )
    sm = r3["summary"]["size_map"]
    assert len(sm["bins"]) == 2 and {"gap_mIoU_s16", "gap_AP_s32", "trend_mIoU", "trend_AP"} <= set(sm["bins"][0])
    assert set(r3["summary"]["trend"]) == {"AP", "AP50", "AP75", "mIoU"}
    report = (out / "REPORT.md").read_text()
    for heading in ("Level 3, synthetic", "Table 2c", "Table 2d", "object-size map", "Regime check"):
        assert heading in report
    assert (out / "level3_synthetic_mask_ap.png").exists() and (out / "level3_synthetic_size_map.png").exists()
    # the report re-renders from the JSON alone, to the same text
    again = tmp_path / "again"
    assert m.run(parser.parse_args(["--from-json", str(js), "--out", str(again), "--no-plots"])) == 0
    assert (again / "REPORT.md").read_text() == report


def test_stardist_absent_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "stardist_paths", lambda: None)
    parser = argparse.ArgumentParser()
    m.add_arguments(parser)
    js = tmp_path / "r.json"
    args = parser.parse_args(
        ["--quick", "--levels", "3", "--datasets", "stardist", "--out", str(tmp_path), "--json", str(js)]
    )
    assert m.run(args) == 0
    res = json.loads(js.read_text())
    assert res["level3"] == {} and any("stardist" in n and "skipped" in n for n in res["notes"])
    assert "skipped: the stardist package is not installed" in (tmp_path / "REPORT.md").read_text()
    with pytest.raises(SystemExit, match="unknown level-3 dataset"):
        m.run(parser.parse_args(["--quick", "--levels", "3", "--datasets", "coco", "--out", str(tmp_path)]))


def test_steps_option_sets_the_fine_and_the_coarse_stride():
    parser = argparse.ArgumentParser()
    m.add_arguments(parser)
    cfg = m._level3_config("synthetic", parser.parse_args(["--steps", "7,11"]), False)
    assert (cfg.steps_at(16), cfg.steps_at(32)) == (7, 11)
    cfg = m._level3_config("stardist", parser.parse_args(["--steps", "5"]), True)
    assert (cfg.dataset, cfg.steps_at(16), cfg.steps_at(32)) == ("stardist", 5, 5)
    assert l3.Config(steps=9).steps_at(32) == 9  # no coarse count: the same at every stride


def test_regime_check():
    assert summary.in_papers_regime(30.3, 30.9)  # the paper's own C4 / C5 RoIAlign
    assert summary.in_papers_regime(30.0, 27.0) and not summary.in_papers_regime(30.0, 26.9)
    assert not summary.in_papers_regime(31.4, 15.7)  # stride 32 far below stride 16
    assert not summary.in_papers_regime(15.0, 20.0)  # far above is not the paper's regime either
    assert not summary.in_papers_regime(float("nan"), 20.0) and not summary.in_papers_regime(0.0, 0.0)


def test_every_op_trains_and_scores_at_both_strides():
    train, test = l3.make_datasets(TINY)
    scorer = l3.Scorer(test, TINY)
    proposals = l3.fixed_test_proposals(test, TINY.jitter)
    for op in l3.OPS:
        for stride in (16, 32):
            values = scorer.score(l3.detect(l3.train(op, stride, 0, train, TINY), test, proposals))
            assert values["AP"].shape == (1 + TINY.bootstrap,)
            assert 0.0 <= values["mIoU"][0] <= 100.0


def test_worker_processes_give_the_numbers_of_a_serial_run():
    ops = [op for op in l3.OPS if op.name in (l3.BASELINE, l3.REFERENCE)]
    serial = level3_runs.run_level3([16], ops, 1, TINY, log=lambda _: None, workers=1)
    pooled = level3_runs.run_level3([16], ops, 1, TINY, log=lambda _: None, workers=2)
    assert pooled["workers"] == 2
    assert [r["op"] for r in pooled["runs"]] == [op.name for op in ops]  # the fixed order, whatever finished first
    for a, b in zip(serial["runs"], pooled["runs"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for key, values in serial["bootstrap"].items():
        for metric, v in values.items():
            np.testing.assert_array_equal(v, pooled["bootstrap"][key][metric])


def test_coarse_ops_train_only_at_the_finest_stride_and_the_report_says_so(tmp_path):
    ops = [op for op in l3.OPS if op.name in (l3.BASELINE, "RoIWarp", "RoIAlign max", l3.REFERENCE)]
    cfg = dataclasses.replace(TINY, coarse_ops=(l3.BASELINE, l3.REFERENCE))
    r3 = level3_runs.run_level3([16, 32], ops, 1, cfg, log=lambda _: None)
    assert [(r["stride"], r["op"]) for r in r3["runs"]] == [(16, op.name) for op in ops] + [
        (32, l3.BASELINE),
        (32, l3.REFERENCE),
    ]
    assert r3["ops_at"] == {"16": [op.name for op in ops], "32": [l3.BASELINE, l3.REFERENCE]}
    r3["summary"] = summary.summarize(r3)
    assert [r["op"] for r in r3["summary"]["rows"] if r["stride"] == 32] == [l3.BASELINE, l3.REFERENCE]
    assert {c["stride"] for c in r3["summary"]["contrasts"]} == {16}  # RoIWarp and max only at 16
    assert r3["summary"]["size_map"] and r3["summary"]["trend"]
    plots.plot_level3(r3["summary"], str(tmp_path / "l3.png"))  # (no bar where an op did not train)
    assert (tmp_path / "l3.png").stat().st_size > 0
    text = "\n".join(level3_report.level3_section(r3))
    assert "RoIPool and RoIAlign avg (the ops the comparison across strides needs) at stride 32:" in text
    assert "| 32 | RoIPool |" in text and "| 32 | RoIWarp |" not in text


@pytest.mark.parametrize(
    "small, large, verdict",
    [((5, 6), (1, 2), "held"), ((1, 2), (5, 6), "NOT held"), ((3, 5), (4, 6), "undecided (the intervals overlap)")],
)
def test_small_objects_finding_is_decided_only_by_separate_intervals(small, large, verdict):
    def gap(lo, hi):
        return dict(mean=(lo + hi) / 2, boot_lo=lo, boot_hi=hi)

    bins = [dict(median_px=12.0, gap_mIoU_s16=gap(*small)), dict(median_px=160.0, gap_mIoU_s16=gap(*large))]
    r3 = dict(strides=[16], summary=dict(rows=[], contrasts=[], size_map=dict(bins=bins, strides=[16])))
    (text,) = level3_report.level3_findings(r3)
    assert text.startswith(f"Stride 16, small objects gain most (the paper's expectation): {verdict};")
