"""Mask R-CNN heads that run on RoI-pooled features.

BoxHead:  (R, C, 7, 7)   -> flatten -> FC(fc_dim) -> ReLU -> FC(fc_dim) -> ReLU -> class logits (R, K + 1)
                                                                              and box deltas (R, (K + 1) * 4)
MaskHead: (R, C, 14, 14) -> num_convs x [3x3 conv + ReLU] -> 2x2 stride-2 transposed conv + ReLU
                         -> 1x1 conv -> mask logits (R, K, 28, 28)

Class convention: K foreground classes. BoxHead index 0 is background and 1..K the classes (as in
torchvision); MaskHead channel k is the mask of class k + 1 when used with these box labels (the
losses in ``roiops.models.targets`` index mask channels directly by the label they are given).
"""

from typing import Tuple

import torch
from torch import Tensor, nn

__all__ = ["BoxHead", "MaskHead"]


class BoxHead(nn.Module):
    """Two fully connected layers on pooled box features, a (K + 1)-way classifier (0 = background)
    and class-specific box regression (4 deltas per class, background included).

    Args:
        in_channels: channels of the pooled features.
        num_classes: K, the number of foreground classes.
        resolution: pooled size (7 in Mask R-CNN); int or (h, w).
        fc_dim: width of the two hidden layers (1024 in Mask R-CNN with FPN).
    """

    def __init__(self, in_channels: int, num_classes: int, resolution=7, fc_dim: int = 1024):
        super().__init__()
        rh, rw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.num_classes = num_classes
        self.fc1 = nn.Linear(in_channels * rh * rw, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """The Mask R-CNN (FPN) mask branch: ``num_convs`` 3x3 convs with ReLU, a 2x upsampling transposed
    conv with ReLU and a 1x1 conv predicting one mask logit map per class.

    Maps pooled features (R, in_channels, S, S) to mask logits (R, num_classes, 2S, 2S); S = 14 gives 28x28.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_channels: int = 256, num_convs: int = 4):
        super().__init__()
        self.num_classes = num_classes
        layers = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, conv_channels, 3, padding=1), nn.ReLU(inplace=True)]
            channels = conv_channels
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(channels, conv_channels, 2, stride=2)
        self.predictor = nn.Conv2d(conv_channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)
        x = torch.relu(self.deconv(x))
        return self.predictor(x)
