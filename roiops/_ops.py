"""Binds the compiled operators to PyTorch: loads roiops._C (which registers the schemas and the
CPU/CUDA kernels), and adds what the dispatcher needs from Python: fake (meta) kernels for
torch.compile / FakeTensor tracing, and autograd formulas."""

import contextlib
import math

import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.roiops.*)
from ._validation import POOL_MODES

ops = torch.ops.roiops


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    # Mirrors roiops::use_channels_last (csrc/roi_checks.cpp): the kernels keep a channels-last
    # input channels-last, and everything else comes out NCHW-contiguous.
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_pooled(like, rois, pooled_height, pooled_width, dtype):
    return torch.empty(
        (rois.shape[0], like.shape[1], pooled_height, pooled_width),
        dtype=dtype,
        device=like.device,
        memory_format=_memory_format(like),
    )


def _grad_input_like(grad, batch_size, channels, height, width):
    return torch.empty(
        (batch_size, channels, height, width), dtype=grad.dtype, device=grad.device, memory_format=_memory_format(grad)
    )


# ---- fake kernels -----------------------------------------------------------------------------
# They mirror the shape, dtype and limit rules of csrc/roi_checks.cpp (the values of boxes are not
# known while tracing; the compiled checks see them at run time).

_LIMITS = _C.limits


def _check_forward(op, input, rois, spatial_scale, pooled_height, pooled_width):
    torch._check_value(input.dim() == 4, lambda: f"{op}: input must be 4-D [N, C, H, W], but got {input.dim()}-D")
    torch._check_type(
        input.is_floating_point(), lambda: f"{op}: input must be a floating-point tensor, but got {input.dtype}"
    )
    _check_common(op, rois, input, spatial_scale, pooled_height, pooled_width)


def _check_backward(op, grad, rois, spatial_scale, pooled_height, pooled_width, channels):
    _check_common(op, rois, grad, spatial_scale, pooled_height, pooled_width)
    expected = (rois.shape[0], channels, pooled_height, pooled_width)
    torch._check_value(
        tuple(grad.shape) == expected, lambda: f"{op}: grad must have shape {expected}, but got {tuple(grad.shape)}"
    )


def _check_common(op, rois, like, spatial_scale, pooled_height, pooled_width):
    torch._check_value(
        rois.dim() == 2 and rois.shape[1] == 5,
        lambda: f"{op}: boxes must have shape [K, 5] (batch index, x1, y1, x2, y2), but got {tuple(rois.shape)}",
    )
    torch._check_type(
        rois.dtype == like.dtype,
        lambda: f"{op}: boxes must have the dtype of input ({like.dtype}), but got {rois.dtype}",
    )
    limit = _LIMITS["max_pooled_size"]
    torch._check_value(
        0 < pooled_height <= limit and 0 < pooled_width <= limit,
        lambda: f"{op}: output_size must be positive (and at most {limit}), but got ({pooled_height}, {pooled_width})",
    )
    torch._check_value(
        math.isfinite(spatial_scale) and spatial_scale > 0,
        lambda: f"{op}: spatial_scale must be a positive finite number, but got {spatial_scale}",
    )


def _check_align_args(op, sampling_ratio, pool_mode):
    torch._check_value(
        pool_mode in POOL_MODES, lambda: f"roi_align: pool_mode must be 'avg' or 'max', but got '{pool_mode}'"
    )
    limit = _LIMITS["max_samples_per_bin"]
    torch._check_value(
        sampling_ratio <= 0 or sampling_ratio * sampling_ratio <= limit,
        lambda: f"{op}: sampling_ratio {sampling_ratio} would take {sampling_ratio**2} samples per bin (limit {limit})",
    )


@torch.library.register_fake("roiops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode):
    _check_forward("roi_align", input, rois, spatial_scale, pooled_height, pooled_width)
    _check_align_args("roi_align", sampling_ratio, pool_mode)
    output = _empty_like_pooled(input, rois, pooled_height, pooled_width, input.dtype)
    if pool_mode == "max":
        argmax = _empty_like_pooled(input, rois, pooled_height, pooled_width, torch.int32)
    else:
        argmax = input.new_empty((0,), dtype=torch.int32)
    return output, argmax


@torch.library.register_fake("roiops::_roi_align_backward")
def _roi_align_backward_fake(
    grad,
    rois,
    argmax,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    pool_mode,
    deterministic,
):
    _check_backward("_roi_align_backward", grad, rois, spatial_scale, pooled_height, pooled_width, channels)
    _check_align_args("_roi_align_backward", sampling_ratio, pool_mode)
    return _grad_input_like(grad, batch_size, channels, height, width)


@torch.library.register_fake("roiops::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    _check_forward("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width)
    output = _empty_like_pooled(input, rois, pooled_height, pooled_width, input.dtype)
    argmax = _empty_like_pooled(input, rois, pooled_height, pooled_width, torch.int32)
    return output, argmax


@torch.library.register_fake("roiops::_roi_pool_backward")
def _roi_pool_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, deterministic
):
    _check_backward("_roi_pool_backward", grad, rois, spatial_scale, pooled_height, pooled_width, channels)
    return _grad_input_like(grad, batch_size, channels, height, width)


# ---- autograd ----------------------------------------------------------------------------------
# Gradients flow to `input` only; boxes get none (like torchvision), even if they require grad.


# None: follow torch.are_deterministic_algorithms_enabled(); True/False: force the choice.
_deterministic_backward = None


def set_deterministic_backward(mode):
    """Chooses the backward kernels: True selects the bitwise-reproducible path (on CUDA: no
    floating-point atomics), False the fastest, None (default) follows
    ``torch.use_deterministic_algorithms``. The CPU backward is always deterministic. Returns the
    previous setting. Under torch.compile the setting is read when the graph is traced."""
    global _deterministic_backward
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"set_deterministic_backward: mode must be True, False or None, but got {mode!r}")
    previous, _deterministic_backward = _deterministic_backward, mode
    return previous


@contextlib.contextmanager
def deterministic_backward(mode=True):
    """Context manager form of :func:`set_deterministic_backward`."""
    previous = set_deterministic_backward(mode)
    try:
        yield
    finally:
        set_deterministic_backward(previous)


def set_device_box_checks(enabled: bool) -> bool:
    """Whether the CUDA forward checks box values (finite, a valid batch index, adaptive sampling within
    the limit) with one host sync per call and the same errors as on the CPU (default True; the
    environment variable ROIOPS_DEVICE_BOX_CHECKS=0 starts with False). Off, the CUDA path never
    syncs, and a bad box gives NaN with no gradient instead of an error. The check is skipped anyway
    while a CUDA graph is being captured; CPU tensors are always checked. Returns the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_device_box_checks: enabled must be True or False, but got {enabled!r}")
    return ops.set_device_box_checks(enabled)


def _deterministic() -> bool:
    if _deterministic_backward is not None:
        return _deterministic_backward
    return torch.are_deterministic_algorithms_enabled()


def _no_zeros_for_argmax(ctx):
    # argmax (int32) never receives a gradient; by default autograd would still allocate and fill an
    # output-sized tensor of zeros for it before each backward (~25 MB for 512 RoIs of 7x7x256).
    ctx.set_materialize_grads(False)


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode = inputs
    _no_zeros_for_argmax(ctx)
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode)


def _roi_align_backward(ctx, grad_output, _grad_argmax):
    if grad_output is None:  # (not materialized: the output took no part in what is differentiated)
        return None, None, None, None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = ops._roi_align_backward(
        grad_output,
        rois,
        argmax,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        sampling_ratio,
        aligned,
        pool_mode,
        _deterministic(),
    )
    return grad_input, None, None, None, None, None, None, None


def _roi_pool_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    _no_zeros_for_argmax(ctx)
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_height, pooled_width)


def _roi_pool_backward(ctx, grad_output, _grad_argmax):
    if grad_output is None:
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = ops._roi_pool_backward(
        grad_output,
        rois,
        argmax,
        spatial_scale,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        height,
        width,
        _deterministic(),
    )
    return grad_input, None, None, None, None


torch.library.register_autograd("roiops::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)
torch.library.register_autograd("roiops::roi_pool", _roi_pool_backward, setup_context=_roi_pool_setup_context)
