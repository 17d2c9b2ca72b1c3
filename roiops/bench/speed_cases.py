"""The workloads of `roiops-bench speed`: an FPN P2 map of an 800x1088 image (stride 4) pooled by the
box head (512 RoIs -> 7x7) and the mask head (100 RoIs -> 14x14) of a Mask R-CNN; and the
position-sensitive head of an R-FCN (300 RoIs -> 7x7 bins of 21 class maps, 21 * 49 = 1029 channels on
the stride-16 map of the same image)."""

from dataclasses import dataclass
from typing import List, Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Case:
    name: str
    # "roi_align_avg", "roi_align_max", "roi_pool", "roi_align_rotated", "ps_roi_align", "ps_roi_pool" or "prroi_pool"
    op: str
    num_rois: int
    output_size: int
    batch: int = 2
    channels: int = 256
    height: int = 200
    width: int = 272
    spatial_scale: float = 0.25
    sampling_ratio: int = 2
    aligned: bool = True
    dtype: str = "float32"
    layout: str = "nchw"  # or "channels_last"
    threads: int = 2
    min_box: float = 16.0
    max_box: float = 400.0


def pooled_channels(case: Case) -> int:
    """The output's channels: a position-sensitive op has output_size**2 input channels per output one."""
    return case.channels // case.output_size**2 if case.op.startswith("ps_") else case.channels


def make_inputs(case: Case, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch, case.channels, case.height, case.width, generator=g)
    image_h, image_w = case.height / case.spatial_scale, case.width / case.spatial_scale
    size = case.min_box + (case.max_box - case.min_box) * torch.rand(case.num_rois, 2, generator=g)
    x1 = torch.rand(case.num_rois, generator=g) * (image_w - size[:, 0])
    y1 = torch.rand(case.num_rois, generator=g) * (image_h - size[:, 1])
    batch_index = torch.randint(0, case.batch, (case.num_rois,), generator=g).float()
    rois = torch.stack([batch_index, x1, y1, x1 + size[:, 0], y1 + size[:, 1]], dim=1)
    dtype = DTYPES[case.dtype]
    x = x.to(device=device, dtype=dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, rois.to(device=device, dtype=dtype)


def standard_cases(full: bool, dtypes: Optional[List[str]] = None) -> List[Case]:
    """Both heads, every op, both layouts; --full adds bfloat16 and 1 thread; `dtypes` replaces the
    dtypes."""
    heads = [("box_head_7x7", 512, 7), ("mask_head_14x14", 100, 14)]
    dtypes = dtypes or (["float32", "bfloat16"] if full else ["float32"])
    threads = [1, 2] if full else [2]
    cases = []
    for name, k, size in heads:
        for op in ["roi_align_avg", "roi_align_max", "roi_pool"]:
            for dtype in dtypes:
                for layout in ["nchw", "channels_last"]:
                    for t in threads:
                        cases.append(Case(name, op, k, size, dtype=dtype, layout=layout, threads=t))
    rfcn = dict(channels=21 * 49, height=50, width=68, spatial_scale=1 / 16, min_box=32.0, max_box=512.0)
    for op in ["ps_roi_align", "ps_roi_pool"]:
        for dtype in dtypes:
            for layout in ["nchw", "channels_last"]:
                for t in threads:
                    cases.append(Case("rfcn_ps_7x7", op, 300, 7, dtype=dtype, layout=layout, threads=t, **rfcn))
    return cases


def sweep_cases() -> List[Case]:
    """How the cost grows: RoIAlign box-head forward/backward vs number of RoIs and vs channels."""
    cases = [Case(f"rois_{k}", "roi_align_avg", k, 7) for k in (16, 64, 256, 1024, 2048)]
    cases += [Case(f"channels_{c}", "roi_align_avg", 512, 7, channels=c) for c in (16, 64, 256)]
    return cases


def rotated_cases() -> List[Case]:
    """The cost of rotation: roi_align_rotated at angle 0 beside roi_align (avg) on the same boxes, box
    head and mask head, both layouts."""
    heads = [("box_head_7x7", 512, 7), ("mask_head_14x14", 100, 14)]
    return [
        Case(name, "roi_align_rotated", k, size, layout=layout)
        for name, k, size in heads
        for layout in ("nchw", "channels_last")
    ]


def integration_cases() -> List[Case]:
    """The cost of exact integration: prroi_pool beside roi_align on the same boxes, box head and mask
    head, both layouts."""
    heads = [("box_head_7x7", 512, 7), ("mask_head_14x14", 100, 14)]
    return [
        Case(name, "prroi_pool", k, size, layout=layout)
        for name, k, size in heads
        for layout in ("nchw", "channels_last")
    ]


def rotated_rois(rois: torch.Tensor) -> torch.Tensor:
    """(batch index, x1, y1, x2, y2) rows as rotated ones at angle 0: the same boxes."""
    b, x1, y1, x2, y2 = rois.unbind(1)
    return torch.stack([b, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(b)], dim=1)
