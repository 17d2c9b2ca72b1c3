from typing import List

import torch
from torch import Tensor

from .._validation import BoxesArg


def rois_like(rois: BoxesArg, input: Tensor) -> BoxesArg:
    """detectron2 and mmcv cast rois to the features' dtype; roiops does so only for float32/float64
    features: boxes of a half-precision map stay as they are (under autocast the kernels run in
    float32 anyway, and a half box loses whole pixels above 512 px: see roiops/_ops.py, autocast)."""
    if input.dtype != torch.float32 and input.dtype != torch.float64:
        return rois
    if isinstance(rois, Tensor):
        return rois.to(input.dtype)
    cast: List[Tensor] = [r.to(input.dtype) for r in rois]
    return cast
