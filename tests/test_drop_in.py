"""Drop-in parity with torchvision where its users depend on it: torchvision's detection
constructors accept roiops' pooler, quantized feature maps, the exception type of a badly shaped
``boxes``, the pooler's repr, and roiops working without torchvision installed."""

import subprocess
import sys
import textwrap

import pytest
import torch

import roiops
from roiops import compat
from roiops.poolers import MultiScaleRoIAlign

torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (none imports beside torch 2.13)")

NAMES = ["0", "1", "2", "3"]


def _backbone():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)


@pytest.mark.parametrize(
    "detector,pool_args",
    [
        ("FasterRCNN", dict(box_roi_pool=7)),
        ("MaskRCNN", dict(box_roi_pool=7, mask_roi_pool=14)),
        ("KeypointRCNN", dict(box_roi_pool=7, keypoint_roi_pool=14)),
    ],
)
@pytest.mark.slow
def test_torchvision_constructors_accept_the_pooler(detector, pool_args):
    from torchvision.models import detection

    num_classes = 2 if detector == "KeypointRCNN" else 3
    poolers = {arg: MultiScaleRoIAlign(NAMES, size, 2) for arg, size in pool_args.items()}
    torch.manual_seed(0)
    model = getattr(detection, detector)(_backbone(), num_classes, min_size=96, max_size=128, **poolers).eval()
    torch.manual_seed(0)
    reference = getattr(detection, detector)(_backbone(), num_classes, min_size=96, max_size=128).eval()
    reference.load_state_dict(model.state_dict())
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        got, want = model(images)[0], reference(images)[0]
    assert got["boxes"].shape[0] > 0
    for key in want:  # torchvision's own poolers (aligned=False) compute the same thing
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)


def test_pooler_is_a_torchvision_pooler_and_keeps_its_repr():
    pooler = MultiScaleRoIAlign(NAMES, 7, 2)
    assert isinstance(pooler, torchvision.ops.MultiScaleRoIAlign)
    assert repr(pooler) == repr(torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2))
    assert repr(MultiScaleRoIAlign(["p2"], (7, 5), 0)) == repr(torchvision.ops.MultiScaleRoIAlign(["p2"], (7, 5), 0))
    extended = MultiScaleRoIAlign(NAMES, 7, 2, aligned=True, pool_mode="max")
    assert repr(extended).endswith("sampling_ratio=2, aligned=True, pool_mode='max')")
    assert repr(MultiScaleRoIAlign(NAMES, 7, 2, op="roi_pool")).endswith("op='roi_pool')")


def test_roiops_imports_and_pools_without_torchvision():
    # sys.modules[name] = None makes every import of that name fail, as if it were not installed
    script = textwrap.dedent("""
        import sys
        sys.modules["torchvision"] = None
        import torch, roiops
        from roiops.poolers import MultiScaleRoIAlign
        assert MultiScaleRoIAlign.__mro__[1] is torch.nn.Module
        pooler = MultiScaleRoIAlign(["0"], 2, 2)
        out = pooler({"0": torch.ones(1, 2, 8, 8)}, [torch.tensor([[0., 0., 16., 16.]])], [(32, 32)])
        assert out.shape == (1, 2, 2, 2) and bool((out == 1).all())
        assert "torchvision" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_roiops_does_not_import_torchvision():
    script = "import sys, roiops; roiops.roi_align; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


# ---- quantized input ---------------------------------------------------------------------------

QX = torch.quantize_per_tensor(
    torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(3)) * 4, 0.05, 3, torch.quint8
)
QROIS = torch.tensor([[0, 1.0, 1.0, 8.0, 7.0], [1, 0.0, 2.0, 11.0, 5.0], [0, 3.5, 0.5, 6.0, 9.5]])


@pytest.mark.parametrize("dtype,zero_point", [(torch.quint8, 3), (torch.qint8, -4), (torch.qint32, 7)])
@pytest.mark.parametrize("boxes", [QROIS, [QROIS[[0, 2], 1:], QROIS[1:2, 1:]]], ids=["tensor", "list"])
@pytest.mark.parametrize("args", [(3, 1.0, 2, True, "avg"), ((2, 4), 0.5, -1, False, "max")], ids=["avg", "max"])
def test_quantized_roi_align_equals_dequantize_pool_quantize(dtype, zero_point, boxes, args):
    x = torch.quantize_per_tensor(QX.dequantize(), 0.05, zero_point, dtype)
    out = roiops.roi_align(x, boxes, *args)
    assert out.dtype == dtype and out.q_scale() == 0.05 and out.q_zero_point() == zero_point
    want = torch.quantize_per_tensor(roiops.roi_align(x.dequantize(), boxes, *args), 0.05, zero_point, dtype)
    torch.testing.assert_close(out.int_repr(), want.int_repr(), rtol=0, atol=0)


def test_quantized_roi_align_within_one_step_of_torchvision():
    # torchvision pools in the quantized domain, wants quantized boxes and one image per batch
    qrois = torch.quantize_per_tensor(QROIS[QROIS[:, 0] == 0], 0.125, 0, torch.quint8)
    for aligned in (False, True):
        ours = roiops.roi_align(QX[:1], qrois, 3, 0.5, 2, aligned)
        theirs = torchvision.ops.roi_align(QX[:1], qrois, 3, 0.5, 2, aligned)
        assert (ours.int_repr().int() - theirs.int_repr().int()).abs().max() <= 1


def test_quantized_roi_pool_and_scripted_roi_align():
    out = roiops.roi_pool(QX, QROIS, 2, 0.5)
    want = torch.quantize_per_tensor(roiops.roi_pool(QX.dequantize(), QROIS, 2, 0.5), 0.05, 3, torch.quint8)
    torch.testing.assert_close(out.int_repr(), want.int_repr(), rtol=0, atol=0)
    scripted = torch.jit.script(roiops.roi_align)
    torch.testing.assert_close(
        scripted(QX, QROIS, [3, 3], 1.0, 2, True).int_repr(),
        roiops.roi_align(QX, QROIS, 3, 1.0, 2, True).int_repr(),
        rtol=0,
        atol=0,
    )


def test_quantized_input_must_be_per_tensor_affine():
    x = QX.dequantize()
    per_channel = torch.quantize_per_channel(
        x, torch.full((3,), 0.1), torch.zeros(3, dtype=torch.long), 1, torch.quint8
    )
    with pytest.raises(TypeError, match=r"roi_align: a quantized input must be per-tensor affine.*per_channel"):
        roiops.roi_align(per_channel, QROIS, 2)
    with pytest.raises(TypeError, match="boxes must have the dtype"):
        roiops.roi_align(QX, QROIS.long(), 2)


# ---- the exception for a badly shaped boxes ----------------------------------------------------

X = torch.randn(2, 3, 8, 8)
BAD_BOXES = {
    "K4": torch.zeros(3, 4),
    "1d": torch.zeros(5),
    "3d": torch.zeros(1, 3, 5),
    "list_of_K5": [torch.zeros(2, 5)],
}
CALLS = {
    "roi_align": lambda b: roiops.roi_align(X, b, 2),
    "roi_pool": lambda b: roiops.roi_pool(X, b, 2),
    "RoIAlign": lambda b: roiops.RoIAlign(2)(X, b),
    "detectron2.ROIAlign": lambda b: compat.detectron2.ROIAlign(2, 1.0, 0)(X, b),
    "mmcv.RoIPool": lambda b: compat.mmcv.RoIPool(2)(X, b),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("bad", list(BAD_BOXES))
def test_badly_shaped_boxes_raise_what_torchvision_raises_too(call, bad):
    boxes = BAD_BOXES[bad]
    if bad != "1d":  # on a 1-D tensor torchvision fails with an IndexError
        with pytest.raises(AssertionError):
            torchvision.ops.roi_align(X, boxes, 2)
    with pytest.raises(AssertionError) as info:
        CALLS[call](boxes)
    assert isinstance(info.value, ValueError)
    assert "boxes" in str(info.value) or "rois" in str(info.value)


def test_pooler_boxes_error_is_an_assertion_error_too():
    pooler = MultiScaleRoIAlign(["0"], 2, 2)
    with pytest.raises(AssertionError, match=r"boxes\[0\]"):
        pooler({"0": X}, [torch.zeros(2, 5)], [(8, 8)])
