"""prroi_pool's own tests (the standard ones run through its row of tests/op_table.py): hand-checked
cases (a constant map, f = x and f = y, a bin inside one cell); a second, independent oracle (dense
numerical integration of the map interpolated by grid_sample); RoIAlign's limit as its sampling grid
grows; the box gradient (float64 gradcheck on input and boxes, against the reference's autograd, on
every device, only when asked for); mmcv's conventions (the adapter against mmcv's formula written as
plain loops); hostile values; TorchScript and FX."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_properties_values import hostile_maps

import roiops
from roiops.compat import mmcv
from roiops.reference import prroi_pool_reference

from devices import ALL_DEVICES, CUDA_DEVICES, select
from helpers import make_input, make_rois
from test_properties import SCALES, _tolerance, examples, rois_on


@pytest.fixture(params=ALL_DEVICES)
def any_dev(request):
    return select(request)


@pytest.fixture(params=CUDA_DEVICES)
def cuda_dev(request):
    return select(request)


def _on(dev, *tensors):
    return [dev.to(t) for t in tensors]


# ---- hand-checked cases ------------------------------------------------------------------------

# Boxes whose bins stay within [0.5, size - 0.5] px at scale 1, aligned (cell centres 0 .. size - 1):
# there the interpolated map is the plain bilinear one, with no zero cells beyond the border.
INSIDE = torch.tensor(
    [[0, 0.5, 0.5, 9.5, 7.5], [0, 1.3, 2.2, 6.9, 4.05], [0, 3.25, 1.0, 3.75, 6.6], [0, 2.0, 2.0, 8.0, 3.0]],
    dtype=torch.float64,
)


@pytest.mark.parametrize("aligned", [True, False])
def test_a_constant_map_gives_the_constant(aligned):
    x = torch.full((1, 2, 8, 10), 2.5, dtype=torch.float64)
    rois = INSIDE if aligned else INSIDE - torch.tensor([0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    out = roiops.prroi_pool(x, rois, (3, 4), 1.0, aligned)
    torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=0, atol=1e-13)


def test_a_linear_map_gives_each_bin_centre():
    # f = x (and f = y) between cell centres: the mean over a bin is its centre's coordinate, in cells.
    H, W, (ph, pw) = 8, 10, (3, 4)
    cols = torch.arange(W, dtype=torch.float64).expand(H, W)
    rows = torch.arange(H, dtype=torch.float64)[:, None].expand(H, W)
    x = torch.stack([cols, rows])[None]
    out = roiops.prroi_pool(x, INSIDE, (ph, pw), 1.0)
    for k, (_, x1, y1, x2, y2) in enumerate(INSIDE.tolist()):
        centre_x = [x1 - 0.5 + (j + 0.5) * (x2 - x1) / pw for j in range(pw)]
        centre_y = [y1 - 0.5 + (i + 0.5) * (y2 - y1) / ph for i in range(ph)]
        expected_x = torch.tensor(centre_x, dtype=torch.float64).expand(ph, pw)
        expected_y = torch.tensor(centre_y, dtype=torch.float64)[:, None].expand(ph, pw)
        torch.testing.assert_close(out[k, 0], expected_x, rtol=0, atol=1e-12)
        torch.testing.assert_close(out[k, 1], expected_y, rtol=0, atol=1e-12)


def test_a_bin_inside_one_cell_is_the_bilinear_value_at_its_centre():
    # Bilinear within one cell square: its mean over a rectangle is its value at the rectangle's centre.
    x = torch.tensor([[[[1.0, 5.0, -2.0], [3.0, -4.0, 7.0], [0.5, 2.0, 6.0]]]], dtype=torch.float64)
    # aligned=False: cell (r, c) at (r, c); the box [1.2, 1.7] x [0.1, 0.6] lies in cell square (0..1, 1..2).
    out = roiops.prroi_pool(x, torch.tensor([[0, 1.2, 0.1, 1.7, 0.6]], dtype=torch.float64), 1, 1.0, False)
    cx, cy = 1.45 - 1, 0.35  # offsets within the square from cell (0, 1)
    v00, v01, v10, v11 = 5.0, -2.0, -4.0, 7.0  # (0, 1), (0, 2), (1, 1), (1, 2)
    expected = (1 - cy) * ((1 - cx) * v00 + cx * v01) + cy * ((1 - cx) * v10 + cx * v11)
    assert out.item() == pytest.approx(expected, abs=1e-14)


def test_boxes_of_no_area_give_zero_and_no_gradient():
    x = make_input((1, 3, 8, 8), torch.float64, seed=1).requires_grad_(True)
    rois = torch.tensor(
        [[0, 2.0, 2.0, 2.0, 6.0], [0, 2.0, 5.0, 6.0, 5.0], [0, 6.0, 2.0, 2.0, 6.0], [0, 3.0, 6.0, 5.0, 1.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    out = roiops.prroi_pool(x, rois, 2, 1.0)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(rois.grad) == 0


# ---- a second oracle: numerical integration ------------------------------------------------------


def _integrated(x, rois, output_size, scale, aligned, n=160):
    """Each bin's mean by the midpoint rule on n x n points, the map interpolated by grid_sample
    (align_corners=True: cell c at coordinate c; zeros padding: cells outside the map are 0)."""
    ph, pw = output_size
    H, W = x.shape[2:]
    out = torch.zeros(rois.shape[0], x.shape[1], ph, pw, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = (v * scale - offset for v in (x1, y1, x2, y2))
        if x2 <= x1 or y2 <= y1:
            continue
        bw, bh = (x2 - x1) / pw, (y2 - y1) / ph
        xs = x1 + (torch.arange(pw, dtype=torch.float64)[:, None] + t) * bw  # [pw, n]
        ys = y1 + (torch.arange(ph, dtype=torch.float64)[:, None] + t) * bh
        gx = (xs.reshape(-1) / (W - 1) * 2 - 1)[None, :].expand(ph * n, -1)
        gy = (ys.reshape(-1) / (H - 1) * 2 - 1)[:, None].expand(-1, pw * n)
        grid = torch.stack([gx, gy], dim=-1)[None]
        samples = F.grid_sample(x[int(b) : int(b) + 1].double(), grid, align_corners=True, padding_mode="zeros")
        out[k] = samples[0].reshape(-1, ph, n, pw, n).mean(dim=(2, 4))
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_equals_numerical_integration(aligned, scale):
    x = make_input((2, 3, 9, 11), torch.float64, seed=2)
    rois = make_rois(12, 2, 9, 11, scale, "mixed", torch.float64, seed=3)
    out = roiops.prroi_pool(x, rois, (2, 3), scale, aligned)
    # The midpoint rule is exact on each linear piece; the pieces' kinks cost O(1 / n^2).
    torch.testing.assert_close(out, _integrated(x, rois, (2, 3), scale, aligned), rtol=0, atol=2e-4)


def test_is_roi_align_in_the_limit_of_many_samples():
    # Inside the map the two interpolations agree; RoIAlign's mean of s x s samples tends to the integral.
    x = make_input((1, 4, 10, 12), torch.float64, seed=4)
    rois = INSIDE.clone()
    exact = roiops.prroi_pool(x, rois, (3, 4), 1.0)
    errors = [(roiops.roi_align(x, rois, (3, 4), 1.0, s, True) - exact).abs().max().item() for s in (4, 16, 64)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3, errors


# ---- box gradient --------------------------------------------------------------------------------

# Edges on and between cell boundaries, boxes partly outside the map, thin bins; none of zero size.
GRADCHECK_ROIS = torch.tensor(
    [
        [0, 1.0, 2.0, 5.0, 6.0],
        [1, 0.3, 1.7, 4.6, 3.1],
        [0, -2.4, -1.3, 3.2, 2.7],
        [1, 5.5, 4.25, 9.8, 8.6],
        [0, 2.2, 3.3, 2.45, 3.4],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_input_and_boxes(aligned, layout):
    x = make_input((2, 2, 6, 7), torch.float64, seed=5)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    coords = GRADCHECK_ROIS[:, 1:].clone().requires_grad_(True)

    def f(inp, c):
        return roiops.prroi_pool(inp, torch.cat([GRADCHECK_ROIS[:, :1], c], dim=1), (2, 3), 0.8, aligned)

    assert torch.autograd.gradcheck(f, (x, coords))


def test_box_gradient_equals_the_references_on_every_device(any_dev):
    x = make_input((2, 3, 9, 11), torch.float64, seed=6)
    rois = make_rois(15, 2, 9, 11, 0.5, "mixed", torch.float64, seed=7)
    grad = torch.randn(15, 3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    r_ref = rois.clone().requires_grad_(True)
    expected = torch.autograd.grad(prroi_pool_reference(x, r_ref, (3, 2), 0.5), r_ref, grad)[0]
    for layout in (torch.contiguous_format, torch.channels_last):
        x_dev, r_dev, g_dev = _on(any_dev, x.to(memory_format=layout), rois, grad)
        r_dev.requires_grad_(True)
        with any_dev.python_layer():
            out = roiops.prroi_pool(x_dev, r_dev, (3, 2), 0.5)
            (got,) = torch.autograd.grad(out, r_dev, g_dev)
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-9, atol=1e-10)
        assert torch.count_nonzero(got[:, 0]) == 0


def test_box_gradient_in_float32_and_the_list_form():
    x = make_input((2, 3, 9, 11), torch.float64, seed=9)
    rois = make_rois(10, 2, 9, 11, 1.0, "inside", torch.float64, seed=10)
    r_ref = rois.clone().requires_grad_(True)
    prroi_pool_reference(x, r_ref, 2, 1.0).sum().backward()
    boxes = [rois[rois[:, 0] == i, 1:].float().requires_grad_(True) for i in range(2)]
    roiops.prroi_pool(x.float(), boxes, 2, 1.0).sum().backward()
    got = torch.cat([b.grad for b in boxes]).double()
    expected = torch.cat([r_ref.grad[rois[:, 0] == i, 1:] for i in range(2)])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_gradients_only_where_asked():
    x = make_input((1, 2, 8, 8), torch.float64, seed=11)
    rois = torch.tensor([[0, 1.0, 1.5, 6.0, 7.0]], dtype=torch.float64)
    # Boxes only (box refinement): no input gradient is computed or returned.
    r = rois.clone().requires_grad_(True)
    out = roiops.prroi_pool(x, r, 2, 1.0)
    out.sum().backward()
    assert x.grad is None and torch.count_nonzero(r.grad) > 0
    # Input only: the boxes' gradient is not computed (the input is not even saved for it).
    xg = x.clone().requires_grad_(True)
    roiops.prroi_pool(xg, rois, 2, 1.0).sum().backward()
    assert torch.count_nonzero(xg.grad) > 0 and rois.grad is None


def test_deterministic_device_backward_is_reproducible(cuda_dev):
    dev = cuda_dev
    x = make_input((2, 8, 12, 12), seed=12)
    rois = torch.tensor([[0, 1.0, 2.0, 9.0, 8.0]] * 6 + [[1, 3.5, 0.5, 11.0, 10.0]] * 6)
    out, arg = dev.ops.prroi_pool(dev.to(x), dev.to(rois), 1.0, 3, 3, True)
    grad = dev.to(torch.randn(out.shape))
    args = (1.0, 3, 3, 2, 8, 12, 12, True, True)
    first = dev.ops._prroi_pool_backward(grad, dev.to(rois), arg, *args)
    boxes = dev.ops._prroi_pool_rois_backward(grad, dev.to(x), dev.to(rois), 1.0, 3, 3, True)
    for _ in range(3):
        assert torch.equal(first, dev.ops._prroi_pool_backward(grad, dev.to(rois), arg, *args))
        assert torch.equal(boxes, dev.ops._prroi_pool_rois_backward(grad, dev.to(x), dev.to(rois), 1.0, 3, 3, True))


# ---- mmcv's conventions ------------------------------------------------------------------------


def _mmcv_formula(x, rois, output_size, scale):
    """mmcv's PrRoIPool forward, written from its definition as plain loops: boxes scaled with no offset,
    width and height clamped at 0, a bin of no area 0; each bin the sum, over the unit squares between
    cell centres that it overlaps, of the overlap's area times the bilinear value at the overlap's
    centre (cells outside the map 0), divided by the bin's area."""
    ph, pw = output_size
    H, W = x.shape[2:]
    out = torch.zeros(rois.shape[0], x.shape[1], ph, pw, dtype=torch.float64)

    def cell(b, r, c):
        return x[b, :, r, c].double() if 0 <= r < H and 0 <= c < W else torch.zeros(x.shape[1], dtype=torch.float64)

    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        b = int(b)
        x1, y1, x2, y2 = x1 * scale, y1 * scale, x2 * scale, y2 * scale
        bw, bh = max(x2 - x1, 0.0) / pw, max(y2 - y1, 0.0) / ph
        if bw * bh == 0:
            continue
        for i in range(ph):
            for j in range(pw):
                bx1, by1 = x1 + j * bw, y1 + i * bh
                bx2, by2 = bx1 + bw, by1 + bh
                total = torch.zeros(x.shape[1], dtype=torch.float64)
                for sy in range(math.floor(by1), math.ceil(by2)):
                    for sx in range(math.floor(bx1), math.ceil(bx2)):
                        lo_x, hi_x = max(bx1, sx), min(bx2, sx + 1)
                        lo_y, hi_y = max(by1, sy), min(by2, sy + 1)
                        fx, fy = (lo_x + hi_x) / 2 - sx, (lo_y + hi_y) / 2 - sy
                        value = (1 - fy) * ((1 - fx) * cell(b, sy, sx) + fx * cell(b, sy, sx + 1)) + fy * (
                            (1 - fx) * cell(b, sy + 1, sx) + fx * cell(b, sy + 1, sx + 1)
                        )
                        total += (hi_x - lo_x) * (hi_y - lo_y) * value
                out[k, :, i, j] = total / (bw * bh)
    return out


def test_mmcv_adapter_follows_mmcv():
    x = make_input((2, 3, 7, 9), torch.float64, seed=13)
    rois = make_rois(15, 2, 7, 9, 0.5, "mixed", torch.float64, seed=14)
    expected = _mmcv_formula(x, rois, (2, 3), 0.5)
    torch.testing.assert_close(mmcv.prroi_pool(x, rois, (2, 3), 0.5), expected, rtol=0, atol=1e-12)
    module = mmcv.PrRoIPool((2, 3), 0.5)
    torch.testing.assert_close(module(x.float(), rois.float()).double(), expected, rtol=0, atol=2e-5)
    assert repr(module) == "PrRoIPool(output_size=(2, 3), spatial_scale=0.5)"
    assert repr(mmcv.PrRoIPool(7)) == "PrRoIPool(output_size=(7, 7), spatial_scale=1.0)"


def test_mmcv_adapter_gives_box_gradients():
    x = make_input((1, 2, 8, 8), torch.float64, seed=15)
    coords = torch.tensor([[1.3, 0.6, 5.2, 6.9]], dtype=torch.float64, requires_grad=True)

    def f(c):
        return mmcv.prroi_pool(x, torch.cat([torch.zeros(1, 1, dtype=torch.float64), c], dim=1), 2, 0.7)

    assert torch.autograd.gradcheck(f, (coords,))


# ---- hostile values and validation ---------------------------------------------------------------

DEVICES = [p.values[0] for p in ALL_DEVICES if p.values[0] is not None and p.values[0].torch_device == "cpu"]


@st.composite
def hostile_cases(draw):
    x = draw(hostile_maps())
    scale = draw(st.sampled_from(SCALES))
    rois = draw(rois_on(x, scale, draw(st.integers(0, 5))))
    output_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return x, rois, output_size, scale, draw(st.booleans()), draw(st.sampled_from(DEVICES))


@examples(40)
@given(case=hostile_cases())
def test_hostile_values_match_the_reference(case):
    # CPU kernels against the reference, emulated CUDA against the CPU kernels (bit for bit, NaN for NaN).
    x, rois, output_size, scale, aligned, dev = case
    with dev.python_layer():
        out = roiops.prroi_pool(x, rois, output_size, scale, aligned)
    if dev.emulated:
        expected = roiops.prroi_pool(x, rois, output_size, scale, aligned)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        return
    rd = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    expected = prroi_pool_reference(x.to(rd), rois.to(rd), output_size, scale, aligned).to(x.dtype)
    torch.testing.assert_close(out, expected, equal_nan=True, **_tolerance(x.dtype))


def test_absurd_boxes_cost_what_the_map_costs():
    # Bins of 1e8 cells: each touches at most the map's cells, so this is as quick as a box on the map.
    x = make_input((1, 4, 16, 16), torch.float64, seed=16)
    rois = torch.tensor([[0, -1e9, -1e9, 1e9, 1e9], [0, -5e8, 3.0, 5e8, 9.0], [0, 1e30, 1e30, 2e30, 2e30]])
    rois = rois.double()
    out = roiops.prroi_pool(x, rois, 7, 0.5)
    torch.testing.assert_close(out, prroi_pool_reference(x, rois, 7, 0.5), rtol=0, atol=1e-12)
    assert torch.count_nonzero(out[2]) == 0


def test_rois_of_the_wrong_width_and_bad_values_are_refused():
    x = make_input((1, 2, 6, 6), seed=17)
    with pytest.raises(ValueError, match=r"boxes must be a Tensor\[K, 5\]"):
        roiops.prroi_pool(x, torch.zeros(2, 6), 2)
    with pytest.raises(roiops.KernelValueError, match="boxes must be finite"):
        roiops.prroi_pool(x, torch.tensor([[0, 1.0, float("nan"), 3.0, 4.0]]), 2)
    with pytest.raises(TypeError, match="quantized input is not supported"):
        roiops.prroi_pool(torch.quantize_per_tensor(torch.randn(1, 4, 5, 5), 0.1, 0, torch.quint8), [], 2)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.roiops._prroi_pool_rois_backward(torch.zeros(1, 2, 3, 3), x, torch.zeros(1, 5), 1.0, 2, 2, True)


# ---- TorchScript and FX ------------------------------------------------------------------------


def test_torchscript_and_fx():
    x = make_input((2, 3, 9, 10), seed=18)
    rois = make_rois(6, 2, 9, 10, 1.0, "mixed", seed=19)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    for module in (roiops.PrRoIPool(3, 1.0), roiops.PrRoIPool((2, 3), 0.5, aligned=False), mmcv.PrRoIPool(2)):
        scripted = torch.jit.script(module)
        for b in (rois, boxes):
            torch.testing.assert_close(scripted(x, b), module(x, b), rtol=0, atol=0)
    graph = torch.fx.symbolic_trace(roiops.PrRoIPool(3, 1.0)).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"] == [roiops.prroi_pool]
