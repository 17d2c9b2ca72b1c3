"""Shared helpers of the roiops tests: random feature maps and boxes, layouts, gradients, tolerances.
Plain functions (``from helpers import ...``), usable inside parametrized tests; fixtures live in conftest.py.
"""

import zlib

import torch

import roiops  # noqa: F401  (registers torch.ops.roiops)

BOX_KINDS = ("inside", "partial", "outside", "inverted", "zero", "mixed")
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")


def make_input(shape, dtype=torch.float32, layout="contiguous", seed=0, distinct=False):
    """A random [N, C, H, W] map in the given layout (values are the same whatever the layout).

    distinct=True gives values that are pairwise distinct and well separated (a shuffled ramp), so
    max pooling has no near-ties.
    """
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    if distinct:
        base = (torch.randperm(n, generator=g).to(torch.float64) / max(n, 1) * 4 - 2).reshape(shape)
    else:
        base = torch.randn(shape, generator=g, dtype=torch.float64)
    base = base.to(dtype)
    return to_layout(base, layout)


def to_layout(x, layout):
    """Returns a tensor equal to x in the given memory layout, on x's device (built there: .to() keeps
    only dense strides)."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        y = x.contiguous(memory_format=torch.channels_last)
        return y
    if layout == "sliced":
        # Every other column of a wider buffer, offset by one: non-contiguous in all formats.
        N, C, H, W = x.shape
        big = x.new_zeros((N, C, H, 2 * W + 1))
        big[:, :, :, 1::2] = x
        y = big[:, :, :, 1::2]
        assert not y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
        return y
    if layout == "transposed":
        # A transposed view of a [N, C, W, H] buffer (H and W strides swapped).
        y = x.transpose(2, 3).contiguous().transpose(2, 3)
        assert not y.is_contiguous()
        return y
    raise ValueError(layout)


def on_device(dev, x, layout="contiguous"):
    """x (a CPU tensor) on dev (a devices.Device) in the given layout."""
    return to_layout(dev.to(x.contiguous()), layout)


def is_channels_last(t):
    """Whether t is channels-last and not also NCHW-contiguous: the kernels' rule for keeping a map
    channels-last (roiops._ops.memory_format)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def make_rois(num, batch_size, height, width, spatial_scale, kind="mixed", dtype=torch.float32, seed=0):
    """Random boxes [num, 5] in input-image coordinates for a map of height x width cells.

    kind: "inside" (wholly inside the map), "partial" (crossing a map border), "outside" (wholly
    outside), "inverted" (x2 < x1 and/or y2 < y1), "zero" (zero width and/or height), "mixed" (all).
    """
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale

    def u(lo, hi, n):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    if kind == "mixed":
        kinds = ("inside", "partial", "outside", "inverted", "zero")
        parts = [
            make_rois(
                num // 5 + (i < num % 5), batch_size, height, width, spatial_scale, k, torch.float64, seed * 7 + i
            )
            for i, k in enumerate(kinds)
        ]
        rois = torch.cat(parts)[torch.randperm(num, generator=g)]
        return rois.to(dtype)

    if kind == "inside":
        x1, y1 = u(0, img_w * 0.8, num), u(0, img_h * 0.8, num)
        x2 = torch.minimum(x1 + u(0.1, img_w, num), torch.full_like(x1, img_w - 1e-3))
        y2 = torch.minimum(y1 + u(0.1, img_h, num), torch.full_like(y1, img_h - 1e-3))
    elif kind == "partial":
        x1, y1 = u(-img_w * 0.5, img_w * 0.5, num), u(-img_h * 0.5, img_h * 0.5, num)
        x2, y2 = x1 + u(img_w * 0.6, img_w * 1.2, num), y1 + u(img_h * 0.6, img_h * 1.2, num)
    elif kind == "outside":
        # Left/above the map (beyond -1 cell) or right/below it (beyond the last cell + 1).
        side = torch.rand(num, generator=g) < 0.5
        x1 = torch.where(side, u(-3 * img_w, -2 * img_w, num), u(img_w * 1.3, img_w * 2, num))
        y1 = u(-img_h * 0.5, img_h * 1.5, num)
        x2 = x1 + u(0.1, img_w * 0.5, num)
        x2 = torch.where(side, torch.minimum(x2, torch.full_like(x2, -2.0 / spatial_scale)), x2)
        y2 = y1 + u(0.1, img_h, num)
    elif kind == "inverted":
        x1, y1 = u(0, img_w, num), u(0, img_h, num)
        x2 = x1 - u(0.1, img_w * 0.6, num)
        y2 = torch.where(torch.rand(num, generator=g) < 0.5, y1 - u(0.1, img_h * 0.6, num), y1 + u(0.1, img_h, num))
    elif kind == "zero":
        x1, y1 = u(0, img_w, num), u(0, img_h, num)
        which = torch.randint(0, 3, (num,), generator=g)
        x2 = torch.where(which == 0, x1, x1 + u(0.5, img_w * 0.5, num))
        y2 = torch.where(which == 1, y1, y1 + u(0.5, img_h * 0.5, num))
        x2 = torch.where(which == 2, x1, x2)
        y2 = torch.where(which == 2, y1, y2)
    else:
        raise ValueError(kind)
    b = torch.randint(0, batch_size, (num,), generator=g).to(torch.float64)
    return torch.stack([b, x1, y1, x2, y2], dim=1).to(dtype)


def random_grad(shape, dtype, seed, channels_last=False):
    """A random upstream gradient (a CPU tensor), channels-last if asked."""
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return grad.contiguous(memory_format=torch.channels_last) if channels_last else grad


def seed_of(*args):
    """A seed that differs between test parameters (and stays the same between runs)."""
    return zlib.crc32(repr(args).encode()) % 100003


def input_grad(out, inp, grad_out):
    """d(out . grad_out)/d(inp) by autograd; zeros if out does not depend on inp."""
    (g,) = torch.autograd.grad(out, inp, grad_out, allow_unused=True)
    return torch.zeros_like(inp) if g is None else g


def tolerances(dtype):
    return {
        torch.float64: dict(rtol=1e-9, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
    }[dtype]
