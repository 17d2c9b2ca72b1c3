"""roiops-bench speed: its peers compute what they claim, its lower bound counts what it says, and
the command runs end to end on a small case."""

import json

import pytest
import torch

import roiops
from roiops.bench import cli, limits, peers, speed
from roiops.bench.speed_cases import Case, make_inputs

SMALL = dict(num_rois=6, output_size=3, batch=2, channels=4, height=12, width=16, min_box=8.0, max_box=30.0)


@pytest.mark.parametrize("op", ["roi_align_avg", "roi_align_max", "roi_pool"])
@pytest.mark.parametrize("peer", ["onnxruntime", "torchvision"])
def test_peers_compute_the_op_on_the_same_inputs(peer, op):
    if peers.availability()[peer] is not None:
        pytest.skip(peers.availability()[peer])
    case = Case("small", op, **SMALL)
    x, rois = make_inputs(case, "cpu")
    built = peers.build(peer, case, x, rois)
    if peer == "torchvision" and op == "roi_align_max":
        assert built is None  # torchvision has no max mode
        return
    fn, differentiable = built
    assert differentiable == (peer == "torchvision")
    if op == "roi_pool":
        want = roiops.roi_pool(x, rois, 3, case.spatial_scale)
    else:
        want = roiops.roi_align(x, rois, 3, case.spatial_scale, 2, True, op.split("_")[-1])
    got = fn(x, rois)
    assert got.shape == want.shape
    if op == "roi_align_max" and peer == "onnxruntime":
        assert (got - want).abs().max() > 1e-3  # ONNX's max mode is another quantity, as the table says
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_touched_cells_is_the_union_of_box_footprints():
    case = Case("hand", "roi_pool", 2, 2, batch=2, channels=1, height=10, width=10, spatial_scale=1.0)
    # image 0: cells [1, 5) x [1, 5) widened by the taps' reach (+2 at the end), overlapping [3, 6) x [3, 6)
    rois = torch.tensor([[0, 1.0, 1.0, 4.0, 4.0], [0, 3.0, 3.0, 4.0, 4.0], [1, 8.0, 8.0, 20.0, 20.0]])
    covered = torch.zeros(2, 10, 10, dtype=torch.bool)
    covered[0, 1:6, 1:6] = True
    covered[0, 3:6, 3:6] = True
    covered[1, 8:10, 8:10] = True
    assert limits.touched_cells(case, rois) == int(covered.sum())


def test_bound_grows_with_work_and_falls_with_bandwidth():
    case = Case("small", "roi_align_avg", **SMALL)
    _, rois = make_inputs(case, "cpu")
    slow, fast = limits.Machine(1.0, 1.0), limits.Machine(10.0, 10.0)
    assert limits.bound_ms(case, rois, "forward", slow) == pytest.approx(
        10 * limits.bound_ms(case, rois, "forward", fast)
    )
    wide = Case("small", "roi_align_avg", **{**SMALL, "channels": 8})
    assert limits.bound_ms(wide, rois, "backward", slow) == pytest.approx(
        2 * limits.bound_ms(case, rois, "backward", slow)
    )


def test_speed_command_runs_and_writes_json(tmp_path, monkeypatch, capsys):
    import roiops.bench.speed_cases as cases

    monkeypatch.setattr(cases, "standard_cases", lambda full, dtypes=None: [Case("tiny", "roi_align_avg", **SMALL)])
    monkeypatch.setattr("roiops.bench.speed.standard_cases", cases.standard_cases)
    out = tmp_path / "speed.json"
    assert cli.main(["speed", "--repeats", "2", "--warmup", "0", "--peers", "onnxruntime", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "x limit" in table and "tiny" in table
    payload = json.loads(out.read_text())
    forward = next(r for r in payload["results"] if r["direction"] == "forward")
    assert len(forward["times_ms"]["roiops"]) == 2 and forward["bound_ms"] > 0
    if payload["peers"]["onnxruntime"] is None:
        assert forward["disagreement"]["onnxruntime"] < 1e-5


def _tiny_run(monkeypatch, tmp_path, case_kw, *argv):
    import roiops.bench.speed_cases as cases

    def tiny(full, dtypes=None):
        return [Case("tiny", "roi_pool", **SMALL, dtype=d, **case_kw) for d in dtypes or ["float32"]]

    monkeypatch.setattr("roiops.bench.speed.standard_cases", tiny)
    monkeypatch.setattr(cases, "standard_cases", tiny)
    out = tmp_path / "speed.json"
    assert cli.main(["speed", "--json", str(out), *argv]) == 0
    return json.loads(out.read_text())


def test_half_dtype_cases_time_float32_alongside(tmp_path, monkeypatch, capsys):
    payload = _tiny_run(monkeypatch, tmp_path, {}, "--dtypes", "bfloat16", "--repeats", "3", "--peers", "")
    assert "x f32" in capsys.readouterr().out
    for r in payload["results"]:
        assert r["dtype"] == "bfloat16"
        assert len(r["times_ms"]["roiops float32"]) == len(r["times_ms"]["roiops"]) == 3
        assert r["vs_float32"] == pytest.approx(r["median_ms"]["roiops"] / r["median_ms"]["roiops float32"])
        assert "roiops float32" not in r["speedup"]
    assert cli.main(["speed", "--dtypes", "bfloat17"]) == 2


def test_backward_is_timed_on_one_forward_graph(tmp_path, monkeypatch):
    from roiops.bench import speed

    calls = []
    real = speed.implementations

    def counting(case, with_reference):
        return {k: (lambda x, r, f=f: calls.append(1) or f(x, r)) for k, f in real(case, with_reference).items()}

    monkeypatch.setattr(speed, "implementations", counting)
    _tiny_run(monkeypatch, tmp_path, {}, "--repeats", "4", "--warmup", "1", "--peers", "")
    # the disagreement reference, 5 timed or warm-up forwards, and one forward for all 5 backwards
    assert len(calls) == 1 + 5 + 1


def test_slow_peers_get_fewer_repeats_unless_full(tmp_path, monkeypatch):
    from roiops.bench import speed

    args = type("Args", (), {"full": False, "repeats": 5})()
    assert speed.peer_repeats(speed.PEER_BUDGET_S * 1e3 * 2, args) == 1
    assert speed.peer_repeats(speed.PEER_BUDGET_S * 1e3 / 3.5, args) == 3
    assert speed.peer_repeats(0.01, args) == 5
    args.full = True
    assert speed.peer_repeats(speed.PEER_BUDGET_S * 1e3 * 2, args) == 5
    if peers.availability()["torchvision"] is not None:
        pytest.skip("torchvision unavailable")
    monkeypatch.setattr(speed, "PEER_BUDGET_S", 0.0)  # every peer is "slow": its first call is the forward time
    payload = _tiny_run(monkeypatch, tmp_path, {}, "--repeats", "3", "--peers", "torchvision")
    times = {r["direction"]: r["times_ms"] for r in payload["results"]}
    assert len(times["forward"]["torchvision"]) == 1 and len(times["backward"]["torchvision"]) == 1
    assert len(times["forward"]["roiops"]) == 3
    payload = _tiny_run(monkeypatch, tmp_path, {}, "--repeats", "3", "--peers", "torchvision", "--full")
    times = {r["direction"]: r["times_ms"] for r in payload["results"]}
    assert len(times["forward"]["torchvision"]) == 3 and len(times["backward"]["torchvision"]) == 3


def test_rotation_cost_times_both_ops_on_the_same_boxes():
    args = cli.build_parser().parse_args(["speed", "--rotated", "--repeats", "1", "--warmup", "0"])
    rows = speed.rotation_cost(args, [Case("small", "roi_align_rotated", **SMALL)])
    assert [r["direction"] for r in rows] == ["forward", "backward"]
    assert all(r["ms"]["rotated"] > 0 and r["ms"]["roi_align"] > 0 for r in rows)
    assert rows[0]["max_diff"]["roi_align"] < 1e-5  # angle 0 is roi_align


def test_integration_cost_times_prroi_beside_both_samplings():
    args = cli.build_parser().parse_args(["speed", "--prroi", "--repeats", "1", "--warmup", "0"])
    rows = speed.integration_cost(args, [Case("small", "prroi_pool", **SMALL)])
    assert [r["direction"] for r in rows] == ["forward", "backward"]
    assert set(rows[0]["ratio"]) == {"roi_align sr=2", "roi_align adaptive"}
    # Sampling approximates the integral: close, but not equal.
    assert 0 < rows[0]["max_diff"]["roi_align sr=2"] < 1
