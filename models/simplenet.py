"""SimpleNet (Hasanpour et al. 2016), CIFAR variant: 13 conv-BN-ReLU layers, global max pooling, one linear layer."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from infoprune.models.blocks import conv_bn_relu_stack, scaled_widths

#: Output channels of the 13 convolutions at width 1.0 (5,482,176 conv weights on RGB input).
SIMPLENET_WIDTHS = (64, 128, 128, 128, 128, 128, 256, 256, 256, 512, 2048, 256, 256)
#: Kernel size of each convolution (layers 10 and 11 are 1x1).
SIMPLENET_KERNELS = (3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 3)


class SimpleNet(nn.Module):
    """SimpleNet: ``features`` (13 ``ConvBNReLU`` blocks, 2x2 max pooling after the blocks in ``pool_after``),
    global max pooling, ``classifier`` (linear).

    Args:
        num_classes: classifier outputs.
        in_channels: image channels (3 for CIFAR/SVHN, 1 for MNIST).
        width: multiplier of every layer's width (0.25 for CPU-scale experiments).
        channels: explicit per-layer widths (a slimmed network); overrides ``width``.
        pool_after: indices of the blocks followed by max pooling; the paper's layout pools after 3, 6, 8, 11.
            Small inputs (8x8 digits) need fewer pools, e.g. ``[3, 6]``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        pool_after: Sequence[int] = (3, 6, 8, 11),
    ) -> None:
        super().__init__()
        self.widths = scaled_widths(SIMPLENET_WIDTHS, width, channels)
        self.features = conv_bn_relu_stack(in_channels, self.widths, SIMPLENET_KERNELS, pool_after)
        self.classifier = nn.Linear(self.widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.amax(x, dim=(2, 3))
        return self.classifier(x)
