"""Channel masks: a removed channel's filter, bias and BatchNorm affine parameters are zero, so its post-BN and
post-activation output is zero and no later layer sees it. Applied again after every optimizer step, a mask keeps a
network's shape while it fine-tunes (also under DDP, with nothing rebuilt)."""
from __future__ import annotations

from typing import Mapping

import torch

from pruning.layers import PrunableLayer


def removed_channels(layer: PrunableLayer, keep: torch.Tensor) -> torch.Tensor:
    """Indices of the channels of ``layer`` not in ``keep``."""
    mask = torch.ones(layer.num_channels, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


@torch.no_grad()
def apply_channel_masks(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> None:
    """Zero every removed channel's conv filter and bias and its BatchNorm weight and bias."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.conv.weight.device)
        if removed.numel() == 0:
            continue
        layer.conv.weight[removed] = 0.0
        if layer.conv.bias is not None:
            layer.conv.bias[removed] = 0.0
        if "bn" in layer.taps:
            layer.taps["bn"].weight[removed] = 0.0
            layer.taps["bn"].bias[removed] = 0.0


def masked_channels_are_zero(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> bool:
    """True when every removed channel's filter (and BN affine parameters) is exactly zero."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.conv.weight.device)
        tensors = [layer.conv.weight[removed]]
        if "bn" in layer.taps:
            tensors += [layer.taps["bn"].weight[removed], layer.taps["bn"].bias[removed]]
        if any(t.abs().sum() != 0 for t in tensors):
            return False
    return True
