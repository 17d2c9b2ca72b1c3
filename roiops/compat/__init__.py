"""Adapters with the names, argument orders and defaults of other libraries' RoI modules, running on
roiops kernels (no detectron2 or mmcv code or install needed). The module says whose conventions
an adapter follows:

    from roiops.compat.detectron2 import ROIAlign        # detectron2.layers.ROIAlign
    from roiops.compat.mmcv import RoIAlign, RoIPool     # mmcv.ops.RoIAlign / mmcv.ops.RoIPool

Both follow the operator definition in docs/semantics.md (which detectron2 and mmcv share):
``aligned=True`` shifts boxes by half a pixel, ``sampling_ratio <= 0`` samples adaptively.
"""

import warnings

from . import detectron2, mmcv

__all__ = ["detectron2", "mmcv"]

# roiops 0.1 exported the adapters from roiops.compat itself; those names keep working, with a warning.
_MOVED = {"ROIAlign": detectron2, "RoIAlign": mmcv, "RoIPool": mmcv, "roi_align": mmcv, "roi_pool": mmcv}


def __getattr__(name: str):
    if name in _MOVED:
        home = _MOVED[name]
        warnings.warn(f"roiops.compat.{name} moved to {home.__name__}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(home, name)
    raise AttributeError(f"module 'roiops.compat' has no attribute {name!r}")
