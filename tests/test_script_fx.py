"""TorchScript and torch.fx: every public op and module scripts, survives save/load and gives exactly
the eager result; under FX the ops are leaf calls, like torchvision's, and traced graphs equal eager."""

import io
from collections import OrderedDict

import pytest
import torch
import torch.fx

import roiops
from roiops import compat
from roiops.poolers import MultiScaleRoIAlign

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

X = torch.randn(2, 3, 12, 14, generator=torch.Generator().manual_seed(0))
ROIS = torch.tensor([[0, 1.0, 1.5, 9.0, 7.0], [1, 0.0, 2.0, 13.0, 5.5], [1, 4.0, 4.0, 4.5, 11.0]])
BOX_LIST = [ROIS[:1, 1:], ROIS[1:, 1:]]


def _round_trip(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("boxes", [ROIS, BOX_LIST], ids=["tensor", "list"])
@pytest.mark.parametrize(
    "args",
    [
        ((3, 4), 0.5, 2, True, "avg"),
        (5, 1.0, -1, False, "avg"),
        (2, 0.25, 0, True, "max"),
        ((1, 3), 1.0, 3, False, "max"),
    ],
)
def test_scripted_roi_align_equals_eager(boxes, args):
    output_size, scale, ratio, aligned, mode = args
    scripted = torch.jit.script(roiops.roi_align)
    size = [output_size] * 2 if isinstance(output_size, int) else list(output_size)
    _assert_same(scripted(X, boxes, size, scale, ratio, aligned, mode), roiops.roi_align(X, boxes, *args))


@pytest.mark.parametrize("boxes", [ROIS, BOX_LIST], ids=["tensor", "list"])
def test_scripted_roi_pool_equals_eager(boxes):
    scripted = torch.jit.script(roiops.roi_pool)
    _assert_same(scripted(X, boxes, [3, 2], 0.5), roiops.roi_pool(X, boxes, (3, 2), 0.5))


MODULES = {
    "RoIAlign": lambda: roiops.RoIAlign((3, 4), 0.5, 2, True),
    "RoIAlign_max": lambda: roiops.RoIAlign(3, 0.5, -1, False, pool_mode="max"),
    "RoIPool": lambda: roiops.RoIPool(3, 0.5),
    "detectron2.ROIAlign": lambda: compat.detectron2.ROIAlign(4, 0.5, 0),
    "mmcv.RoIAlign": lambda: compat.mmcv.RoIAlign(4, 0.5, 2, "max"),
    "mmcv.RoIPool": lambda: compat.mmcv.RoIPool(4, 0.5),
}


@pytest.mark.parametrize("boxes", [ROIS, BOX_LIST], ids=["tensor", "list"])
@pytest.mark.parametrize("name", list(MODULES))
def test_scripted_modules_equal_eager_after_save_and_load(name, boxes):
    module = MODULES[name]()
    loaded = _round_trip(torch.jit.script(module))
    _assert_same(loaded(X, boxes), module(X, boxes))


def _fpn(seed=0):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((str(i), torch.randn(2, 4, 64 >> i, 80 >> i, generator=g)) for i in range(4))


def _image_boxes(seed, counts=(5, 9)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in counts:
        xy = torch.rand(k, 2, generator=g) * 200
        out.append(torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 250 + 1], dim=1))
    return out


@pytest.mark.parametrize("options", [{}, dict(aligned=True, pool_mode="max"), dict(op="roi_pool")])
def test_scripted_pooler_equals_eager(options):
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2, **options)
    loaded = _round_trip(torch.jit.script(pooler))
    feats, boxes, shapes = _fpn(), _image_boxes(1), [(256, 320), (250, 300)]
    _assert_same(loaded(feats, boxes, shapes), pooler(feats, boxes, shapes))


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn"])
def test_scripted_torchvision_detector_with_roiops_poolers(builder):
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, builder)(weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=160)
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    if model.roi_heads.has_mask():
        model.roi_heads.mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    model.eval()
    scripted = torch.jit.script(model)
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want = model(images)[0]
        _, got = scripted(images)
    assert want["boxes"].shape[0] > 0
    assert set(got[0]) == set(want)
    for key in want:
        _assert_same(got[0][key], want[key])


# ---- torch.fx ----------------------------------------------------------------------------------


class _CallsByName(torch.nn.Module):
    # `from roiops import roi_align` style: the name is bound in this module, not patched by torch.fx.wrap
    def forward(self, x, rois):
        from roiops import roi_align, roi_pool

        return roi_align(x, rois, 3, 0.5, 2, True) + roi_pool(x, rois, 3, 0.5)


class _CallsByAttribute(torch.nn.Module):
    def forward(self, x, rois):
        return roiops.roi_align(x, rois, 3, 0.5, 0, False, "max") * roiops.roi_pool(x, rois, 3, 0.5)


class _Modules(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.align = roiops.RoIAlign(3, 0.5, 2, True)
        self.pool = roiops.RoIPool(3, 0.5)
        self.mmcv = compat.mmcv.RoIAlign(3, 0.5)

    def forward(self, x, rois):
        return self.align(x, rois) - self.pool(x, rois) + self.mmcv(x, rois)


def _called_functions(graph_module):
    return [n.target for n in graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("model", [_CallsByName(), _CallsByAttribute(), _Modules()], ids=lambda m: type(m).__name__)
def test_fx_symbolic_trace_keeps_ops_as_leaves(model):
    traced = torch.fx.symbolic_trace(model)
    called = _called_functions(traced)
    assert called.count(roiops.roi_pool) == 1
    assert called.count(roiops.roi_align) == (2 if isinstance(model, _Modules) else 1)
    _assert_same(traced(X, ROIS), model(X, ROIS))
    _assert_same(traced(X, ROIS[1:]), model(X, ROIS[1:]))  # another box count: nothing was baked in


class _Detector(torch.nn.Module):
    """Features of a 4-level pyramid from an image batch, pooled per box, then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 5, 2)
        self.head = torch.nn.Linear(4 * 25, 2)

    def forward(self, images, boxes):
        level = self.conv(images)
        feats = OrderedDict()
        for i in range(4):
            feats[str(i)] = level
            level = torch.nn.functional.max_pool2d(level, 2)
        return self.head(self.pooler(feats, boxes, [(64, 80), (64, 80)]).flatten(1))


IMAGES = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(7))


def test_fx_traces_the_pooler_like_torchvision():
    model = _Detector()
    traced = torch.fx.symbolic_trace(model)
    names = [getattr(t, "__name__", "") for t in _called_functions(traced)]
    assert {"_filter_features", "_infer_scales", "_multiscale_pool"} <= set(names)
    boxes = _image_boxes(3)
    _assert_same(traced(IMAGES, boxes), model(IMAGES, boxes))


def test_create_feature_extractor_treats_roiops_as_leaves():
    pytest.importorskip("torchvision")
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _Modules()
    _, eval_nodes = get_graph_node_names(model)
    # each module holds one node, the op itself (a module name as return node selects its output)
    assert {"align.roi_align", "pool.roi_pool", "mmcv.roi_align"} <= set(eval_nodes)
    extractor = create_feature_extractor(model, return_nodes={"align": "aligned", "pool": "pooled"})
    out = extractor(X, ROIS)
    _assert_same(out["aligned"], model.align(X, ROIS))
    _assert_same(out["pooled"], model.pool(X, ROIS))

    # the pooler is one of torchvision's leaf modules (an instance of its MultiScaleRoIAlign)
    detector = _Detector()
    _, eval_nodes = get_graph_node_names(detector)
    assert "pooler" in eval_nodes and not any(n.startswith("pooler.") for n in eval_nodes)
    extractor = create_feature_extractor(detector, return_nodes={"pooler": "pooled", "head": "logits"})
    boxes = _image_boxes(5)
    out = extractor(IMAGES, boxes)
    _assert_same(out["logits"], detector(IMAGES, boxes))
    assert out["pooled"].shape == (14, 4, 5, 5)
