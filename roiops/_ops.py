"""Binds the compiled ops (roiops._library loads them) to PyTorch from one spec per op (SPECS): fake
kernels for torch.compile / FakeTensor tracing, autograd, autocast, the quantized CPU kernel and a
clear error for double backward. A new op is one OpSpec here, its folder under csrc/ops and a row in
the tests' op table.

Every op follows one calling convention (its schema in csrc/ops/<name>/schema.cpp; a test checks
that the schemas agree with the specs):

    <name>(input, rois, spatial_scale, pooled_height, pooled_width, *extra) -> (output, argmax)
    _<name>_backward(grad, rois, argmax, spatial_scale, pooled_height, pooled_width,
                     batch_size, channels, height, width, *extra, deterministic) -> grad_input

(argmax is channel_mapping for the position-sensitive ops.) An op whose output is differentiable in
the box coordinates (box_gradient) has a third:

    _<name>_rois_backward(grad, input, rois, spatial_scale, pooled_height, pooled_width, *extra) -> grad_rois
"""

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from ._library import _C, NAMESPACE
from ._validation import BOX_COLUMNS, POOL_MODES

ops = torch.ops.roiops
_LIMITS = _C.limits
COMMON_PARAMS = ("spatial_scale", "pooled_height", "pooled_width")
INPUT_SIZES = ("batch_size", "channels", "height", "width")


def _no_extra_checks(op: str, args: dict) -> None:
    pass


@dataclass(frozen=True)
class OpSpec:
    name: str
    # The parameters after the common ones, in schema order.
    extra_params: Tuple[str, ...] = ()
    # Columns of a row of rois: (batch index, x1, y1, x2, y2).
    box_width: int = 5
    # Whether argmax has the output's shape for these arguments (otherwise it is empty, int32).
    argmax_shaped: Callable[[dict], bool] = lambda args: True
    # Checks of the extra parameters (the fake kernels'; the compiled builder checks the same).
    check_extra: Callable[[str, dict], None] = _no_extra_checks
    # Whether a per-tensor-affine quantized CPU input is taken (dequantize -> op -> quantize).
    quantized: bool = True
    # Whether output channel c of bin (i, j) reads input channel (c * PH + i) * PW + j (position-sensitive,
    # csrc/common/position_sensitive.h): the output has C / (PH * PW) channels, and the second output
    # is that channel ("channel_mapping") instead of an argmax.
    position_sensitive: bool = False
    # Whether the output is differentiable in the box coordinates: gradients then flow to rois too,
    # through the op's _rois_backward (which reads the input, saved only when rois require grad).
    box_gradient: bool = False

    @property
    def second_output(self) -> str:
        return "channel_mapping" if self.position_sensitive else "argmax"

    @property
    def backward_name(self) -> str:
        return f"_{self.name}_backward"

    @property
    def rois_backward_name(self) -> str:
        return f"_{self.name}_rois_backward"

    @property
    def op_names(self) -> Tuple[str, ...]:
        """Every compiled op of this spec."""
        extra = (self.rois_backward_name,) if self.box_gradient else ()
        return (self.name, self.backward_name, *extra)

    @property
    def rois_backward_args(self) -> Tuple[str, ...]:
        return ("grad", "input", "rois", *COMMON_PARAMS, *self.extra_params)

    @property
    def forward_args(self) -> Tuple[str, ...]:
        return ("input", "rois", *COMMON_PARAMS, *self.extra_params)

    @property
    def backward_args(self) -> Tuple[str, ...]:
        return ("grad", "rois", self.second_output, *COMMON_PARAMS, *INPUT_SIZES, *self.extra_params, "deterministic")

    def output_channels(self, op: str, channels, args: dict):
        """The output's channels for an input of `channels` (the fake kernels' rule)."""
        if not self.position_sensitive:
            return channels
        bins = args["pooled_height"] * args["pooled_width"]
        torch._check_value(
            channels % bins == 0,
            lambda: (
                f"{op}: input channels ({channels}) must be a multiple of output_size[0] * output_size[1] "
                f"({args['pooled_height']} * {args['pooled_width']} = {bins})"
            ),
        )
        return channels // bins


def _check_sampling_ratio(op: str, args: dict) -> None:
    sampling_ratio, limit = args["sampling_ratio"], _LIMITS["max_samples_per_bin"]
    torch._check_value(
        sampling_ratio <= 0 or sampling_ratio * sampling_ratio <= limit,
        lambda: f"{op}: sampling_ratio {sampling_ratio} would take {sampling_ratio**2} samples per bin (limit {limit})",
    )


def _check_align_extra(op: str, args: dict) -> None:
    pool_mode = args["pool_mode"]
    torch._check_value(
        pool_mode in POOL_MODES, lambda: f"roi_align: pool_mode must be 'avg' or 'max', but got '{pool_mode}'"
    )
    _check_sampling_ratio(op, args)


SPECS: Dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "roi_align",
            extra_params=("sampling_ratio", "aligned", "pool_mode"),
            argmax_shaped=lambda args: args["pool_mode"] == "max",
            check_extra=_check_align_extra,
        ),
        OpSpec("roi_pool"),
        OpSpec(
            "ps_roi_align",
            extra_params=("sampling_ratio",),
            check_extra=_check_sampling_ratio,
            quantized=False,
            position_sensitive=True,
        ),
        OpSpec("ps_roi_pool", quantized=False, position_sensitive=True),
        # Average pooling only: argmax is always empty. No quantized kernel.
        OpSpec(
            "roi_align_rotated",
            extra_params=("sampling_ratio", "aligned", "clockwise"),
            box_width=6,
            argmax_shaped=lambda args: False,
            check_extra=_check_sampling_ratio,
            quantized=False,
        ),
        # Precise RoI Pooling: average only (argmax always empty); gradients for the boxes too.
        OpSpec(
            "prroi_pool",
            extra_params=("aligned",),
            argmax_shaped=lambda args: False,
            quantized=False,
            box_gradient=True,
        ),
    )
}


# ---- fake kernels -----------------------------------------------------------------------------
# The shape, dtype and limit rules of the compiled builder (csrc/common/checks.cpp); the values of
# boxes are not known while tracing (the compiled checks see them at run time).


def memory_format(t: torch.Tensor) -> torch.memory_format:
    # Mirrors roiops::use_channels_last (csrc/common/tensor.cpp): the kernels keep a channels-last
    # map channels-last, and everything else comes out NCHW-contiguous.
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check_common(spec: OpSpec, op: str, rois, like, args: dict) -> None:
    width = spec.box_width
    columns = BOX_COLUMNS[width]
    torch._check_value(
        rois.dim() == 2 and rois.shape[1] == width,
        lambda: f"{op}: boxes must have shape [K, {width}] {columns}, but got {tuple(rois.shape)}",
    )
    torch._check_type(
        rois.dtype == like.dtype,
        lambda: f"{op}: boxes must have the dtype of input ({like.dtype}), but got {rois.dtype}",
    )
    ph, pw, limit = args["pooled_height"], args["pooled_width"], _LIMITS["max_pooled_size"]
    torch._check_value(
        0 < ph <= limit and 0 < pw <= limit,
        lambda: f"{op}: output_size must be positive (and at most {limit}), but got ({ph}, {pw})",
    )
    scale = args["spatial_scale"]
    torch._check_value(
        math.isfinite(scale) and scale > 0,
        lambda: f"{op}: spatial_scale must be a positive finite number, but got {scale}",
    )
    spec.check_extra(op, args)


def _register_fakes(spec: OpSpec) -> None:
    def forward_fake(*values):
        args = dict(zip(spec.forward_args, values))
        input, rois = args["input"], args["rois"]
        torch._check_value(
            input.dim() == 4, lambda: f"{spec.name}: input must be 4-D [N, C, H, W], but got {input.dim()}-D"
        )
        torch._check_type(
            input.is_floating_point(),
            lambda: f"{spec.name}: input must be a floating-point tensor, but got {input.dtype}",
        )
        _check_common(spec, spec.name, rois, input, args)
        channels = spec.output_channels(spec.name, input.shape[1], args)
        shape = (rois.shape[0], channels, args["pooled_height"], args["pooled_width"])
        fmt = memory_format(input)
        output = torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=fmt)
        if spec.argmax_shaped(args):
            argmax = torch.empty(shape, dtype=torch.int32, device=input.device, memory_format=fmt)
        else:
            argmax = input.new_empty((0,), dtype=torch.int32)
        return output, argmax

    def backward_fake(*values):
        args = dict(zip(spec.backward_args, values))
        grad, rois = args["grad"], args["rois"]
        op = spec.backward_name
        _check_common(spec, op, rois, grad, args)
        channels = spec.output_channels(op, args["channels"], args)
        expected = (rois.shape[0], channels, args["pooled_height"], args["pooled_width"])
        torch._check_value(
            tuple(grad.shape) == expected, lambda: f"{op}: grad must have shape {expected}, but got {tuple(grad.shape)}"
        )
        sizes = tuple(args[name] for name in INPUT_SIZES)
        return torch.empty(sizes, dtype=grad.dtype, device=grad.device, memory_format=memory_format(grad))

    def rois_backward_fake(*values):
        args = dict(zip(spec.rois_backward_args, values))
        grad, input, rois = args["grad"], args["input"], args["rois"]
        op = spec.rois_backward_name
        _check_common(spec, op, rois, input, args)
        expected = (rois.shape[0], input.shape[1], args["pooled_height"], args["pooled_width"])
        torch._check_value(
            tuple(grad.shape) == expected, lambda: f"{op}: grad must have shape {expected}, but got {tuple(grad.shape)}"
        )
        return torch.empty(tuple(rois.shape), dtype=rois.dtype, device=rois.device)

    torch.library.register_fake(f"{NAMESPACE}::{spec.name}", forward_fake)
    torch.library.register_fake(f"{NAMESPACE}::{spec.backward_name}", backward_fake)
    if spec.box_gradient:
        torch.library.register_fake(f"{NAMESPACE}::{spec.rois_backward_name}", rois_backward_fake)


# ---- autograd ----------------------------------------------------------------------------------
# Gradients flow to `input`; boxes get none (like torchvision), even if they require grad, except from
# an op with box_gradient.

_settings = threading.local()  # per thread: one thread's choice never changes another's backward


def set_deterministic_backward(mode):
    """Chooses the backward kernels of the calling thread: True selects the bitwise-reproducible path
    (on CUDA: no floating-point atomics), False the fastest, None (default) follows
    ``torch.use_deterministic_algorithms``. The CPU backward is always deterministic. Returns the
    previous setting. Under torch.compile the setting is read when the graph is traced."""
    if mode is not None and not isinstance(mode, bool):
        raise TypeError(f"set_deterministic_backward: mode must be True, False or None, but got {mode!r}")
    previous = getattr(_settings, "deterministic", None)
    _settings.deterministic = mode
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
    the limit) with one blocking host sync per call, raising the same errors as on the CPU. Off by
    default (the environment variable ROIOPS_DEVICE_BOX_CHECKS=1 starts with it on): the CUDA path then
    never waits for the GPU, and a bad box gives a NaN output row and no gradient instead of an error,
    so the NaN reaches the loss (in eager and in a replayed CUDA graph alike). The check is skipped
    anyway while a CUDA graph is being captured; CPU tensors are always checked (free there). Returns
    the previous setting."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_device_box_checks: enabled must be True or False, but got {enabled!r}")
    return ops.set_device_box_checks(enabled)


@contextlib.contextmanager
def device_box_checks(enabled=True):
    """Context manager form of :func:`set_device_box_checks` (process-wide, as the setting is)."""
    previous = set_device_box_checks(enabled)
    try:
        yield
    finally:
        set_device_box_checks(previous)


def _deterministic() -> bool:
    mode = getattr(_settings, "deterministic", None)
    return torch.are_deterministic_algorithms_enabled() if mode is None else mode


def _register_autograd(spec: OpSpec) -> None:
    n_inputs = len(spec.forward_args)
    backward_op = getattr(ops, spec.backward_name)
    rois_backward_op = getattr(ops, spec.rois_backward_name) if spec.box_gradient else None

    def setup_context(ctx, inputs, output):
        # argmax (int32) never receives a gradient; by default autograd would still allocate and fill
        # an output-sized tensor of zeros for it before each backward.
        ctx.set_materialize_grads(False)
        box_grad = spec.box_gradient and ctx.needs_input_grad[1]
        # The input only where the box gradient reads it (held for the backward otherwise for nothing).
        ctx.save_for_backward(inputs[1], output[1], inputs[0] if box_grad else None)
        ctx.input_shape = tuple(inputs[0].shape)
        ctx.params = inputs[2:]

    def backward(ctx, grad_output, _grad_argmax):
        if grad_output is None:  # (not materialized: the output took no part in what is differentiated)
            return (None,) * n_inputs
        rois, argmax, input = ctx.saved_tensors
        common, extra = ctx.params[: len(COMMON_PARAMS)], ctx.params[len(COMMON_PARAMS) :]
        grad_input = grad_rois = None
        if ctx.needs_input_grad[0]:
            grad_input = backward_op(grad_output, rois, argmax, *common, *ctx.input_shape, *extra, _deterministic())
        if input is not None:
            grad_rois = rois_backward_op(grad_output, input, rois, *common, *extra)
        return (grad_input, grad_rois) + (None,) * (n_inputs - 2)

    def no_double_backward(ctx, *grads):
        raise NotImplementedError(
            f"{spec.name}: double backward (a gradient of the gradient, e.g. create_graph=True followed by "
            f"another backward) is not supported"
        )

    torch.library.register_autograd(f"{NAMESPACE}::{spec.name}", backward, setup_context=setup_context)
    for name in spec.op_names[1:]:
        torch.library.register_autograd(
            f"{NAMESPACE}::{name}", no_double_backward, setup_context=lambda ctx, inputs, output: None
        )


# ---- autocast and quantized input ------------------------------------------------------------------
# Autocast, the same as torchvision's roi ops: inside an autocast region a float16 or bfloat16 tensor
# argument is cast to float32, the op runs in float32 with autocast off (so autograd records the
# float32 op and its float32 backward), and a floating output is cast back to the dtype of the
# first argument; argmax (int32) is returned as it is. float32 stays float32 and float64 is never
# narrowed. Why float32 rather than the autocast dtype: box geometry loses visible accuracy in half
# precision (bfloat16 holds coordinates above 256 px only to the nearest even pixel), and the ops are
# memory-bound, so float32 costs little.

_HALF_TYPES = (torch.float16, torch.bfloat16)
_library_impls = torch.library.Library(NAMESPACE, "IMPL")


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in _HALF_TYPES else value
    if isinstance(value, (list, tuple)):
        return [_to_float32(v) for v in value]
    return value


def _autocast_kernel(op, device_type: str):
    def kernel(*args):
        first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]  # (a map, or the first of a list)
        dtype = first.dtype
        with torch.autocast(device_type, enabled=False):
            result = op(*(_to_float32(a) for a in args))
        if isinstance(result, torch.Tensor):
            return result.to(dtype)
        return type(result)(r.to(dtype) if r.is_floating_point() else r for r in result)

    return kernel


def _quantized_kernel(spec: OpSpec, op):
    # quantize(op(dequantize(input))) with the input's scale, zero point and dtype: within one
    # quantization step of pooling in the quantized domain. Boxes may be float or quantized (as
    # torchvision wants them); argmax is returned as the float kernel gives it.
    def kernel(input, rois, *params):
        if input.qscheme() != torch.per_tensor_affine:
            scheme = str(input.qscheme()).replace("torch.", "")
            raise TypeError(
                f"{spec.name}: a quantized input must be per-tensor affine (torch.per_tensor_affine), but got {scheme}"
            )
        float_rois = rois.dequantize() if rois.is_quantized else rois.float()
        output, argmax = op(input.dequantize(), float_rois, *params)
        return torch.quantize_per_tensor(output, input.q_scale(), input.q_zero_point(), input.dtype), argmax

    return kernel


# (dispatch key, autocast device type); AutocastCUDA only where the CUDA kernels are compiled in.
_AUTOCAST_KEYS = (("AutocastCPU", "cpu"), ("AutocastCUDA", "cuda")) if _C.with_cuda else (("AutocastCPU", "cpu"),)


def _register_autocast(name: str) -> None:
    op = getattr(ops, name).default
    for key, device_type in _AUTOCAST_KEYS:
        _library_impls.impl(name, _autocast_kernel(op, device_type), key)


def _register_dispatch_kernels(spec: OpSpec) -> None:
    for name in spec.op_names:
        _register_autocast(name)
    if spec.quantized:
        _library_impls.impl(spec.name, _quantized_kernel(spec, getattr(ops, spec.name).default), "QuantizedCPU")


for _spec in SPECS.values():
    _register_fakes(_spec)
    _register_autograd(_spec)
    _register_dispatch_kernels(_spec)


# ---- multilevel_pool: a list of maps -----------------------------------------------------------------
# FPN pooling in one call (csrc/ops/multilevel_pool/schema.cpp): each box is pooled from the map of
# its level with that level's scale. Not an OpSpec: it takes a list of maps and returns a list of
# gradients.

MULTILEVEL_OPS = ("multilevel_pool", "_multilevel_pool_backward")
MULTILEVEL_MODES = ("avg", "max", "roi_pool")


@torch.library.register_fake(f"{NAMESPACE}::multilevel_pool")
def _multilevel_fake(
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned, mode
):
    op = "multilevel_pool"
    torch._check_value(len(features) > 0, lambda: f"{op}: features must hold at least one map, but got none")
    torch._check_value(
        mode in MULTILEVEL_MODES, lambda: f"{op}: mode must be 'avg', 'max' (RoIAlign) or 'roi_pool', but got '{mode}'"
    )
    torch._check_value(
        len(spatial_scales) == len(features),
        lambda: f"{op}: spatial_scales must hold one scale per map ({len(features)}), but holds {len(spatial_scales)}",
    )
    torch._check_value(
        levels.dim() == 1 and levels.shape[0] == rois.shape[0] and levels.dtype == torch.int64,
        lambda: (
            f"{op}: levels must be an int64 tensor [K] with one level per box, but got {levels.dtype} {tuple(levels.shape)}"
        ),
    )
    first = features[0]
    args = dict(pooled_height=pooled_height, pooled_width=pooled_width, sampling_ratio=sampling_ratio)
    args["pool_mode"] = "max" if mode == "max" else "avg"
    for feature, scale in zip(features, spatial_scales):
        torch._check_value(
            feature.dim() == 4, lambda: f"{op}: input must be 4-D [N, C, H, W], but got {feature.dim()}-D"
        )
        torch._check_value(
            feature.shape[:2] == first.shape[:2] and feature.dtype == first.dtype,
            lambda: f"{op}: every map must have the batch, channels and dtype of features[0]",
        )
        _check_common(SPECS["roi_align"], op, rois, feature, dict(args, spatial_scale=scale))
    shape = (rois.shape[0], first.shape[1], pooled_height, pooled_width)
    fmt = memory_format(first)
    output = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=fmt)
    if mode == "avg":
        return output, first.new_empty((0,), dtype=torch.int32)
    return output, torch.empty(shape, dtype=torch.int32, device=first.device, memory_format=fmt)


@torch.library.register_fake(f"{NAMESPACE}::_multilevel_pool_backward")
def _multilevel_backward_fake(
    grad, rois, levels, argmax, spatial_scales, pooled_height, pooled_width, batch_size, channels, heights, widths, *_
):
    fmt = memory_format(grad)
    return [
        torch.empty((batch_size, channels, h, w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
        for h, w in zip(heights, widths)
    ]


def _multilevel_setup_context(ctx, inputs, output):
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned, mode = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(rois, levels, output[1])
    ctx.sizes = (
        features[0].shape[0],
        features[0].shape[1],
        [f.shape[2] for f in features],
        [f.shape[3] for f in features],
    )
    ctx.params = (list(spatial_scales), pooled_height, pooled_width, sampling_ratio, aligned, mode)


def _multilevel_backward(ctx, grad_output, _grad_argmax):
    if grad_output is None:
        return ([None] * len(ctx.sizes[2]),) + (None,) * 8
    rois, levels, argmax = ctx.saved_tensors
    scales, pooled_height, pooled_width, sampling_ratio, aligned, mode = ctx.params
    batch_size, channels, heights, widths = ctx.sizes
    grads = ops._multilevel_pool_backward(
        grad_output,
        rois,
        levels,
        argmax,
        scales,
        pooled_height,
        pooled_width,
        batch_size,
        channels,
        heights,
        widths,
        sampling_ratio,
        aligned,
        mode,
        _deterministic(),
    )
    return (list(grads),) + (None,) * 8


def _multilevel_no_double_backward(ctx, *grads):
    raise NotImplementedError("multilevel_pool: double backward (a gradient of the gradient) is not supported")


torch.library.register_autograd(
    f"{NAMESPACE}::multilevel_pool", _multilevel_backward, setup_context=_multilevel_setup_context
)
torch.library.register_autograd(
    f"{NAMESPACE}::_multilevel_pool_backward",
    _multilevel_no_double_backward,
    setup_context=lambda ctx, inputs, output: None,
)
for _name in MULTILEVEL_OPS:
    _register_autocast(_name)
