"""The op table of the standard tests (tests/test_ops.py): one row per op configuration.

A row says how to call the public function, the compiled op (on any Device of devices.py) and the
pure-PyTorch reference (the oracle), and how exact the op is. A new op is one row here (and its
OpSpec in roiops/_ops.py); its own tests go in tests/test_<op>.py. The checks that every standard
test shares (run on a device, compare with the oracle) are here too.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

import roiops
from roiops import reference
from roiops._ops import SPECS

from helpers import input_grad, is_channels_last, on_device, random_grad, to_layout, tolerances


def _same(boxes):
    return boxes


def rotated_from_axis_aligned(boxes):
    """The rotated rows of the tests' axis-aligned ones (helpers.make_rois, the tables of boxes): in each
    2-D tensor of at least 4 columns (alone, or in a list), the last four, x1, y1, x2, y2, become the
    centre, the size (negative for an inverted box) and an angle in degrees spread over [-180, 180)
    that depends on the row. Values are rounded through bfloat16, so that a row means the same box in
    every dtype (the half-precision tests run the reference in float32 on the same boxes). Anything
    else (wrong shapes, non-tensors) is returned as it is, for the argument error tests."""
    if isinstance(boxes, (list, tuple)):
        return [rotated_from_axis_aligned(b) for b in boxes]
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] < 4:
        return boxes
    b = boxes.to(torch.float64)
    x1, y1, x2, y2 = b[:, -4], b[:, -3], b[:, -2], b[:, -1]
    angle = torch.remainder(x1 * 37.0 + y1 * 91.0 + 17.0, 360.0) - 180.0
    angle = torch.where(torch.isfinite(angle), angle, x1 + y1)  # (a NaN or inf box stays so)
    columns = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, angle]
    rotated = torch.cat([b[:, :-4], torch.stack(columns, dim=1)], dim=1)
    return rotated.to(torch.bfloat16).to(boxes.dtype)


@dataclass(frozen=True)
class OpConfig:
    id: str  # the one spelling of this configuration in test ids and messages
    name: str  # the compiled op: a key of roiops._ops.SPECS, torch.ops.<namespace>.<name>
    public: Callable  # roiops.<function>(input, boxes, **kwargs)
    reference: Callable  # roiops.reference.<function>, the same arguments as public
    # Keyword arguments of the public function (besides input and boxes) that a test does not vary.
    defaults: Dict
    # The settings of the op's own parameters that the standard tests sweep, each a dict of overrides.
    sweep: Tuple[Dict, ...] = ({},)
    # The forward picks stored values (a max): exact against the reference, in every dtype.
    exact_forward: bool = False
    # Maps of distinct values (make_input(distinct=True)): a max with no near-ties to route the gradient.
    distinct_input: bool = False
    gradcheck: bool = True
    # A few of those settings, for tests that sweep another axis (shapes, layouts, dtypes).
    short_sweep: Tuple[Dict, ...] = ({},)
    # Overrides under which gradcheck runs (the boxes are divided by the spatial_scale used).
    gradcheck_sweep: Tuple[Dict, ...] = ({},)
    # Errors of the op's own arguments: (overrides, exception, word of the message), as the common
    # ones of test_ops_edges.py.
    argument_errors: Tuple = ()
    # The op's rois from the tests' axis-aligned ones ([K, 5] tensors or lists of [L, 4]): applied by
    # __call__ and call_reference; a test that calls the compiled op directly applies it itself.
    rois: Callable = _same
    # Boxes wholly outside the map pool nothing (rotated boxes of the "outside" kind may reach into it).
    outside_stays_outside: bool = True
    # Whether far-outside samples are clipped (cost bounded by the map); otherwise absurd boxes are
    # refused by a sampling limit, tested in the op's own file.
    clips_samples: bool = True

    def kwargs(self, **overrides):
        """The public function's keyword arguments: the defaults with overrides."""
        return {**self.defaults, **overrides}

    @property
    def position_sensitive(self) -> bool:
        return SPECS[self.name].position_sensitive

    def channels(self, out_channels, **overrides):
        """The input channels that give out_channels output channels under these overrides: the same for
        most ops; output_size[0] * output_size[1] per output channel for a position-sensitive one."""
        if not self.position_sensitive:
            return out_channels
        size = self.kwargs(**overrides)["output_size"]
        height, width = (size, size) if isinstance(size, int) else size
        return out_channels * height * width

    def __call__(self, x, boxes, **overrides):
        return self.public(x, self.rois(boxes), **self.kwargs(**overrides))

    def call_reference(self, x, boxes, **overrides):
        return self.reference(x, self.rois(boxes), **self.kwargs(**overrides))

    def forward_op(self, dev):
        """The compiled forward, torch.ops.<dev.namespace>.<name>."""
        return getattr(dev.ops, self.name)

    def backward_op(self, dev):
        return getattr(dev.ops, SPECS[self.name].backward_name)

    def op_args(self, **overrides):
        """The compiled forward's arguments after (input, rois), in schema order (roiops/_ops.py)."""
        kw = self.kwargs(**overrides)
        size = kw["output_size"]
        height, width = (size, size) if isinstance(size, int) else size
        common = (float(kw["spatial_scale"]), height, width)
        return common + tuple(kw[name] for name in SPECS[self.name].extra_params)

    def backward_args(self, input_shape, deterministic, **overrides):
        """The compiled backward's arguments after (grad, rois, argmax), in schema order."""
        args = self.op_args(**overrides)
        return (*args[:3], *input_shape, *args[3:], deterministic)

    def forward_tolerance(self, dtype):
        return dict(rtol=0, atol=0) if self.exact_forward else tolerances(dtype)

    def __repr__(self):
        return self.id


_ALIGN_SWEEP = tuple(dict(sampling_ratio=sr, aligned=a) for sr in (-1, 0, 1, 2, 3) for a in (False, True))
# Adaptive and fixed sampling, each aligned and not.
_ALIGN_SHORT = tuple(dict(sampling_ratio=sr, aligned=a) for sr in (-1, 2) for a in (False, True))


_ALIGN_ARGUMENT_ERRORS = (
    (dict(sampling_ratio=2.0), TypeError, "sampling_ratio"),
    (dict(sampling_ratio=True), TypeError, "sampling_ratio"),
    (dict(sampling_ratio="2"), TypeError, "sampling_ratio"),
    (dict(pool_mode="mean"), ValueError, "pool_mode"),
    (dict(pool_mode="MAX"), ValueError, "pool_mode"),
    (dict(pool_mode=None), ValueError, "pool_mode"),
    (dict(aligned=1), TypeError, "aligned"),
    (dict(aligned="True"), TypeError, "aligned"),
    (dict(aligned=None), TypeError, "aligned"),
)


# Position-sensitive ops: the input holds output_size[0] * output_size[1] channels per output channel.
_PS_ARGUMENT_ERRORS = (
    (dict(input=torch.randn(2, 13, 8, 8), output_size=(3, 4)), ValueError, r"input channels \(13\) must be a multiple"),
    (dict(input=torch.randn(2, 12, 8, 8), output_size=5), ValueError, r"output_size\[0\] \* output_size\[1\]"),
)


def _roi_align(mode):
    return OpConfig(
        id=f"roi_align-{mode}",
        name="roi_align",
        public=roiops.roi_align,
        reference=reference.roi_align_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True, pool_mode=mode),
        sweep=_ALIGN_SWEEP,
        distinct_input=(mode == "max"),
        short_sweep=_ALIGN_SHORT,
        gradcheck_sweep=_ALIGN_SHORT,
        argument_errors=_ALIGN_ARGUMENT_ERRORS,
    )


_ROTATED_ARGUMENT_ERRORS = (
    (dict(sampling_ratio=2.0), TypeError, "sampling_ratio"),
    (dict(sampling_ratio=True), TypeError, "sampling_ratio"),
    (dict(sampling_ratio=5000), ValueError, "sampling_ratio"),
    (dict(aligned=1), TypeError, "aligned"),
    (dict(aligned=None), TypeError, "aligned"),
    (dict(clockwise=0), TypeError, "clockwise"),
    (dict(clockwise="yes"), TypeError, "clockwise"),
)

_PRROI_ARGUMENT_ERRORS = (
    (dict(aligned=1), TypeError, "aligned"),
    (dict(aligned=None), TypeError, "aligned"),
    (dict(aligned="True"), TypeError, "aligned"),
)

OP_TABLE = (
    _roi_align("avg"),
    _roi_align("max"),
    OpConfig(
        id="roi_pool",
        name="roi_pool",
        public=roiops.roi_pool,
        reference=reference.roi_pool_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5),
        # RoIPool's own parameters are the common ones: its sweep is over bin counts (rounded bin edges).
        sweep=(dict(output_size=1), dict(output_size=(2, 3)), dict(output_size=4)),
        exact_forward=True,
        distinct_input=True,
        gradcheck_sweep=(dict(spatial_scale=1.0), dict(spatial_scale=0.5)),
    ),
    OpConfig(
        id="roi_align_rotated",
        name="roi_align_rotated",
        public=roiops.roi_align_rotated,
        reference=reference.roi_align_rotated_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True, clockwise=False),
        sweep=tuple(
            dict(sampling_ratio=sr, aligned=a, clockwise=cw)
            for sr, a, cw in ((0, True, False), (0, False, True), (1, True, True), (2, False, False), (3, True, False))
        ),
        short_sweep=(dict(sampling_ratio=0, aligned=True), dict(sampling_ratio=2, aligned=False, clockwise=True)),
        gradcheck_sweep=(dict(sampling_ratio=0), dict(sampling_ratio=2, aligned=False, clockwise=True)),
        argument_errors=_ROTATED_ARGUMENT_ERRORS,
        rois=rotated_from_axis_aligned,
        outside_stays_outside=False,
        clips_samples=False,
    ),
    OpConfig(
        id="ps_roi_align",
        name="ps_roi_align",
        public=roiops.ps_roi_align,
        reference=reference.ps_roi_align_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2),
        sweep=tuple(dict(sampling_ratio=sr) for sr in (-1, 0, 1, 2, 3)),
        short_sweep=(dict(sampling_ratio=-1), dict(sampling_ratio=2)),
        gradcheck_sweep=(dict(sampling_ratio=-1), dict(sampling_ratio=2)),
        argument_errors=_PS_ARGUMENT_ERRORS + _ALIGN_ARGUMENT_ERRORS[:3],
    ),
    OpConfig(
        id="ps_roi_pool",
        name="ps_roi_pool",
        public=roiops.ps_roi_pool,
        reference=reference.ps_roi_pool_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5),
        # Its own parameters are the common ones, which the tests vary (a single input serves one
        # output size, so there is no sweep over bin counts as roi_pool's).
        gradcheck_sweep=(dict(spatial_scale=1.0), dict(spatial_scale=0.5)),
        argument_errors=_PS_ARGUMENT_ERRORS,
    ),
    OpConfig(
        id="prroi_pool",
        name="prroi_pool",
        public=roiops.prroi_pool,
        reference=reference.prroi_pool_reference,
        defaults=dict(output_size=(3, 4), spatial_scale=0.5, aligned=True),
        # No sampling parameter: the sweep is over the offset and bin counts (bins of other widths).
        sweep=(dict(aligned=True), dict(aligned=False), dict(output_size=1), dict(output_size=(2, 5))),
        short_sweep=(dict(aligned=True), dict(aligned=False)),
        gradcheck_sweep=(dict(aligned=True), dict(aligned=False, spatial_scale=1.0)),
        argument_errors=_PRROI_ARGUMENT_ERRORS,
    ),
)
OPS = {op.id: op for op in OP_TABLE}


def over(sweep, **base):
    """The keyword arguments of each setting of a sweep on top of base (the setting wins)."""
    return [{**base, **setting} for setting in sweep]


def run_public(op, dev, x, rois, grad_seed, **overrides):
    """op's public function on dev (x, rois: tensors there), output and input gradient for a random
    upstream gradient in the output's layout (as a following channels-last layer would give it)."""
    x = x.detach().requires_grad_(True)
    with dev.python_layer():
        out = op(x, rois, **overrides)
        grad_out = on_device(dev, random_grad(out.shape, x.dtype, grad_seed), _layout_of(out))
        gx = input_grad(out, x, grad_out)
    return out.detach(), gx, grad_out


def _layout_of(t):
    return "channels_last" if is_channels_last(t) else "contiguous"


def oracle(op, dev, x, rois, grad_out, ref_dtype=None, **overrides):
    """What op must give on dev for x, rois (CPU tensors) and grad_out: the reference's output and input
    gradient on the CPU device (computed in ref_dtype, default x's), the CPU kernels' elsewhere (the
    cpu parameter of the same test checks those against the reference)."""
    if dev.name == "cpu":
        rd = ref_dtype or x.dtype
        xr = x.detach().to(rd).requires_grad_(True)
        ref = op.call_reference(xr, rois.to(rd), **overrides)
        return ref.detach(), input_grad(ref, xr, grad_out.cpu().to(rd))
    xr = x.detach().requires_grad_(True)
    out = op(xr, rois, **overrides)
    return out.detach(), input_grad(out, xr, grad_out.cpu())


def check_against_oracle(op, dev, x, rois, layout="contiguous", ref_dtype=None, seed=0, **overrides):
    """Runs op on dev for x (a CPU tensor, put in the given layout) and rois; compares the output and the
    input gradient with the oracle, and checks dtypes and the layout rule (a channels-last input gives
    a channels-last output and gradient, anything else NCHW-contiguous ones). Returns both, on the CPU."""
    x = to_layout(x, layout)
    out, gx, grad_out = run_public(op, dev, on_device(dev, x, layout), dev.to(rois), seed + 1, **overrides)
    ref, gref = oracle(op, dev, x, rois, grad_out, ref_dtype, **overrides)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
    assert out.shape == ref.shape
    assert out.dtype == x.dtype and gx.dtype == x.dtype
    out, gx = out.cpu(), gx.cpu()
    torch.testing.assert_close(out.to(ref.dtype), ref, **op.forward_tolerance(x.dtype))
    # (Several RoIs may pick the same cell: summation orders differ, hence a tolerance even for a max.)
    torch.testing.assert_close(gx.to(gref.dtype), gref, **tolerances(x.dtype))
    return out, gx
