"""Channel masks: a removed channel's filter, bias and BatchNorm affine parameters are zero, so its post-BN and
post-activation output is zero and no later layer sees it. Applied again after every optimizer step, a mask keeps a
network's shape while it fine-tunes (also under DDP, with nothing rebuilt).

A layer norm over the channels (ConvNeXt, transformers) mixes every channel into each output through its mean and
variance; masked, it normalizes over the kept channels only and outputs zero at the removed ones, which is what the
slimmed layer norm computes (``MaskedNormalization``)."""
from __future__ import annotations

import weakref
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from infoprune.pruning.attention import mask_attention
from infoprune.pruning.layers import PrunableLayer


def removed_channels(layer: PrunableLayer, keep: torch.Tensor) -> torch.Tensor:
    """Indices of the channels of ``layer`` not in ``keep``."""
    mask = torch.ones(layer.num_channels, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


def _masked_tensors(layer: PrunableLayer) -> list[tuple[torch.Tensor, int]]:
    """Every parameter that carries the group's channels, with the axis they lie on: each member's weight rows
    and bias, its BatchNorm's weight and bias, loose parameters (tokens, positional embeddings)."""
    tensors = []
    for member in layer.members:
        module = member.module
        tensors += [(module.weight, 0)] + ([(module.bias, 0)] if module.bias is not None else [])
        if "bn" in member.taps:
            tensors += [(member.taps["bn"].weight, 0), (member.taps["bn"].bias, 0)]
    return tensors + layer.parameters


class MaskedNormalization:
    """A forward hook that makes a layer norm over channels (``nn.LayerNorm`` on the last axis; a ``*2d`` subclass,
    as ConvNeXt's, on axis 1) compute ``y[kept] = LN(x[kept])`` with its own weight and bias entries, and
    ``y[removed] = 0``."""

    #: the hook of each masked layer norm
    hooks: "weakref.WeakKeyDictionary[nn.Module, MaskedNormalization]" = weakref.WeakKeyDictionary()

    def __init__(self, norm: nn.Module) -> None:
        self.removed = torch.zeros(norm.weight.shape[0] if norm.weight is not None else norm.normalized_shape[0],
                                   dtype=torch.bool)
        self.axis = 1 if type(norm).__name__.endswith("2d") else -1
        self.handle = norm.register_forward_hook(self)

    @classmethod
    def mask(cls, norm: nn.Module, removed: torch.Tensor) -> None:
        """Add channels ``removed`` to ``norm``'s mask (installing the hook once)."""
        hook = cls.hooks.get(norm) or cls.hooks.setdefault(norm, cls(norm))
        hook.removed[removed.cpu()] = True

    @classmethod
    def remove_all(cls, model: nn.Module) -> None:
        """Uninstall the hooks of every layer norm of ``model`` (before it is slimmed)."""
        for module in model.modules():
            hook = cls.hooks.pop(module, None)
            if hook is not None:
                hook.handle.remove()

    def __call__(self, norm: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0].movedim(self.axis, -1)
        kept = (~self.removed).nonzero().flatten().to(x.device)
        weight = norm.weight[kept] if norm.weight is not None else None
        bias = norm.bias[kept] if norm.bias is not None else None
        y = x.new_zeros(x.shape)
        y[..., kept] = F.layer_norm(x[..., kept], (len(kept),), weight, bias, norm.eps)
        return y.movedim(-1, self.axis)


@torch.no_grad()
def apply_channel_masks(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> None:
    """Zero every removed channel's filter and bias and its BatchNorm weight and bias, in every group member (the
    sum of a residual stage's zeroed channels is zero, so is its activation), and its entries of loose parameters;
    mask the group's layer norms (``MaskedNormalization``) and attention modules
    (``pruning.attention.mask_attention``); modules of the group that mask themselves (a zero-padding
    shortcut) stop feeding the removed channels.

    Through an attention module the masked network is the slimmed one up to the softmax temperature: a removed
    channel is also one dimension of every head, and the slimmed attention scales by ``1/sqrt`` of the heads' new
    dimension."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.module.weight.device)
        if removed.numel() == 0:
            continue
        for tensor, axis in _masked_tensors(layer):
            tensor.index_fill_(axis, removed, 0.0)
        for norm in layer.norms:
            MaskedNormalization.mask(norm.module, norm.idxs[torch.isin(norm.root_idxs, removed.cpu())])
        for attention in layer.attentions:
            mask_attention(attention, removed)
        for module in layer.self_masking:
            module.mask_out_channels(removed)


def masked_channels_are_zero(layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor]) -> bool:
    """True when every removed channel's filters, BatchNorm affine parameters and loose parameters are exactly
    zero."""
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).to(layer.module.weight.device)
        if any(t.index_select(axis, removed).abs().sum() != 0 for t, axis in _masked_tensors(layer)):
            return False
    return True
