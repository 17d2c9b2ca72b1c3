"""roiops: exact, fast and safe RoIAlign / RoIPool operators for PyTorch.

import roiops
pooled = roiops.roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C, _onnx, compat, models
from ._ops import deterministic_backward, set_deterministic_backward, set_device_box_checks
from ._validation import BoxesShapeError
from .paste import paste_masks
from .roi_align import RoIAlign, roi_align
from .roi_pool import RoIPool, roi_pool

__version__ = _C.__version__
_onnx.register()


def __getattr__(name: str):
    # MultiScaleRoIAlign subclasses torchvision's when torchvision is installed; importing
    # torchvision takes ~1 s, so it happens on first use of the pooler, not on `import roiops`.
    if name == "MultiScaleRoIAlign":
        from .poolers import MultiScaleRoIAlign

        return MultiScaleRoIAlign
    raise AttributeError(f"module 'roiops' has no attribute {name!r}")


def build_info() -> dict:
    """How the compiled extension was built: version, whether CUDA kernels are in it, its ops."""
    return {"version": _C.__version__, "with_cuda": bool(_C.with_cuda), "ops": list(_C.ops)}


__all__ = [
    "roi_align",
    "roi_pool",
    "RoIAlign",
    "RoIPool",
    "MultiScaleRoIAlign",
    "BoxesShapeError",
    "paste_masks",
    "compat",
    "models",
    "build_info",
    "deterministic_backward",
    "set_deterministic_backward",
    "set_device_box_checks",
    "__version__",
]
