"""Pasting fixed-size mask predictions back into full images.

A mask of M x M cells predicted for a box [x1, y1, x2, y2] covers that box exactly: cell (a, b) has its
centre at (x1 + (b + 0.5) * (x2 - x1) / M, y1 + (a + 0.5) * (y2 - y1) / M), and image pixel (i, j) has its
centre at (j + 0.5, i + 0.5). A pixel whose centre lies in the box (x1 <= x < x2, y1 <= y < y2) takes the
bilinear interpolation of the cells at its centre, clamped to the outer cell centres (the values
``grid_sample(..., align_corners=False, padding_mode="border")`` gives); a pixel whose centre lies outside
the box is 0. So a mask of ones pastes to exactly the pixels of the box, whatever the mask and box sizes
(interpolating against zeros outside the mask instead would round off the corners of every box larger
than the mask and shrink masks by up to half a cell). Bilinear interpolation is separable, so every mask is pasted with two batched matrix products
(rows x mask x columns): no loop over masks or pixels, and memory O(N * (H + W) * M) besides the output.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["paste_masks", "interpolation_matrix"]


def interpolation_matrix(starts: Tensor, ends: Tensor, cells: int, length: int) -> Tensor:
    """Tensor[N, length, cells]: bilinear weights of the ``cells`` mask cells spread over [start, end)
    for the pixel centres 0.5, 1.5, ..., length - 0.5 along one axis: clamped to the first/last cell
    centre inside [start, end), all zero for pixel centres outside it."""
    extent = (ends - starts).clamp(min=torch.finfo(starts.dtype).eps)
    centres = torch.arange(length, device=starts.device, dtype=starts.dtype) + 0.5
    # continuous cell coordinate of every pixel centre; cell k has its centre at coordinate k
    offset = centres[None, :] - starts[:, None]
    inside = (offset >= 0) & (centres[None, :] < ends[:, None])
    coord = (offset / extent[:, None] * cells - 0.5).clamp(0, cells - 1)
    index = torch.arange(cells, device=starts.device, dtype=starts.dtype)
    # tent function: weight 1 - |coord - k| on the (at most two) neighbouring cells, 0 elsewhere
    weights = (1.0 - (coord[:, :, None] - index[None, None, :]).abs()).clamp(min=0.0)
    return weights * inside[:, :, None].to(weights.dtype)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: Union[Tuple[int, int], Sequence[int]],
    threshold: Optional[float] = 0.5,
    chunk_pixels: int = 1 << 25,
) -> Tensor:
    """Pastes per-box masks into full-resolution images.

    Args:
        masks: Tensor[N, M, M'] or Tensor[N, 1, M, M'] of mask probabilities (not logits), one per box.
        boxes: Tensor[N, 4] of (x1, y1, x2, y2) in image pixels.
        image_size: (height, width) of the image.
        threshold: if not None, returns a bool mask ``value >= threshold``; else the float probabilities.
        chunk_pixels: bound on N * H * W of one batched product (larger inputs are processed in chunks).

    Returns:
        Tensor[N, H, W] (bool if ``threshold`` is given, else the float dtype of ``masks``).
    """
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"paste_masks: masks must be [N, M, M] or [N, 1, M, M], got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"paste_masks: masks must be [N, M, M] or [N, 1, M, M], got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"paste_masks: boxes must be [N, 4] with N = {masks.shape[0]} masks, got {tuple(boxes.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    n, mh, mw = masks.shape
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out_dtype = torch.bool if threshold is not None else dtype
    out = torch.empty((n, height, width), dtype=out_dtype, device=masks.device)
    if n == 0 or height == 0 or width == 0:
        return out
    step = max(1, chunk_pixels // max(1, height * width))
    for s in range(0, n, step):  # chunks of masks, only to bound memory
        m = masks[s : s + step].to(work)
        b = boxes[s : s + step].to(work)
        rows = interpolation_matrix(b[:, 1], b[:, 3], mh, height)  # [n, H, mh]
        cols = interpolation_matrix(b[:, 0], b[:, 2], mw, width)  # [n, W, mw]
        pasted = torch.bmm(torch.bmm(rows, m), cols.transpose(1, 2))  # [n, H, W]
        out[s : s + step] = pasted >= threshold if threshold is not None else pasted.to(dtype)
    return out
