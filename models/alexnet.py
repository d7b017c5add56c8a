"""AlexNet, ImageNet layout as in torchvision (61,100,840 parameters at 1000 classes)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from infoprune.models.blocks import scaled_widths

ALEXNET_WIDTHS = (64, 192, 384, 256, 256, 4096, 4096)


class AlexNet(nn.Module):
    """AlexNet: five convolutions with ReLU (max pooling after 1, 2, 5), adaptive 6x6 average pooling,
    three linear layers with dropout. ``channels`` lists the widths of the five convolutions and two hidden
    linear layers."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.widths = scaled_widths(ALEXNET_WIDTHS, width, channels)
        c1, c2, c3, c4, c5, h1, h2 = self.widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 36, h1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(h1, h2),
            nn.ReLU(inplace=True),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
