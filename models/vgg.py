"""VGG-16 with batch normalisation, CIFAR variant (as in Li et al. 2017 and HRank: 14.98M parameters)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from infoprune.models.blocks import conv_bn_relu_stack, scaled_widths

VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
VGG16_POOL_AFTER = (1, 3, 6, 9)


class VGG16BN(nn.Module):
    """13 ``ConvBNReLU`` blocks (max pooling after blocks 1, 3, 6, 9), 2x2 average pooling, then
    linear(512) - BN - ReLU - linear(classes)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.widths = scaled_widths(VGG16_WIDTHS, width, channels)
        self.features = conv_bn_relu_stack(in_channels, self.widths, [3] * len(self.widths), VGG16_POOL_AFTER)
        hidden = max(1, round(512 * width))
        self.classifier = nn.Sequential(
            nn.Linear(self.widths[-1], hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)
