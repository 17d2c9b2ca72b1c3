"""multilevel_pool: FPN pooling of every level in one op call (csrc/ops/multilevel_pool), and
MultiScaleRoIAlign built on it. The oracle is the per-level composition of the single-level ops (the
pooler's TorchScript/ONNX path) and, through it, the pure-PyTorch reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import roiops
from roiops import reference
from roiops.poolers import MultiScaleRoIAlign, _pool_per_level, assign_levels

from devices import ALL_DEVICES, CPU, CUDA_DEVICES
from helpers import make_input
from test_properties import examples

MODES = ["avg", "max", "roi_pool"]
SIZES = [(16, 20), (8, 10), (4, 5)]
SCALES = [0.5, 0.25, 0.125]


def _pyramid(dtype=torch.float64, layout="contiguous", seed=0, channels=3):
    return [make_input((2, channels, h, w), dtype, layout=layout, seed=seed + i) for i, (h, w) in enumerate(SIZES)]


def _boxes(n=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 40 - 4
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 36 + 0.5
    batch = torch.randint(0, 2, (n, 1), generator=g).to(dtype)
    return torch.cat([batch, xy, xy + wh], dim=1)


def _levels(rois, seed=0):
    return torch.randint(0, len(SIZES), (rois.shape[0],), generator=torch.Generator().manual_seed(seed))


def _per_level(features, rois, levels, mode, sampling_ratio=2, aligned=True, size=(3, 4)):
    op = "roi_pool" if mode == "roi_pool" else "roi_align"
    pool_mode = "max" if mode == "max" else "avg"
    return _pool_per_level(features, rois, levels, SCALES, list(size), sampling_ratio, aligned, pool_mode, op)


@pytest.fixture(params=ALL_DEVICES)
def dev(request):
    return request.param


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_equals_the_per_level_composition_forward_and_backward(dev, mode, layout):
    features = _pyramid(layout=layout, seed=1)
    rois = _boxes(seed=2)
    levels = _levels(rois, seed=3)
    expected = _per_level(features, rois, levels, mode)
    out, argmax = dev.ops.multilevel_pool(features, rois, levels, SCALES, 3, 4, 2, True, mode)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(4))
    with roiops.deterministic_backward(True):
        leaves = [f.detach().requires_grad_(True) for f in features]
        (_per_level(leaves, rois, levels, mode) * grad).sum().backward()
    sizes = ([f.shape[2] for f in features], [f.shape[3] for f in features])
    grads = dev.ops._multilevel_pool_backward(
        grad, rois, levels, argmax, SCALES, 3, 4, 2, 3, *sizes, 2, True, mode, True
    )
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_and_opcheck(mode):
    features = [f.requires_grad_(True) for f in _pyramid(seed=5)]
    rois = _boxes(8, seed=6)
    levels = _levels(rois, seed=7)
    call = lambda *maps: torch.ops.roiops.multilevel_pool(list(maps), rois, levels, SCALES, 2, 3, 2, True, mode)[0]
    assert torch.autograd.gradcheck(call, features)
    torch.library.opcheck(
        torch.ops.roiops.multilevel_pool, ([f.detach() for f in features], rois, levels, SCALES, 2, 3, 2, True, mode)
    )


def test_reference_per_level():
    features = _pyramid(seed=8)
    rois = _boxes(seed=9)
    levels = _levels(rois, seed=10)
    out, _ = torch.ops.roiops.multilevel_pool(features, rois, levels, SCALES, 3, 4, -1, False, "avg")
    for k in range(rois.shape[0]):
        lv = int(levels[k])
        ref = reference.roi_align_reference(features[lv], rois[k : k + 1], (3, 4), SCALES[lv], -1, False, "avg")
        torch.testing.assert_close(out[k : k + 1], ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiles_without_graph_break_and_autocast(dtype):
    features = _pyramid(torch.float32, seed=11)
    rois = _boxes(seed=12, dtype=torch.float32)
    levels = _levels(rois, seed=13)
    call = lambda fs: torch.ops.roiops.multilevel_pool(fs, rois, levels, SCALES, 3, 3, 2, True, "avg")[0]
    torch.testing.assert_close(torch.compile(call, fullgraph=True)(features), call(features))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call([f.to(dtype) for f in features])
    assert out.dtype == dtype


def test_level_out_of_range():
    features = _pyramid(seed=14)
    rois = _boxes(4, seed=15)
    levels = torch.tensor([0, 1, 3, 2])
    with pytest.raises(RuntimeError, match=r"the level of box 2 \(levels\[2\]\) must be in \[0, 3\), but it is 3"):
        torch.ops.roiops.multilevel_pool(features, rois, levels, SCALES, 2, 2, 2, True, "avg")
    for dev in [p.values[0] for p in CUDA_DEVICES if p.values[0] is not None and p.values[0].emulated]:
        out, _ = dev.ops.multilevel_pool(features, rois, levels, SCALES, 2, 2, 2, True, "max")
        assert out[2].isnan().all() and not out[[0, 1, 3]].isnan().any()  # harmless: NaN, never a crash


HOSTILE_COORDINATES = (0.0, 3.5, -7.25, 19.0, 1e6, -1e6, 1e30, float("nan"), float("inf"), float("-inf"))


@st.composite
def hostile_multilevel_cases(draw):
    """A pyramid with NaN / inf in its maps, boxes with hostile coordinates and batch indices, and levels
    that may be out of range."""
    features = _pyramid(torch.float64, draw(st.sampled_from(["contiguous", "channels_last"])), draw(st.integers(0, 99)))
    for f in features:
        density = draw(st.sampled_from((0.0, 0.1, 1.0)))
        hit = torch.rand(f.shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) < density
        f[hit] = draw(st.sampled_from((float("nan"), float("inf"), float("-inf"))))
    k = draw(st.integers(1, 6))
    coordinate = st.one_of(st.floats(-8, 40), st.sampled_from(HOSTILE_COORDINATES))
    rows = [
        [draw(st.sampled_from((0.0, 1.0, 1.0, 0.0, 2.0, -1.0, 0.5, float("nan"))))]
        + [draw(coordinate) for _ in range(4)]
        for _ in range(k)
    ]
    levels = torch.tensor([draw(st.sampled_from((0, 1, 2, 2, 1, 0, 3, -1))) for _ in range(k)])
    return features, torch.tensor(rows, dtype=torch.float64), levels, draw(st.sampled_from(MODES))


def _usable(rois, levels, batch=2, num_levels=len(SIZES)):
    """The boxes a kernel pools: finite, an integral batch index in range, a level in range."""
    b = rois[:, 0]
    return (
        rois.isfinite().all(dim=1) & (b >= 0) & (b < batch) & (b == b.floor()) & (levels >= 0) & (levels < num_levels)
    )


@pytest.mark.parametrize("dev", ALL_DEVICES)
@examples(25)
@given(case=hostile_multilevel_cases())
def test_hostile_values_match_the_composition_or_are_harmless(dev, case):
    # CPU: the op raises where the per-level composition raises, and equals it elsewhere (forward and
    # backward). CUDA (sync-free): a box the CPU refuses gives a NaN row and no gradient; the others
    # equal the composition of the usable boxes.
    features, rois, levels, mode = case
    usable = _usable(rois, levels)
    sizes = ([f.shape[2] for f in features], [f.shape[3] for f in features])
    expected_rois, expected_levels = (rois, levels) if dev is CPU else (rois[usable], levels[usable])
    if dev is CPU and not ((levels >= 0) & (levels < len(SIZES))).all():
        with pytest.raises(RuntimeError, match="level|box"):  # (the composition just skips such boxes)
            torch.ops.roiops.multilevel_pool(features, rois, levels, SCALES, 2, 3, 2, True, mode)
        return
    try:
        leaves = [f.detach().requires_grad_(True) for f in features]
        with roiops.deterministic_backward(True):
            expected = _per_level(leaves, expected_rois, expected_levels, mode, size=(2, 3))
            grad = torch.randn(expected.shape, dtype=expected.dtype, generator=torch.Generator().manual_seed(1))
            if expected.numel():
                (expected * grad).sum().backward()
    except (RuntimeError, ValueError):
        assert dev is CPU
        with pytest.raises(RuntimeError):
            torch.ops.roiops.multilevel_pool(features, rois, levels, SCALES, 2, 3, 2, True, mode)
        return
    out, argmax = dev.ops.multilevel_pool(features, rois, levels, SCALES, 2, 3, 2, True, mode)
    assert out[~usable].isnan().all()
    torch.testing.assert_close(out[usable], expected.detach(), rtol=0, atol=0, equal_nan=True)
    full_grad = torch.zeros(out.shape, dtype=out.dtype)
    full_grad[usable] = grad
    grads = dev.ops._multilevel_pool_backward(
        full_grad, rois, levels, argmax, SCALES, 2, 3, 2, 3, *sizes, 2, True, mode, True
    )
    for got, leaf in zip(grads, leaves):
        want = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("dev", [p for p in CUDA_DEVICES if "emulated" in str(p.id)])
def test_no_host_sync_and_capturable(dev):
    features = _pyramid(torch.float32, seed=16)
    rois = _boxes(seed=17, dtype=torch.float32)
    levels = _levels(rois, seed=18)
    before = dev.ops.host_sync_count()
    out, argmax = dev.ops.multilevel_pool(features, rois, levels, SCALES, 3, 3, 2, True, "max")
    sizes = ([f.shape[2] for f in features], [f.shape[3] for f in features])
    dev.ops._multilevel_pool_backward(
        torch.ones_like(out), rois, levels, argmax, SCALES, 3, 3, 2, 3, *sizes, 2, True, "max", True
    )
    assert dev.ops.host_sync_count() == before
    previous = dev.ops.set_capturing(True)
    try:
        captured, _ = dev.ops.multilevel_pool(features, rois, levels, SCALES, 3, 3, 2, True, "max")
    finally:
        dev.ops.set_capturing(previous)
    assert torch.equal(captured, out)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def _fpn_inputs(seed=19, n=40):
    names = ["p2", "p3", "p4"]
    feats = {
        name: make_input((2, 4, 64 // 2**i, 64 // 2**i), torch.float32, seed=seed + i) for i, name in enumerate(names)
    }
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * 200
        wh = torch.rand(n, 2, generator=g) ** 2 * 250 + 4
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return names, feats, boxes, [(256, 256), (240, 250)]


def test_pooler_makes_one_op_call_forward_and_backward_without_nonzero_or_item():
    names, feats, boxes, shapes = _fpn_inputs()
    pooler = MultiScaleRoIAlign(names, 7, 2)
    leaves = {k: v.requires_grad_(True) for k, v in feats.items()}
    with _CountOps() as counter:
        out = pooler(leaves, boxes, shapes)
        out.sum().backward()
    calls = counter.names
    assert calls.count("roiops::multilevel_pool") == 1 and calls.count("roiops::_multilevel_pool_backward") == 1
    assert not [c for c in calls if c.startswith("roiops::roi_") or "nonzero" in c or "_local_scalar_dense" in c]


@pytest.mark.parametrize("rule", ["torchvision", "detectron2", "mmdet"])
def test_level_rules_follow_each_librarys_formula(rule):
    g = torch.Generator().manual_seed(20)
    xy = torch.rand(500, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(500, 2, generator=g) ** 3 * 900 + 0.5], dim=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    k_min, k_max = 2, 5
    # Each library's formula, as it writes it (not roiops' code).
    if rule == "torchvision":
        lvl = torch.floor(4 + torch.log2(torch.sqrt(area) / 224) + torch.tensor(1e-6, dtype=area.dtype))
        got = assign_levels(boxes, k_min, k_max, 224.0, 4)
    elif rule == "detectron2":
        lvl = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8))
        got = assign_levels(boxes, k_min, k_max, 224.0, 4, rule="detectron2")
    else:
        lvl = torch.floor(torch.log2(torch.sqrt(area) / 56 + 1e-6)) + k_min  # mmdet counts from the first level
        got = assign_levels(boxes, k_min, k_max, 56.0, 4, rule="mmdet")
    expected = (lvl.clamp(k_min, k_max) - k_min).long()
    assert torch.equal(got, expected)
    assert len(set(expected.tolist())) == 4  # (the boxes span every level)


@pytest.mark.parametrize("rule", ["detectron2", "mmdet"])
def test_pooler_with_another_rule_equals_its_composition(rule):
    names, feats, boxes, shapes = _fpn_inputs(seed=21)
    pooler = MultiScaleRoIAlign(
        names, 5, 2, aligned=True, level_rule=rule, canonical_scale=56 if rule == "mmdet" else 224
    )
    out = pooler(feats, boxes, shapes)
    features = [feats[n] for n in names]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])
    levels = pooler.levels(boxes, shapes, feats)
    expected = _pool_per_level(features, rois, levels, pooler.scales, [5, 5], 2, True, "avg", "roi_align")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_scripted_pooler_matches_eager():
    names, feats, boxes, shapes = _fpn_inputs(seed=22)
    pooler = MultiScaleRoIAlign(names, 7, 2)
    scripted = torch.jit.script(pooler)
    torch.testing.assert_close(scripted(feats, boxes, shapes), pooler(feats, boxes, shapes), rtol=0, atol=0)
