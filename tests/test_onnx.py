"""ONNX export with both exporters of torch.onnx.export, checked by running the file in ONNX Runtime
against roiops in PyTorch, with box counts other than the example's (the box axis stays dynamic)."""

import pytest
import torch

import roiops
from roiops._onnx import (
    MAX_MODE_MESSAGE,
    MULTILEVEL_MESSAGE,
    ONNX_MIN_OPSET,
    PRROI_MESSAGE,
    ROTATED_MESSAGE,
    position_sensitive_message,
)
from roiops.poolers import MultiScaleRoIAlign

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::torch.jit.TracerWarning"
)

EXPORTERS = ["dynamo", "torchscript"]
X = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))


def _boxes(count, seed, batch_size=2, extent=40.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * extent - 4  # some boxes stick out of the map
    wh = torch.rand(count, 2, generator=g) * extent
    index = torch.randint(0, batch_size, (count, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)


def _export(model, example, path, exporter, dynamic):
    """dynamic: for each input, the list of its dynamic axes."""
    names = [f"in{i}" for i in range(len(example))]
    if exporter == "dynamo":
        shapes = tuple({a: torch.export.Dim.DYNAMIC for a in axes} or None for axes in dynamic)
        torch.onnx.export(model, example, path, dynamo=True, dynamic_shapes=shapes, input_names=names)
    else:
        axes = {n: list(a) for n, a in zip(names, dynamic) if a}
        torch.onnx.export(
            model, example, path, dynamo=False, opset_version=ONNX_MIN_OPSET, input_names=names, dynamic_axes=axes
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, inputs):
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


class _Op(torch.nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x, rois):
        return self.fn(x, rois, **self.kwargs)


class _OpOnBoxList(_Op):
    def forward(self, x, boxes0, boxes1):
        return self.fn(x, [boxes0, boxes1], **self.kwargs)


ALIGN_CASES = {
    "aligned_fixed": dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True),
    "legacy_fixed": dict(output_size=5, spatial_scale=0.5, sampling_ratio=3, aligned=False),
    "aligned_adaptive": dict(output_size=4, spatial_scale=0.5, sampling_ratio=0, aligned=True),
    "legacy_adaptive": dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=-1, aligned=False),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", list(ALIGN_CASES))
def test_roi_align_exports_to_onnx_roialign(tmp_path, exporter, case):
    model = _Op(roiops.roi_align, **ALIGN_CASES[case])
    session = _export(model, (X, _boxes(4, 0)), tmp_path / "m.onnx", exporter, [[], [0]])
    assert [n.op_type for n in _onnx_nodes(tmp_path / "m.onnx")].count("RoiAlign") == 1
    for count in (1, 9, 33):
        rois = _boxes(count, count)
        torch.testing.assert_close(_run(session, (X, rois)), model(X, rois), rtol=0, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_roi_pool_exports_to_onnx_maxroipool(tmp_path, exporter):
    model = _Op(roiops.roi_pool, output_size=(3, 2), spatial_scale=0.5)
    session = _export(model, (X, _boxes(4, 0)), tmp_path / "m.onnx", exporter, [[], [0]])
    assert "MaxRoiPool" in [n.op_type for n in _onnx_nodes(tmp_path / "m.onnx")]
    for count in (2, 17):
        rois = _boxes(count, 100 + count)
        torch.testing.assert_close(_run(session, (X, rois)), model(X, rois), rtol=0, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_list_of_boxes_exports(tmp_path, exporter, op):
    kwargs = dict(output_size=3, spatial_scale=0.5) | (
        dict(sampling_ratio=0, aligned=True) if op == "roi_align" else {}
    )
    model = _OpOnBoxList(getattr(roiops, op), **kwargs)
    example = (X, _boxes(3, 1)[:, 1:], _boxes(2, 2)[:, 1:])
    session = _export(model, example, tmp_path / "m.onnx", exporter, [[], [0], [0]])
    for counts in ((1, 6), (12, 4)):
        inputs = (X, _boxes(counts[0], 3)[:, 1:], _boxes(counts[1], 4)[:, 1:])
        torch.testing.assert_close(_run(session, inputs), model(*inputs), rtol=0, atol=1e-5)


def _error_chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_max_mode_export_is_refused_with_the_reason(tmp_path, exporter):
    model = _Op(roiops.roi_align, output_size=2, sampling_ratio=2, pool_mode="max")
    with pytest.raises(Exception) as info:
        _export(model, (X, _boxes(3, 0)), tmp_path / "m.onnx", exporter, [[], [0]])
    assert any(MAX_MODE_MESSAGE in str(e) for e in _error_chain(info.value)), str(info.value)
    assert not (tmp_path / "m.onnx").exists()


_REFUSED = {
    "roi_align_rotated": (
        _Op(roiops.roi_align_rotated, output_size=2, sampling_ratio=2),
        torch.tensor([[0, 8.0, 9.0, 6.0, 4.0, 30.0], [1, 12.0, 5.0, 3.0, 7.0, -45.0]]),
        ROTATED_MESSAGE,
    ),
    "prroi_pool": (_Op(roiops.prroi_pool, output_size=2), _boxes(3, 0), PRROI_MESSAGE),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("op", sorted(_REFUSED))
def test_ops_without_an_onnx_equivalent_are_refused_with_the_reason(tmp_path, exporter, op):
    model, rois, message = _REFUSED[op]
    with pytest.raises(Exception) as info:
        _export(model, (X, rois), tmp_path / "m.onnx", exporter, [[], [0]])
    assert any(message in str(e) for e in _error_chain(info.value)), str(info.value)
    assert not (tmp_path / "m.onnx").exists()


class _Pooler(torch.nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.pooler = MultiScaleRoIAlign(["0", "1", "2"], 7, 2, **options)

    def forward(self, f0, f1, f2, boxes):
        return self.pooler({"0": f0, "1": f1, "2": f2}, [boxes], [(128, 160)])


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("options", [dict(aligned=True), dict(op="roi_pool")], ids=["align", "pool"])
def test_multiscale_pooler_exports(tmp_path, exporter, options):
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(1, 4, 32 >> i, 40 >> i, generator=g) for i in range(3)]
    model = _Pooler(**options)
    session = _export(model, (*feats, _boxes(6, 0, 1, 120)[:, 1:]), tmp_path / "m.onnx", exporter, [[], [], [], [0]])
    for count in (3, 21):
        boxes = _boxes(count, count, 1, 120)[:, 1:]
        torch.testing.assert_close(_run(session, (*feats, boxes)), model(*feats, boxes), rtol=0, atol=1e-5)
    # One standard pooling node per level, not the one-call op.
    node = "MaxRoiPool" if options.get("op") == "roi_pool" else "RoiAlign"
    assert [n.op_type for n in _onnx_nodes(tmp_path / "m.onnx")].count(node) == 3


class _MultilevelOp(torch.nn.Module):
    def forward(self, f0, f1, rois, levels):
        return torch.ops.roiops.multilevel_pool([f0, f1], rois, levels, [0.25, 0.125], 2, 2, 2, True, "avg")[0]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_multilevel_op_export_is_refused_with_the_way_out(tmp_path, exporter):
    feats = [torch.randn(1, 2, 16, 16), torch.randn(1, 2, 8, 8)]
    rois, levels = _boxes(4, 1, 1, 60), torch.tensor([0, 1, 1, 0])
    with pytest.raises(Exception) as info:
        _export(_MultilevelOp(), (*feats, rois, levels), tmp_path / "m.onnx", exporter, [[], [], [0], [0]])
    assert any(MULTILEVEL_MESSAGE in str(e) for e in _error_chain(info.value)), str(info.value)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_torchvision_mask_rcnn_with_roiops_poolers_runs_in_onnx_runtime(tmp_path):
    # torch.onnx's dynamo exporter cannot export torchvision's detectors themselves on torch 2.14
    # (a data-dependent guard in torchvision's batched_nms, with torchvision's own poolers too), so
    # the whole model goes through the TorchScript-based exporter, as torchvision documents.
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    names = ["0", "1", "2", "3"]
    model = MaskRCNN(
        resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5),
        num_classes=3,
        min_size=128,
        max_size=160,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
        box_score_thresh=0.0,
        box_detections_per_img=20,
    ).eval()
    g = torch.Generator().manual_seed(1)
    example, images = torch.rand(3, 128, 160, generator=g), [torch.rand(3, 128, 160, generator=g) for _ in range(2)]
    path = tmp_path / "maskrcnn.onnx"
    torch.onnx.export(
        model,
        ([example],),
        path,
        dynamo=False,
        opset_version=ONNX_MIN_OPSET,
        input_names=["image"],
        output_names=["boxes", "labels", "scores", "masks"],
        dynamic_axes={"image": [1, 2], "boxes": [0], "labels": [0], "scores": [0], "masks": [0]},
    )
    assert {"RoiAlign"} <= {n.op_type for n in _onnx_nodes(path)}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for image in images:
        with torch.no_grad():
            want = model([image])[0]
        got = dict(zip(["boxes", "labels", "scores", "masks"], session.run(None, {"image": image.numpy()})))
        assert want["boxes"].shape[0] > 0
        torch.testing.assert_close(torch.from_numpy(got["labels"]), want["labels"], rtol=0, atol=0)
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(torch.from_numpy(got[key]), want[key], rtol=1e-4, atol=1e-4)


def _onnx_nodes(path):
    import onnx

    return onnx.load(str(path)).graph.node


def test_dynamo_rules_registered_when_onnxscript_is_first_imported(tmp_path):
    # import roiops does not pay for onnxscript (~0.7 s); its first import registers the rules
    script = f"""
import sys, warnings
warnings.filterwarnings("ignore")
import torch, roiops
assert "onnxscript" not in sys.modules
class M(torch.nn.Module):
    def forward(self, x, rois):
        return roiops.roi_align(x, rois, 2, 1.0, 2, True)
x, rois = torch.randn(1, 2, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
torch.onnx.export(M(), (x, rois), r"{tmp_path / "m.onnx"}", dynamo=True)
print("ok")
"""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert "RoiAlign" in [n.op_type for n in _onnx_nodes(tmp_path / "m.onnx")]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("op", ["ps_roi_align", "ps_roi_pool"])
def test_position_sensitive_export_is_refused_with_the_reason(tmp_path, exporter, op):
    model = _Op(getattr(roiops, op), output_size=2, spatial_scale=1.0)
    x = torch.randn(2, 8, 12, 12)
    with pytest.raises(Exception) as info:
        _export(model, (x, _boxes(3, 0)), tmp_path / "m.onnx", exporter, [[], [0]])
    message = position_sensitive_message(op)
    assert any(message in str(e) for e in _error_chain(info.value)), str(info.value)
    assert not (tmp_path / "m.onnx").exists()
