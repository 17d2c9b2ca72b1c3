"""Pure-PyTorch reference implementations of RoIAlign and RoIPool ("the pure-PyTorch path").

These functions are an independent oracle for the compiled kernels: they are written from the
operator definition in docs/semantics.md (torchvision-compatible), using only tensor operations,
so they run on any device PyTorch supports and are differentiable by autograd with respect to
``input`` (which gives reference gradients). Boxes receive no gradient, except in Precise RoI
Pooling, whose output is differentiable in the box coordinates too.

Precision: float32 and float64 inputs are computed in their own dtype (the box geometry too, so the
discrete decisions -- sample grid sizes, floor() of sample coordinates, rounded RoIPool edges -- are
made in the same arithmetic as the kernels); float16 / bfloat16 inputs are computed in float32 and
the result is rounded back to the input dtype.

Speed: RoIs are grouped by their sample grid (RoIAlign) or window size (RoIPool) and each group is
evaluated with batched gathers, in chunks of bounded memory. It is much slower than the compiled
kernels, but fast enough for tests and for benchmarking as a baseline.
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "roi_align_reference",
    "roi_align_rotated_reference",
    "roi_pool_reference",
    "ps_roi_align_reference",
    "ps_roi_pool_reference",
    "prroi_pool_reference",
]

# Upper bound on the number of gathered elements held per chunk (per tap).
_CHUNK_ELEMENTS = 1 << 22


def _pair(output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    h, w = output_size
    return int(h), int(w)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _groups(keys: Tensor, per_item_elements: "callable") -> List[Tuple[Tuple[int, ...], Tensor]]:
    """Splits RoI indices into groups of equal key (rows of `keys`), each in chunks of bounded size."""
    out = []
    if keys.shape[0] == 0:
        return out
    uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
    for g in range(uniq.shape[0]):
        key = tuple(int(v) for v in uniq[g].tolist())
        idx = (inverse == g).nonzero().squeeze(1)
        step = max(1, _CHUNK_ELEMENTS // max(1, per_item_elements(key)))
        for s in range(0, idx.numel(), step):
            out.append((key, idx[s : s + step]))
    return out


def _zeros(like: Tensor, shape) -> Tensor:
    """Zeros that stay in the autograd graph of `like` (with a zero gradient), so that callers can
    always differentiate the output, even when no RoI has a sample."""
    return like.new_zeros(shape) + like.reshape(-1)[:0].sum()


def _assemble(pieces: List[Tuple[Tensor, Tensor]], shape, like: Tensor) -> Tensor:
    """Puts per-group results (indices, values) back into RoI order."""
    if not pieces:
        return _zeros(like, shape)
    index = torch.cat([i for i, _ in pieces])
    values = torch.cat([v for _, v in pieces])
    return values[torch.argsort(index)]


def _axis_taps(coord: Tensor, size: int):
    """Bilinear taps along one axis: (low index, high index, weight of low, weight of high, in-map mask)."""
    valid = ~((coord < -1) | (coord > size))
    # Clamping to [0, size] changes nothing where valid (values above size-1 end up at size-1 below).
    c = coord.clamp(min=0, max=size)
    low = c.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    lw = c - low.to(c.dtype)
    hw = 1 - lw
    return low, high, hw, lw, valid


def _max_rule(s: Tensor) -> Tensor:
    """The max rule (docs/semantics.md) along the last dim, whose order is the visiting order: the
    index of the first NaN if there is one (as in max_pool2d), else of the first maximum."""
    nan = s.isnan()
    first_nan = nan.to(torch.uint8).argmax(dim=-1, keepdim=True)
    first_max = s.masked_fill(nan, 0).argmax(dim=-1, keepdim=True)  # (used only without NaN)
    return torch.where(nan.any(dim=-1, keepdim=True), first_nan, first_max)


def roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    pool_mode: str = "avg",
) -> Tensor:
    """RoIAlign in pure PyTorch (reference / fallback path).

    Args:
        input: Tensor[N, C, H, W] of a floating dtype (any layout, any device).
        rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2) in input-image coordinates. Not validated
            (use :func:`roiops.roi_align` for checked arguments).
        output_size: int or (pooled_h, pooled_w).
        spatial_scale: feature-map cells per image pixel.
        sampling_ratio: samples per bin and axis; <= 0 for adaptive, ceil(roi size / pooled size).
        aligned: shift boxes by -0.5 cell (pixel-centre convention); otherwise boxes are at least 1 cell.
        pool_mode: "avg" (mean of the bin's samples) or "max" (maximum over the bin's samples; samples
            outside the map count as 0, the first NaN wins, else the first maximum, an empty grid gives
            0; the gradient goes to the 4 bilinear taps of the winning sample). A sample's value is its
            4-tap weighted sum in IEEE arithmetic, so a NaN in any tap it reads, or an inf under a
            weight of 0, makes it NaN.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] (contiguous), differentiable w.r.t. ``input``.
    """
    if pool_mode not in ("avg", "max"):
        raise ValueError(f"roi_align_reference: unknown pool_mode {pool_mode!r}")
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    cdtype = _compute_dtype(input.dtype)
    feat = input.to(cdtype)
    r = rois.detach().to(device=input.device, dtype=cdtype)

    offset = 0.5 if aligned else 0.0
    batch = r[:, 0].long()
    start_x = r[:, 1] * spatial_scale - offset
    start_y = r[:, 2] * spatial_scale - offset
    end_x = r[:, 3] * spatial_scale - offset
    end_y = r[:, 4] * spatial_scale - offset
    roi_w = end_x - start_x
    roi_h = end_y - start_y
    if not aligned:
        roi_w = roi_w.clamp(min=1)
        roi_h = roi_h.clamp(min=1)
    bin_w = roi_w / pw
    bin_h = roi_h / ph
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=r.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).long()
        grid_w = torch.ceil(roi_w / pw).long()
    # count = max(grid_h * grid_w, 1) uses the raw grids; a non-positive grid has no samples at all.
    count = (grid_h * grid_w).clamp(min=1)
    keys = torch.stack([grid_h.clamp(min=0), grid_w.clamp(min=0)], dim=1)

    ar_h = torch.arange(ph, device=r.device, dtype=cdtype)
    ar_w = torch.arange(pw, device=r.device, dtype=cdtype)
    pieces = []
    for (gh, gw), idx in _groups(keys, lambda k: k[0] * k[1] * ph * pw * C):
        G = idx.numel()
        if gh == 0 or gw == 0:
            pieces.append((idx, _zeros(feat, (G, C, ph, pw))))
            continue
        sy, sx = start_y[idx], start_x[idx]
        bh, bw = bin_h[idx], bin_w[idx]
        sub_y = torch.arange(gh, device=r.device, dtype=cdtype) + 0.5
        sub_x = torch.arange(gw, device=r.device, dtype=cdtype) + 0.5
        # y = start + p * bin + (i + 0.5) * bin / grid, evaluated in that order.
        y = (sy[:, None] + ar_h[None, :] * bh[:, None])[:, :, None] + (sub_y[None, :] * bh[:, None] / gh)[:, None, :]
        x = (sx[:, None] + ar_w[None, :] * bw[:, None])[:, :, None] + (sub_x[None, :] * bw[:, None] / gw)[:, None, :]
        y = y.reshape(G, ph * gh)
        x = x.reshape(G, pw * gw)
        y_lo, y_hi, hy, ly, vy = _axis_taps(y, H)
        x_lo, x_hi, hx, lx, vx = _axis_taps(x, W)

        b = batch[idx][:, None, None]

        def tap(yi, xi):
            # -> [G, ph*gh, pw*gw, C]
            return feat[b, :, yi[:, :, None], xi[:, None, :]]

        w1 = (hy[:, :, None] * hx[:, None, :])[..., None]
        w2 = (hy[:, :, None] * lx[:, None, :])[..., None]
        w3 = (ly[:, :, None] * hx[:, None, :])[..., None]
        w4 = (ly[:, :, None] * lx[:, None, :])[..., None]
        val = w1 * tap(y_lo, x_lo) + w2 * tap(y_lo, x_hi) + w3 * tap(y_hi, x_lo) + w4 * tap(y_hi, x_hi)
        valid = (vy[:, :, None] & vx[:, None, :])[..., None]
        val = torch.where(valid, val, torch.zeros((), dtype=cdtype, device=val.device))
        val = val.reshape(G, ph, gh, pw, gw, C)
        if pool_mode == "avg":
            out = val.sum(dim=(2, 4)) / count[idx].to(cdtype)[:, None, None, None]
            out = out.permute(0, 3, 1, 2)
        else:
            # Samples of a bin in (iy, ix) row-major order.
            s = val.permute(0, 5, 1, 3, 2, 4).reshape(G, C, ph, pw, gh * gw)
            win = _max_rule(s.detach())
            out = s.gather(-1, win).squeeze(-1)
        pieces.append((idx, out))

    output = _assemble(pieces, (K, C, ph, pw), feat)
    return output.to(input.dtype).contiguous()


def roi_align_rotated_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign in pure PyTorch (reference path), from its definition in docs/semantics.md.

    Each box is laid out about its centre: bin (ph, pw) holds a grid of samples at (yy, xx) =
    (-h/2 + ph * bin_h + (iy + 0.5) * bin_h / grid_h, the same along x) relative to the centre; each
    sample is turned by the angle, y = yy cos - xx sin + centre y, x = yy sin + xx cos + centre x, and
    read by roi_align's bilinear rule (0 outside [-1, H] x [-1, W]). A bin is the mean of its samples.

    Args:
        input: Tensor[N, C, H, W] of a floating dtype.
        rois: Tensor[K, 6] of (batch index, centre x, centre y, width, height, angle in degrees). Not
            validated.
        output_size: int or (pooled_h, pooled_w).
        spatial_scale: feature-map cells per image pixel.
        sampling_ratio: samples per bin and axis; <= 0 for adaptive, ceil(roi size / pooled size).
        aligned: shift the centre by -0.5 cell; otherwise sizes are at least 1 cell.
        clockwise: negate the angle.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] (contiguous), differentiable w.r.t. ``input``.
    """
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    cdtype = _compute_dtype(input.dtype)
    feat = input.to(cdtype)
    r = rois.detach().to(device=input.device, dtype=cdtype)

    offset = 0.5 if aligned else 0.0
    batch = r[:, 0].long()
    center_x = r[:, 1] * spatial_scale - offset
    center_y = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale
    roi_h = r[:, 4] * spatial_scale
    if not aligned:
        roi_w = roi_w.clamp(min=1)
        roi_h = roi_h.clamp(min=1)
    # Degrees to radians in float64, rounded once to the compute dtype; cos and sin of that angle in
    # float64, rounded once (the kernels' arithmetic).
    theta = (r[:, 5].double() * math.pi / 180.0).to(cdtype)
    if clockwise:
        theta = -theta
    cos_t = torch.cos(theta.double()).to(cdtype)
    sin_t = torch.sin(theta.double()).to(cdtype)
    start_y, start_x = -roi_h / 2, -roi_w / 2
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=r.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).clamp(min=0).long()
        grid_w = torch.ceil(roi_w / pw).clamp(min=0).long()
    count = (grid_h * grid_w).clamp(min=1)
    keys = torch.stack([grid_h, grid_w], dim=1)

    ar_h = torch.arange(ph, device=r.device, dtype=cdtype)
    ar_w = torch.arange(pw, device=r.device, dtype=cdtype)
    pieces = []
    for (gh, gw), idx in _groups(keys, lambda k: k[0] * k[1] * ph * pw * C):
        G = idx.numel()
        if gh == 0 or gw == 0:
            pieces.append((idx, _zeros(feat, (G, C, ph, pw))))
            continue
        bh, bw = bin_h[idx], bin_w[idx]
        sub_y = torch.arange(gh, device=r.device, dtype=cdtype) + 0.5
        sub_x = torch.arange(gw, device=r.device, dtype=cdtype) + 0.5
        # In the box, about its centre: [G, ph, gh] and [G, pw, gw].
        yy = (start_y[idx][:, None] + ar_h[None, :] * bh[:, None])[:, :, None] + (sub_y[None, :] * bh[:, None] / gh)[
            :, None, :
        ]
        xx = (start_x[idx][:, None] + ar_w[None, :] * bw[:, None])[:, :, None] + (sub_x[None, :] * bw[:, None] / gw)[
            :, None, :
        ]
        # Turned and moved: [G, ph, gh, pw, gw].
        c = cos_t[idx][:, None, None, None, None]
        s = sin_t[idx][:, None, None, None, None]
        yy = yy[:, :, :, None, None]
        xx = xx[:, None, None, :, :]
        y = yy * c - xx * s + center_y[idx][:, None, None, None, None]
        x = yy * s + xx * c + center_x[idx][:, None, None, None, None]
        y_lo, y_hi, hy, ly, vy = _axis_taps(y, H)
        x_lo, x_hi, hx, lx, vx = _axis_taps(x, W)
        b = batch[idx][:, None, None, None, None]

        def tap(yi, xi):
            return feat[b, :, yi, xi]  # [G, ph, gh, pw, gw, C]

        val = (
            (hy * hx)[..., None] * tap(y_lo, x_lo)
            + (hy * lx)[..., None] * tap(y_lo, x_hi)
            + (ly * hx)[..., None] * tap(y_hi, x_lo)
            + (ly * lx)[..., None] * tap(y_hi, x_hi)
        )
        val = torch.where((vy & vx)[..., None], val, torch.zeros((), dtype=cdtype, device=val.device))
        out = val.sum(dim=(2, 4)) / count[idx].to(cdtype)[:, None, None, None]
        pieces.append((idx, out.permute(0, 3, 1, 2)))

    output = _assemble(pieces, (K, C, ph, pw), feat)
    return output.to(input.dtype).contiguous()


def _c_round(v: Tensor) -> Tensor:
    """C round(): halves away from zero (exact in floating point)."""
    t = torch.trunc(v)
    frac = (v - t).abs()
    return t + torch.sign(v) * (frac >= 0.5).to(v.dtype)


def roi_pool_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool in pure PyTorch (reference / fallback path).

    Each box is scaled and rounded to whole cells (C round, halves away from zero), split into
    output_size bins with floor/ceil edges (clamped to the map), and each bin takes its maximum
    (the first NaN in row-major order if any, else the first maximum; an empty bin gives 0; the
    gradient goes to the winning cell).

    Args:
        input: Tensor[N, C, H, W] of a floating dtype.
        rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2). Not validated.
        output_size: int or (pooled_h, pooled_w).
        spatial_scale: feature-map cells per image pixel.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] (contiguous), differentiable w.r.t. ``input``.
    """
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    gdtype = _compute_dtype(input.dtype)  # geometry dtype; max pooling itself is exact in any dtype
    r = rois.detach().to(device=input.device, dtype=gdtype)
    batch = r[:, 0].long()
    x1 = _c_round(r[:, 1] * spatial_scale).long()
    y1 = _c_round(r[:, 2] * spatial_scale).long()
    x2 = _c_round(r[:, 3] * spatial_scale).long()
    y2 = _c_round(r[:, 4] * spatial_scale).long()
    roi_w = (x2 - x1 + 1).clamp(min=1)
    roi_h = (y2 - y1 + 1).clamp(min=1)
    bin_w = roi_w.to(gdtype) / pw
    bin_h = roi_h.to(gdtype) / ph
    ar_h = torch.arange(ph, device=r.device, dtype=gdtype)
    ar_w = torch.arange(pw, device=r.device, dtype=gdtype)
    hstart = (torch.floor(ar_h[None, :] * bin_h[:, None]).long() + y1[:, None]).clamp(0, H)
    hend = (torch.ceil((ar_h[None, :] + 1) * bin_h[:, None]).long() + y1[:, None]).clamp(0, H)
    wstart = (torch.floor(ar_w[None, :] * bin_w[:, None]).long() + x1[:, None]).clamp(0, W)
    wend = (torch.ceil((ar_w[None, :] + 1) * bin_w[:, None]).long() + x1[:, None]).clamp(0, W)
    win_h = (hend - hstart).clamp(min=0)  # [K, ph]
    win_w = (wend - wstart).clamp(min=0)  # [K, pw]
    if K > 0:
        keys = torch.stack([win_h.max(dim=1).values, win_w.max(dim=1).values], dim=1)
    else:
        keys = torch.zeros((0, 2), dtype=torch.long, device=r.device)

    neg_inf = torch.tensor(float("-inf"), dtype=input.dtype, device=input.device)
    zero = torch.zeros((), dtype=input.dtype, device=input.device)
    pieces = []
    for (mh, mw), idx in _groups(keys, lambda k: k[0] * k[1] * ph * pw * C):
        G = idx.numel()
        if mh == 0 or mw == 0:
            pieces.append((idx, _zeros(input, (G, C, ph, pw))))
            continue
        rows = hstart[idx][:, :, None] + torch.arange(mh, device=r.device)  # [G, ph, mh]
        cols = wstart[idx][:, :, None] + torch.arange(mw, device=r.device)  # [G, pw, mw]
        rvalid = rows < hend[idx][:, :, None]
        cvalid = cols < wend[idx][:, :, None]
        rows = rows.clamp(0, max(H - 1, 0))
        cols = cols.clamp(0, max(W - 1, 0))
        b = batch[idx][:, None, None, None, None]
        # -> [G, ph, mh, pw, mw, C]
        vals = input[b, :, rows[:, :, :, None, None], cols[:, None, None, :, :]]
        valid = (rvalid[:, :, :, None, None] & cvalid[:, None, None, :, :])[..., None]
        vals = torch.where(valid, vals, neg_inf)
        s = vals.permute(0, 5, 1, 3, 2, 4).reshape(G, C, ph, pw, mh * mw)
        win = _max_rule(s.detach())
        out = s.gather(-1, win).squeeze(-1)
        empty = (win_h[idx][:, :, None] == 0) | (win_w[idx][:, None, :] == 0)  # [G, ph, pw]
        out = torch.where(empty[:, None, :, :], zero, out)
        pieces.append((idx, out))

    return _assemble(pieces, (K, C, ph, pw), input).contiguous()


def _ps_pick(pooled: Tensor, ph: int, pw: int) -> Tensor:
    """From [K, C, ph, pw] pooled over every input channel, the position-sensitive output
    [K, C / (ph * pw), ph, pw]: bin (i, j) of channel c is bin (i, j) of input channel (c * ph + i) * pw + j."""
    K, C = pooled.shape[:2]
    grouped = pooled.reshape(K, C // (ph * pw), ph * pw, ph * pw)  # [K, c, input channel (i, j), bin (i, j)]
    return grouped.diagonal(dim1=2, dim2=3).reshape(K, C // (ph * pw), ph, pw)


def ps_roi_align_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign in pure PyTorch: RoIAlign (avg, aligned=True) of every input channel,
    of which bin (i, j) of output channel c keeps input channel (c * ph + i) * pw + j.

    Args:
        input: Tensor[N, C, H, W], C a multiple of ph * pw. rois: Tensor[K, 5]. Not validated.

    Returns:
        Tensor[K, C / (ph * pw), ph, pw] (contiguous), differentiable w.r.t. ``input``.
    """
    ph, pw = _pair(output_size)
    pooled = roi_align_reference(input, rois, (ph, pw), spatial_scale, sampling_ratio, True, "avg")
    return _ps_pick(pooled, ph, pw).contiguous()


def ps_roi_pool_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoIPool in pure PyTorch, box by box and bin by bin: the box rounded to whole
    cells (C round), of extent end - start (at least 1), cut into ph x pw bins with floor/ceil edges
    clamped to the map; bin (i, j) of output channel c is the mean of input channel (c * ph + i) * pw + j
    over the bin's cells, 0 for an empty bin.

    Args:
        input: Tensor[N, C, H, W], C a multiple of ph * pw. rois: Tensor[K, 5]. Not validated.

    Returns:
        Tensor[K, C / (ph * pw), ph, pw] (contiguous), differentiable w.r.t. ``input``.
    """
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    cdtype = _compute_dtype(input.dtype)
    feat = input.to(cdtype)
    r = rois.detach().to(cdtype).cpu()
    channels = torch.arange(C // (ph * pw), device=input.device) * (ph * pw)
    rows = []
    for k in range(r.shape[0]):
        b = int(r[k, 0])
        x1, y1, x2, y2 = (int(_c_round(v * spatial_scale)) for v in r[k, 1:])
        bin_w = torch.tensor(max(x2 - x1, 1), dtype=cdtype) / pw
        bin_h = torch.tensor(max(y2 - y1, 1), dtype=cdtype) / ph
        bins = []
        for i in range(ph):
            h0 = min(max(int(torch.floor(i * bin_h)) + y1, 0), H)
            h1 = min(max(int(torch.ceil((i + 1) * bin_h)) + y1, 0), H)
            for j in range(pw):
                w0 = min(max(int(torch.floor(j * bin_w)) + x1, 0), W)
                w1 = min(max(int(torch.ceil((j + 1) * bin_w)) + x1, 0), W)
                cells = feat[b, channels + i * pw + j, h0:h1, w0:w1]
                bins.append(cells.mean(dim=(1, 2)) if cells[0].numel() else _zeros(feat, (channels.numel(),)))
        rows.append(torch.stack(bins, dim=1).reshape(-1, ph, pw))
    if not rows:
        return _zeros(feat, (0, C // (ph * pw), ph, pw)).to(input.dtype)
    return torch.stack(rows).to(input.dtype).contiguous()


def _hat_antiderivative(u: Tensor) -> Tensor:
    """The integral of hat(t) = max(0, 1 - |t|) from -inf to u."""
    u = u.clamp(-1, 1)
    return torch.where(u < 0, (u + 1) ** 2 / 2, 1 - (1 - u) ** 2 / 2)


def _prroi_axis_weights(lo: Tensor, hi: Tensor, size: int) -> Tensor:
    """[..., size]: the mean over [lo, hi] of hat(x - c) for each cell c of one axis (hat(lo - c) where
    lo == hi), computed in float64 from edges rounded as the kernels round them."""
    lo, hi = lo.double()[..., None], hi.double()[..., None]
    cells = torch.arange(size, dtype=torch.float64, device=lo.device)
    width = hi - lo
    thin = width <= 0
    mean = (_hat_antiderivative(hi - cells) - _hat_antiderivative(lo - cells)) / torch.where(thin, 1.0, width)
    point = (1 - (lo - cells).abs()).clamp(min=0)
    return torch.where(thin, point, mean)


def prroi_pool_reference(
    input: Tensor,
    rois: Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    """Precise RoI Pooling in pure PyTorch, from its definition in docs/semantics.md: bin (i, j) of a box
    is the mean over the bin of f(x, y) = sum over cells (r, c) of v[r, c] * hat(y - r) * hat(x - c),
    the map interpolated bilinearly between cell centres with cells outside the map 0. Separable: the
    mean is wy^T V wx, wx[c] the mean of hat(x - c) over the bin's columns (through the antiderivative
    of hat, a formula independent of the kernels'); a box of no area gives 0.

    Args:
        input: Tensor[N, C, H, W] of a floating dtype.
        rois: Tensor[K, 5] of (batch index, x1, y1, x2, y2). Not validated.
        output_size: int or (pooled_h, pooled_w).
        spatial_scale: feature-map cells per image pixel.
        aligned: shift the box by -0.5 cell (cell c's value at the centre of pixel cell c); False: no
            shift (mmcv's PrRoIPool).

    Returns:
        Tensor[K, C, pooled_h, pooled_w] (contiguous), differentiable w.r.t. ``input`` **and** the box
        coordinates of ``rois`` (autograd through the weights: an oracle for the box gradient).
    """
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    cdtype = _compute_dtype(input.dtype)
    r = rois.to(device=input.device, dtype=cdtype)
    offset = 0.5 if aligned else 0.0
    # Edges in the compute dtype, as the kernels round them.
    start_x, start_y = r[:, 1] * spatial_scale - offset, r[:, 2] * spatial_scale - offset
    bin_w = (r[:, 3] * spatial_scale - offset - start_x) / pw
    bin_h = (r[:, 4] * spatial_scale - offset - start_y) / ph
    area = (bin_w > 0) & (bin_h > 0) & torch.isfinite(bin_w) & torch.isfinite(bin_h)
    ar_w = torch.arange(pw, device=r.device, dtype=cdtype)
    ar_h = torch.arange(ph, device=r.device, dtype=cdtype)
    wx = _prroi_axis_weights(
        start_x[:, None] + ar_w * bin_w[:, None], start_x[:, None] + (ar_w + 1) * bin_w[:, None], W
    )
    wy = _prroi_axis_weights(
        start_y[:, None] + ar_h * bin_h[:, None], start_y[:, None] + (ar_h + 1) * bin_h[:, None], H
    )
    keep = area.to(torch.float64)[:, None, None]
    wx, wy = wx * keep, wy * keep  # [K, pw, W], [K, ph, H]
    batch = r[:, 0].detach().long()
    feat = input.double()
    finite = bool(torch.isfinite(feat).all())
    step = max(1, _CHUNK_ELEMENTS // max(1, C * H * W))
    parts = []
    for s in range(0, K, step):
        ys, xs, v = wy[s : s + step], wx[s : s + step], feat[batch[s : s + step]]
        if finite:
            parts.append(torch.einsum("kir,kcrs,kjs->kcij", ys, v, xs))
        else:
            parts.append(_weighted_sum_ieee(ys, v, xs))
    out = torch.cat(parts) if parts else _zeros(feat, (0, C, ph, pw))
    return out.to(input.dtype).contiguous()


def _weighted_sum_ieee(wy: Tensor, v: Tensor, wx: Tensor) -> Tensor:
    """einsum("kir,kcrs,kjs->kcij") as a sum over the cells of positive weight only, with IEEE rules for
    the non-finite ones (a cell of weight 0 is not read, so its inf or NaN does not count): NaN if any
    read cell is NaN or reads include both infinities, else +-inf if one is read, else the finite sum."""
    finite = torch.isfinite(v)
    total = torch.einsum("kir,kcrs,kjs->kcij", wy, torch.where(finite, v, 0.0), wx)
    ry, rx = (wy > 0).double(), (wx > 0).double()

    def read(mask):
        return torch.einsum("kir,kcrs,kjs->kcij", ry, mask.double(), rx) > 0

    nan, pos, neg = read(v.isnan()), read(v == float("inf")), read(v == float("-inf"))
    total = torch.where(pos, float("inf"), torch.where(neg, float("-inf"), total))
    return torch.where(nan | (pos & neg), float("nan"), total)
