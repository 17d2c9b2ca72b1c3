"""Binds the compiled operators to PyTorch: loads roiops._C (which registers the schemas and the
CPU/CUDA kernels), and adds what the dispatcher needs from Python: fake (meta) kernels for
torch.compile / FakeTensor tracing, and autograd formulas."""
import contextlib

import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.roiops.*)

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


@torch.library.register_fake("roiops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode):
    torch._check(input.dim() == 4, lambda: "roi_align: input must be 4-D")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_align: boxes must have shape [K, 5]")
    output = _empty_like_pooled(input, rois, pooled_height, pooled_width, input.dtype)
    if pool_mode == "max":
        argmax = _empty_like_pooled(input, rois, pooled_height, pooled_width, torch.int32)
    else:
        argmax = input.new_empty((0,), dtype=torch.int32)
    return output, argmax


@torch.library.register_fake("roiops::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
    sampling_ratio, aligned, pool_mode, deterministic,
):
    return _grad_input_like(grad, batch_size, channels, height, width)


@torch.library.register_fake("roiops::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    torch._check(input.dim() == 4, lambda: "roi_pool: input must be 4-D")
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_pool: boxes must have shape [K, 5]")
    output = _empty_like_pooled(input, rois, pooled_height, pooled_width, input.dtype)
    argmax = _empty_like_pooled(input, rois, pooled_height, pooled_width, torch.int32)
    return output, argmax


@torch.library.register_fake("roiops::_roi_pool_backward")
def _roi_pool_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, deterministic
):
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


def _deterministic() -> bool:
    if _deterministic_backward is not None:
        return _deterministic_backward
    return torch.are_deterministic_algorithms_enabled()


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode)


def _roi_align_backward(ctx, grad_output, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = ops._roi_align_backward(
        grad_output, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
        sampling_ratio, aligned, pool_mode, _deterministic(),
    )
    return grad_input, None, None, None, None, None, None, None


def _roi_pool_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_height, pooled_width)


def _roi_pool_backward(ctx, grad_output, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width = ctx.params
    batch_size, channels, height, width = ctx.input_shape
    grad_input = ops._roi_pool_backward(
        grad_output, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width,
        _deterministic(),
    )
    return grad_input, None, None, None, None


torch.library.register_autograd("roiops::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)
torch.library.register_autograd("roiops::roi_pool", _roi_pool_backward, setup_context=_roi_pool_setup_context)
