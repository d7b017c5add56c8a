"""Building blocks shared by the networks."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn


class ConvBNReLU(nn.Sequential):
    """``relu(bn(conv(x)))`` with named children ``conv``, ``bn``, ``relu`` (the tap points of channel pruning)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


def scaled_widths(base: Sequence[int], width: float, channels: Sequence[int] | None) -> list[int]:
    """Per-layer widths: ``channels`` when given (a slimmed network), else ``max(1, round(width * c))`` per layer."""
    if channels is not None:
        if len(channels) != len(base):
            raise ValueError(f"channels has {len(channels)} entries, this network has {len(base)} prunable layers")
        if min(channels) < 1:
            raise ValueError(f"every layer needs at least one channel, got {list(channels)}")
        return [int(c) for c in channels]
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")
    return [max(1, round(c * width)) for c in base]


def conv_bn_relu_stack(in_channels: int, widths: Sequence[int], kernels: Sequence[int],
                       pool_after: Sequence[int]) -> nn.Sequential:
    """``ConvBNReLU`` blocks of the given widths and kernel sizes, each block in ``pool_after`` followed by 2x2 max
    pooling."""
    layers: list[nn.Module] = []
    prev = in_channels
    for i, (out, k) in enumerate(zip(widths, kernels, strict=True)):
        layers.append(ConvBNReLU(prev, out, k))
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
        prev = out
    return nn.Sequential(*layers)
