"""Physical slimming: masked channels are removed for real, with every coupled layer (BatchNorm, the consumer's
input channels, a flatten into a linear layer, residual additions) kept consistent by Torch-Pruning's dependency
graph."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning.layers import PrunableLayer, preserved_modes
from pruning.masks import removed_channels


def slim(model: nn.Module, layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor],
         example_input: torch.Tensor) -> list[int]:
    """Remove the channels not in ``keep`` from ``model`` in place; returns the new width of every layer in
    ``layers`` (in order)."""
    for layer in layers:
        if len(keep[layer.name]) < 1:
            raise ValueError(f"layer {layer.name!r} would be left without channels")
    with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():  # tracer needs autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1])
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).tolist()
        if removed:
            group = graph.get_pruning_group(layer.conv, tp.prune_conv_out_channels, idxs=removed)
            group.prune()
    return [layer.conv.out_channels for layer in layers]


def slimmed_widths(net: nn.Module, layers: list[PrunableLayer]) -> list[int]:
    """The network's ``channels`` argument after slimming: the prunable layers' widths followed by the network's
    other widths (hidden linear layers of LeNet-5 and AlexNet), which channel pruning leaves as they are."""
    return [layer.conv.out_channels for layer in layers] + list(net.widths[len(layers):])
