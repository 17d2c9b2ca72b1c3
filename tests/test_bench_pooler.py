"""`roiops-bench pooler` runs end to end (on a small pyramid here) and its outputs agree with
torchvision's pooler."""

import json

import pytest

from roiops.bench import cli, pooler

pytest.importorskip("torchvision")


def test_pooler_benchmark_runs_and_agrees_with_torchvision(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pooler, "IMAGE", (128, 160))
    monkeypatch.setattr(pooler, "CHANNELS", 8)
    monkeypatch.setattr(pooler, "HEADS", [("box_head_7x7", 40, 7)])
    out = tmp_path / "pooler.json"
    assert cli.main(["pooler", "--repeats", "2", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["layout"] for r in rows] == ["nchw", "channels_last"]
    for r in rows:
        assert r["max_abs_diff"] < 1e-5
        for d in ("forward", "backward"):
            assert r[f"roiops {d} ms"] > 0 and r[f"x torchvision {d}"] > 0
    assert "x tv" in capsys.readouterr().out
