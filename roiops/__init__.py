"""roiops: exact, fast and safe RoIAlign / RoIPool operators for PyTorch.

import roiops
pooled = roiops.roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
"""

from . import _library, _onnx
from ._library import _C
from ._ops import deterministic_backward, device_box_checks, set_deterministic_backward, set_device_box_checks
from ._validation import BoxesShapeError, KernelValueError
from .paste import paste_masks
from .position_sensitive import PSRoIAlign, PSRoIPool, ps_roi_align, ps_roi_pool
from .prroi_pool import PrRoIPool, prroi_pool
from .roi_align import RoIAlign, roi_align
from .roi_align_rotated import RoIAlignRotated, roi_align_rotated
from .roi_pool import RoIPool, roi_pool

__version__ = _C.__version__
_onnx.register()


def __getattr__(name: str):
    # What the ops do not need loads on first use: MultiScaleRoIAlign (it subclasses torchvision's
    # pooler, and importing torchvision takes ~1 s), the adapters and the models.
    if name == "MultiScaleRoIAlign":
        from .poolers import MultiScaleRoIAlign

        return MultiScaleRoIAlign
    if name in ("compat", "models"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'roiops' has no attribute {name!r}")


def build_info() -> dict:
    """How the compiled extension was built: version, whether CUDA kernels are in it, its ops."""
    return {"version": _C.__version__, "with_cuda": bool(_C.with_cuda), "ops": _library.registered_ops()}


__all__ = [
    "roi_align",
    "roi_pool",
    "roi_align_rotated",
    "RoIAlign",
    "RoIPool",
    "RoIAlignRotated",
    "ps_roi_align",
    "ps_roi_pool",
    "PSRoIAlign",
    "PSRoIPool",
    "prroi_pool",
    "PrRoIPool",
    "MultiScaleRoIAlign",
    "BoxesShapeError",
    "KernelValueError",
    "paste_masks",
    "compat",
    "models",
    "build_info",
    "deterministic_backward",
    "set_deterministic_backward",
    "device_box_checks",
    "set_device_box_checks",
    "__version__",
]
