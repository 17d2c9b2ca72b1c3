"""Beyond one machine: the Mask R-CNN head (roiops.models) with roiops' FPN poolers trains under
torch.distributed DDP (gloo, 2 processes on the CPU), and the averaged gradients equal a single
process's on the same global batch (the mean of the two shards' losses, which is what DDP averages)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from roiops import MultiScaleRoIAlign
from roiops.models import BoxHead, MaskHead, RoIHeads

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed")

NAMES = ["p2", "p3"]
SIZE = 64


class _Net(nn.Module):
    """A two-level backbone stub and the Mask R-CNN head; forward returns the training loss."""

    def __init__(self):
        super().__init__()
        c = 8
        self.backbone = nn.ModuleDict(
            {"p2": nn.Conv2d(3, c, 3, stride=4, padding=1), "p3": nn.Conv2d(3, c, 3, stride=8, padding=1)}
        )
        self.heads = RoIHeads(
            MultiScaleRoIAlign(NAMES, 7, 2, aligned=True),
            BoxHead(c, 2, fc_dim=32),
            MultiScaleRoIAlign(NAMES, 14, 2, aligned=True),
            MaskHead(c, 2, conv_channels=8, num_convs=1),
            num_classes=2,
            batch_size_per_image=16,
        )

    def forward(self, images, proposals, targets):
        feats = {name: conv(images) for name, conv in self.backbone.items()}
        losses = self.heads(feats, proposals, [(SIZE, SIZE)] * len(images), targets)
        return sum(losses.values())


def _model():
    torch.manual_seed(0)
    return _Net()


def _batch(n_images=4):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n_images, 3, SIZE, SIZE, generator=g)
    targets, proposals = [], []
    for _ in range(n_images):
        xy = torch.rand(2, 2, generator=g) * 30
        boxes = torch.cat([xy, xy + 8 + torch.rand(2, 2, generator=g) * 24], dim=1)
        masks = torch.zeros(2, SIZE, SIZE)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
        jitter = (torch.rand(12, 4, generator=g) - 0.5) * 6
        proposals.append((boxes.repeat(6, 1) + jitter).clamp(0, SIZE))
    return images, proposals, targets


def _loss(model, images, proposals, targets, seed):
    torch.manual_seed(seed)  # (proposal sampling draws random numbers: the same per shard everywhere)
    return model(images, proposals, targets)


def _shard(rank, world):
    images, proposals, targets = _batch()
    per = len(images) // world
    s = slice(rank * per, (rank + 1) * per)
    return images[s], proposals[s], targets[s]


def _worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(_model())
    _loss(model, *_shard(rank, world), seed=100 + rank).backward()  # (DDP averages the gradients)
    if rank == 0:
        torch.save({name: p.grad for name, p in model.module.named_parameters()}, out_file)
    dist.destroy_process_group()
    # Skip interpreter teardown: gloo's threads sometimes abort the process at exit ("terminate called
    # without an active exception", about 1 run in 4 with a plain DDP script and no roiops at all).
    os._exit(0)


def test_ddp_gradients_equal_single_process(tmp_path):
    world = 2
    out_file = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(out_file)), nprocs=world, join=True)
    ddp_grads = torch.load(out_file)

    model = _model()
    loss = sum(_loss(model, *_shard(rank, world), seed=100 + rank) for rank in range(world)) / world
    loss.backward()
    assert ddp_grads.keys() == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in ddp_grads.values())
