"""LeNet-5, Caffe variant: conv 20@5x5, maxpool, conv 50@5x5, maxpool, fc 500 + ReLU, fc classes."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from infoprune.models.blocks import scaled_widths

LENET5_WIDTHS = (20, 50, 500)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example (431,080 parameters on 28x28 grayscale, 10 classes).

    The Caffe variant has no activation after the convolutions; ``padding`` (0 in the original) lets it run on
    inputs smaller than 28x28 (``padding=2`` for 8x8 digits).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.widths = scaled_widths(LENET5_WIDTHS, width, channels)
        c1, c2, hidden = self.widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=padding),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=padding),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
