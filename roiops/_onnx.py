"""ONNX export rules for the roiops ops, registered on import for both exporters of torch.onnx.export:

- ``dynamo=False`` (TorchScript-based, opset >= 16): symbolic functions (torch.onnx.register_custom_op_symbolic);
- ``dynamo=True`` (the default): ONNX translations in torch.onnx's table of ops (needs onnxscript,
  which torch.onnx needs for that exporter anyway; without it only the first kind is registered).

Mapping (ONNX operator definitions of opset 16+):
- ``roi_align`` avg -> ``RoiAlign`` with ``coordinate_transformation_mode`` ``half_pixel`` for
  aligned=True and ``output_half_pixel`` for aligned=False (the legacy rule, which also clamps boxes
  to at least one cell, as roiops does); ``sampling_ratio <= 0`` -> 0, ONNX's adaptive sampling, which
  is the same ceil(box size / output size) rule.
- ``roi_pool`` -> ``MaxRoiPool`` (the same rounding of box and bins, and 0 for an empty bin).
- ``multilevel_pool`` (one call for all FPN levels) is refused: ONNX has no such operator, and
  ``roiops.MultiScaleRoIAlign`` exports as one standard ``RoiAlign`` (or ``MaxRoiPool``) per level
  instead (it does not call the op while exporting).
- ``ps_roi_align`` / ``ps_roi_pool`` (position-sensitive) are refused: no ONNX operator reads a
  different input channel per bin, and a composition of standard nodes would be a silently different
  graph to maintain.
- ``roi_align_rotated`` is refused: no standard ONNX operator samples oriented boxes (``RoiAlign``
  takes axis-aligned ones; ROIAlignRotated exists only as a vendor extension, e.g. OpenVINO's), so an
  export could only be a different computation or a custom node no standard runtime runs.
- ``prroi_pool`` is refused: no standard ONNX operator integrates the interpolated map over a bin
  (``RoiAlign`` samples it at a few points, a different value).
- ``roi_align`` max is refused: ONNX's ``RoiAlign`` max mode takes the maximum of the bilinear *taps*
  weighted by their weights (not of the interpolated samples), a different quantity; exporting it would
  silently change the model.

The ops' second output (argmax, for the backward pass) is not computed in ONNX: an inference graph
has no use for it, and the public functions never return it.
"""

import importlib.abc
import importlib.util
import sys
import warnings

import torch

ONNX_MIN_OPSET = 16
_INT64 = 7  # onnx.TensorProto.INT64

MAX_MODE_MESSAGE = (
    "roi_align with pool_mode='max' cannot be exported to ONNX: ONNX's RoiAlign max mode takes the maximum "
    "of the bilinear taps scaled by their weights, not of the interpolated samples, so the exported model "
    "would compute something else. Export with pool_mode='avg', or keep the max-pooling model in "
    "PyTorch (TorchScript or torch.export)."
)

MULTILEVEL_MESSAGE = (
    "roiops::multilevel_pool cannot be exported to ONNX: no ONNX operator pools several pyramid levels in "
    "one call. Pool through roiops.MultiScaleRoIAlign, which exports as one standard RoiAlign (or "
    "MaxRoiPool) node per level, with the same outputs."
)


ROTATED_MESSAGE = (
    "roiops::roi_align_rotated cannot be exported to ONNX: no standard ONNX operator pools rotated boxes "
    "(RoiAlign takes axis-aligned boxes only), so the exported model would compute something else. Keep "
    "the rotated pooling in PyTorch (TorchScript or torch.export), or export the model up to the pooling."
)

PRROI_MESSAGE = (
    "roiops::prroi_pool cannot be exported to ONNX: no standard ONNX operator computes the exact integral of "
    "a bin (RoiAlign averages a few bilinear samples, a different value), so the exported model would compute "
    "something else. Keep the model in PyTorch (TorchScript, torch.export or AOTInductor), or export the "
    "layers before and after it."
)


def position_sensitive_message(op: str) -> str:
    return (
        f"roiops::{op} cannot be exported to ONNX: no standard ONNX operator computes position-sensitive RoI "
        "pooling (each bin reads its own input channel). Keep the model in PyTorch (TorchScript, torch.export "
        "or AOTInductor), or export the layers before and after it and run the pooling outside ONNX."
    )


class UnsupportedExportError(RuntimeError):
    """An op configuration that has no exact ONNX equivalent."""


def _coordinate_mode(aligned: bool) -> str:
    return "half_pixel" if aligned else "output_half_pixel"


# ---- dynamo=False: TorchScript-based exporter -------------------------------------------------


def _refuse_position_sensitive(name: str):
    def symbolic(g, *args):
        raise UnsupportedExportError(position_sensitive_message(name))

    return symbolic


def _register_torchscript_symbolics() -> None:
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    def split_rois(g, rois):
        column = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64))
        batch_indices = g.op("Cast", g.op("Gather", rois, column, axis_i=1), to_i=_INT64)
        coordinates = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)
        return coordinates, batch_indices

    def no_argmax(g):
        return g.op("Constant", value_t=torch.zeros((0,), dtype=torch.int32))

    @parse_args("v", "v", "f", "i", "i", "i", "b", "s")
    def roi_align(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, pool_mode):
        if pool_mode != "avg":
            raise UnsupportedExportError(MAX_MODE_MESSAGE)
        coordinates, batch_indices = split_rois(g, rois)
        output = g.op(
            "RoiAlign",
            input,
            coordinates,
            batch_indices,
            coordinate_transformation_mode_s=_coordinate_mode(aligned),
            mode_s="avg",
            output_height_i=pooled_height,
            output_width_i=pooled_width,
            sampling_ratio_i=max(sampling_ratio, 0),
            spatial_scale_f=spatial_scale,
        )
        return output, no_argmax(g)

    @parse_args("v", "v", "f", "i", "i")
    def roi_pool(g, input, rois, spatial_scale, pooled_height, pooled_width):
        output = g.op(
            "MaxRoiPool", input, rois, pooled_shape_i=[pooled_height, pooled_width], spatial_scale_f=spatial_scale
        )
        return output, no_argmax(g)

    def multilevel_pool(g, *args):
        raise UnsupportedExportError(MULTILEVEL_MESSAGE)

    def roi_align_rotated(g, *args):
        raise UnsupportedExportError(ROTATED_MESSAGE)

    def prroi_pool(g, *args):
        raise UnsupportedExportError(PRROI_MESSAGE)

    register_custom_op_symbolic("roiops::roi_align", roi_align, ONNX_MIN_OPSET)
    register_custom_op_symbolic("roiops::roi_align_rotated", roi_align_rotated, ONNX_MIN_OPSET)
    register_custom_op_symbolic("roiops::prroi_pool", prroi_pool, ONNX_MIN_OPSET)
    register_custom_op_symbolic("roiops::roi_pool", roi_pool, ONNX_MIN_OPSET)
    register_custom_op_symbolic("roiops::multilevel_pool", multilevel_pool, ONNX_MIN_OPSET)
    for name in ("ps_roi_align", "ps_roi_pool"):
        register_custom_op_symbolic(f"roiops::{name}", _refuse_position_sensitive(name), ONNX_MIN_OPSET)


# ---- dynamo=True: torch.export + ONNX translation table ---------------------------------------


def _register_dynamo_translations() -> None:
    import numpy
    from onnxscript import INT64, ir
    from onnxscript.onnx_opset import opset18 as op
    from torch.onnx._internal.exporter._torchlib._torchlib_registry import onnx_impl

    def split_rois(rois):
        batch_indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
        return op.Slice(rois, [1], [5], [1]), batch_indices

    def no_argmax():
        return op.Constant(value=ir.tensor(numpy.zeros((0,), dtype=numpy.int32)))

    @onnx_impl(torch.ops.roiops.roi_align.default, trace_only=True)
    def roi_align(
        input,
        rois,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        aligned: bool,
        pool_mode: str,
    ):
        if pool_mode != "avg":
            raise UnsupportedExportError(MAX_MODE_MESSAGE)
        coordinates, batch_indices = split_rois(rois)
        output = op.RoiAlign(
            input,
            coordinates,
            batch_indices,
            coordinate_transformation_mode=_coordinate_mode(aligned),
            mode="avg",
            output_height=pooled_height,
            output_width=pooled_width,
            sampling_ratio=max(sampling_ratio, 0),
            spatial_scale=spatial_scale,
        )
        return output, no_argmax()

    @onnx_impl(torch.ops.roiops.roi_pool.default, trace_only=True)
    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        output = op.MaxRoiPool(input, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
        return output, no_argmax()

    @onnx_impl(torch.ops.roiops.ps_roi_align.default, trace_only=True)
    def ps_roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int):
        raise UnsupportedExportError(position_sensitive_message("ps_roi_align"))

    @onnx_impl(torch.ops.roiops.ps_roi_pool.default, trace_only=True)
    def ps_roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        raise UnsupportedExportError(position_sensitive_message("ps_roi_pool"))

    @onnx_impl(torch.ops.roiops.multilevel_pool.default, trace_only=True)
    def multilevel_pool(
        features,
        rois,
        levels,
        spatial_scales: list[float],
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        aligned: bool,
        mode: str,
    ):
        raise UnsupportedExportError(MULTILEVEL_MESSAGE)

    @onnx_impl(torch.ops.roiops.roi_align_rotated.default, trace_only=True)
    def roi_align_rotated(
        input,
        rois,
        spatial_scale: float,
        pooled_height: int,
        pooled_width: int,
        sampling_ratio: int,
        aligned: bool,
        clockwise: bool,
    ):
        raise UnsupportedExportError(ROTATED_MESSAGE)

    @onnx_impl(torch.ops.roiops.prroi_pool.default, trace_only=True)
    def prroi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, aligned: bool):
        raise UnsupportedExportError(PRROI_MESSAGE)


def register() -> None:
    """Registers the export rules (called once, when roiops is imported). The dynamo exporter's rules
    need onnxscript, whose import takes ~0.7 s: they are registered as soon as onnxscript has been
    imported (by torch.onnx.export with dynamo=True, or by anything else), not by ``import roiops``."""
    _register_torchscript_symbolics()
    if "onnxscript" in sys.modules:
        _register_dynamo_translations_or_warn()
    elif importlib.util.find_spec("onnxscript") is not None:
        sys.meta_path.insert(0, _AfterOnnxscriptImport())


def _register_dynamo_translations_or_warn() -> None:
    try:
        _register_dynamo_translations()
    except Exception as error:  # an onnxscript or torch.onnx too different from the tested ones
        warnings.warn(f"roiops: ONNX export with dynamo=True is unavailable ({error!r})", stacklevel=2)


class _AfterOnnxscriptImport(importlib.abc.MetaPathFinder):
    """An import hook: once the module ``onnxscript`` has executed, registers the dynamo rules and
    removes itself. (No exporter hook does this: torch.onnx.export builds its table of translations
    before it traces the model, so a fake kernel is too late, and ``custom_translation_table`` is per
    call; registering at ``import roiops`` would import onnxscript for every user.)"""

    _searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "onnxscript" or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(name)  # the finders after this one
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        hook, loader = self, spec.loader
        execute = loader.exec_module

        def exec_module(module):
            execute(module)
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
                _register_dynamo_translations_or_warn()

        loader.exec_module = exec_module
        return spec
