"""Argument checks and conversions of the public API. Each error names the argument, what was
expected and what was given.

Two kinds of code live here:
- eager-only checks of Python-level arguments (types, bool vs int, the shape of boxes). The public
  functions call them under ``if not torch.jit.is_scripting()``, so TorchScript never compiles them
  (a scripted call relies on the compiled kernels' checks, which see the same rules);
- ``boxes_to_rois``, written in the TorchScript subset, since scripted code converts boxes too.

Checks that need tensor values (finite coordinates, batch indices in range) run in the compiled
kernels, so that torch.compile and torch.export trace these functions without breaks; their errors
reach eager callers as KernelValueError (see call_kernel).
"""

import math
import numbers
from typing import List, Tuple, Union

import torch
from torch import Tensor

from ._library import _C

BoxesArg = Union[Tensor, List[Tensor]]

POOL_MODES = ("avg", "max")
# The columns of a row of rois, by its width (the compiled checks' words, csrc/common/checks.cpp).
BOX_COLUMNS = {
    5: "(batch index, x1, y1, x2, y2)",
    6: "(batch index, centre x, centre y, width, height, angle)",
}
# The limits of the compiled checks (csrc/common/limits.h), checked here too so that modules refuse
# them when constructed.
MAX_POOLED_SIZE = _C.limits["max_pooled_size"]
MAX_SAMPLING_RATIO = math.isqrt(_C.limits["max_samples_per_bin"])


class KernelValueError(ValueError, RuntimeError):
    """A bad value that only the compiled kernels can see (a box coordinate that is not finite, a batch
    index out of range, an adaptive sampling grid over the limit, a spatial_scale out of the compute
    type's range). The kernels raise RuntimeError, the one exception the LibTorch stable ABI carries;
    roiops' functions re-raise it in eager calls as this class, which is also the ValueError earlier
    releases raised. Direct op calls and compiled graphs raise the RuntimeError, with the same message.
    Catch RuntimeError (or this class) to handle both."""


def call_kernel(op: str, fn, *args):
    """fn(*args), with the kernel's own value errors (messages that start with the op's name) raised as
    KernelValueError. Eager only (TorchScript has no try/except)."""
    try:
        return fn(*args)
    except RuntimeError as e:
        if str(e).startswith(f"{op}: "):
            raise KernelValueError(str(e)) from None
        raise


class BoxesShapeError(ValueError, AssertionError):
    """A wrongly shaped ``boxes`` argument. A ValueError, and also an AssertionError, which is what
    torchvision's RoI ops raise for it, so code written against torchvision keeps catching it."""


def check_input(op: str, input) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a Tensor [N, C, H, W], but got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(
            f"{op}: input must be 4-D [N, C, H, W], but got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    if not (input.is_floating_point() or input.is_quantized):
        raise TypeError(f"{op}: input must be a floating-point tensor (or a quantized one), but got {input.dtype}")


def check_boxes(op: str, boxes, input: Tensor, width: int = 5) -> None:
    """Type, shape, dtype and device of ``boxes``: Tensor[K, width] (a batch index, then a box) or a
    list/tuple of Tensor[L, width - 1] (the boxes of each image)."""
    columns = BOX_COLUMNS[width]
    per_image = "(" + columns[len("(batch index, ") :]
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != width:
            raise BoxesShapeError(
                f"{op}: boxes must be a Tensor[K, {width}] {columns} or a list of Tensor[L, {width - 1}], "
                f"but got a tensor of shape {tuple(boxes.shape)}"
            )
        _check_like_input(op, "boxes", boxes, input)
    elif isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor):
                raise TypeError(f"{op}: boxes[{i}] must be a Tensor[L, {width - 1}], but got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != width - 1:
                raise BoxesShapeError(
                    f"{op}: boxes[{i}] must be a Tensor[L, {width - 1}] {per_image}, but got shape {tuple(b.shape)}"
                )
            _check_like_input(op, f"boxes[{i}]", b, input)
    else:
        raise TypeError(
            f"{op}: boxes must be a Tensor[K, {width}] or a list of Tensor[L, {width - 1}], "
            f"but got {type(boxes).__name__}"
        )


def _check_like_input(op: str, name: str, t: Tensor, input: Tensor) -> None:
    # Under autocast the dtypes may differ: the autocast kernels cast both to float32. A quantized
    # input takes float boxes (or quantized ones, as torchvision's quantized roi_align does).
    if input.is_quantized:
        ok = t.is_floating_point() or t.is_quantized
    else:
        ok = t.dtype == input.dtype or torch.is_autocast_enabled(input.device.type)
    if not ok:
        raise TypeError(f"{op}: {name} must have the dtype of input ({input.dtype}), but got {t.dtype}")
    if t.device != input.device:
        raise ValueError(f"{op}: {name} must be on the device of input ({input.device}), but is on {t.device}")


def boxes_to_rois(boxes: BoxesArg, input: Tensor, width: int = 5) -> Tensor:
    """Boxes as one Tensor[K, width] (batch index, then the box: x1, y1, x2, y2 for width 5).
    TorchScript-compatible."""
    if isinstance(boxes, Tensor):
        return boxes
    if len(boxes) == 0:
        return torch.zeros(
            (0, width), dtype=input.dtype if input.is_floating_point() else torch.float32, device=input.device
        )
    index = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(index, dim=0), torch.cat(boxes, dim=0)], dim=1)


def output_size_pair(op: str, output_size) -> Tuple[int, int]:
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif (
        isinstance(output_size, (list, tuple))
        and len(output_size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size)
    ):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{op}: output_size must be an int or a pair of ints (h, w), but got {output_size!r}")
    if not (0 < pair[0] <= MAX_POOLED_SIZE and 0 < pair[1] <= MAX_POOLED_SIZE):
        raise ValueError(f"{op}: output_size must be positive (and at most {MAX_POOLED_SIZE}), but got {output_size!r}")
    return pair


def check_spatial_scale(op: str, spatial_scale) -> float:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"{op}: spatial_scale must be a float, but got {spatial_scale!r}")
    value = float(spatial_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{op}: spatial_scale must be a positive finite number, but got {spatial_scale!r}")
    return value


def check_sampling_ratio(op: str, sampling_ratio) -> int:
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise TypeError(f"{op}: sampling_ratio must be an int (<= 0 for adaptive sampling), but got {sampling_ratio!r}")
    if sampling_ratio > MAX_SAMPLING_RATIO:  # the compiled check's message, with the bound it implies
        raise ValueError(
            f"{op}: sampling_ratio {sampling_ratio} would take {sampling_ratio**2} samples per bin (limit "
            f"{MAX_SAMPLING_RATIO**2}): sampling_ratio must be at most {MAX_SAMPLING_RATIO}"
        )
    return int(sampling_ratio)


def check_ps_channels(op: str, channels: int, output_size: Tuple[int, int]) -> None:
    """Position-sensitive ops: the input holds output_size[0] * output_size[1] channels per output channel
    (the compiled builder's check, same words)."""
    bins = output_size[0] * output_size[1]
    if channels % bins != 0:
        raise ValueError(
            f"{op}: input channels ({channels}) must be a multiple of output_size[0] * output_size[1] "
            f"({output_size[0]} * {output_size[1]} = {bins})"
        )


def check_aligned(op: str, aligned) -> bool:
    if not isinstance(aligned, bool):
        raise TypeError(f"{op}: aligned must be a bool, but got {aligned!r}")
    return aligned


def check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, but got {value!r}")
    return value


def check_pool_mode(op: str, pool_mode) -> str:
    if pool_mode not in POOL_MODES:
        raise ValueError(f"{op}: pool_mode must be one of {POOL_MODES}, but got {pool_mode!r}")
    return pool_mode
