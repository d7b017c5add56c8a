"""Channel masks: a removed channel's filter, bias and BatchNorm affine parameters are zero, so its post-BN and
post-activation output is zero and no later layer sees it. Applied again after every optimizer step, a mask keeps a
network's shape while it fine-tunes (also under DDP, with nothing rebuilt)."""
from __future__ import annotations

from typing import Mapping

import torch

from infoprune.pruning.layers import PrunableLayer


def removed_channels(layer: PrunableLayer, keep: torch.Tensor) -> torch.Tensor:
    """Indices of the channels of ``layer`` not in ``keep``."""
    mask = torch.ones(layer.num_channels, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


def _masked_tensors(layer: PrunableLayer, removed: torch.Tensor) -> list[torch.Tensor]:
    """Every parameter row that carries a removed channel: each group member's filter and bias and its
    BatchNorm's weight and bias."""
    tensors = []
    for member in layer.members:
        tensors += [member.conv.weight] + ([member.conv.bias] if member.conv.bias is not None else [])
        if "bn" in member.taps:
            tensors += [member.taps["bn"].weight, member.taps["bn"].bias]
    return tensors


@torch.no_grad()
def apply_channel_masks(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> None:
    """Zero every removed channel's filter and bias and its BatchNorm weight and bias, in every group member (the
    sum of a residual stage's zeroed channels is zero, so is its activation); modules of the group that mask
    themselves (a zero-padding shortcut) stop feeding the removed channels."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.conv.weight.device)
        if removed.numel() == 0:
            continue
        for tensor in _masked_tensors(layer, removed):
            tensor[removed] = 0.0
        for module in layer.self_masking:
            module.mask_out_channels(removed)


def masked_channels_are_zero(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> bool:
    """True when every removed channel's filters and BatchNorm affine parameters are exactly zero."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.conv.weight.device)
        if any(t[removed].abs().sum() != 0 for t in _masked_tensors(layer, removed)):
            return False
    return True
