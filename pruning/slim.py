"""Physical slimming: masked channels are removed for real, with every coupled layer (BatchNorm, the consumer's
input channels, a flatten into a linear layer, residual additions) kept consistent by Torch-Pruning's dependency
graph."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from infoprune.pruning.attention import prune_heads
from infoprune.pruning.layers import (
    PrunableLayer,
    dependency_graph,
    find_prunable_layers,
    layer_row_parameters,
    pruning_group,
)
from infoprune.pruning.masks import MaskedNormalization, removed_channels


def refresh_recorded_widths(model: nn.Module) -> None:
    """Update the widths a network keeps as plain attributes and uses in its forward pass (torchvision's
    ``VisionTransformer.hidden_dim``, the patch embedding's width)."""
    from torchvision.models.vision_transformer import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels


def _drop_rows(module: nn.Module, name: str, removed: list[int]) -> None:
    """Remove rows ``removed`` of ``module``'s parameter ``name``."""
    parameter, removed = getattr(module, name), set(removed)
    kept = [i for i in range(parameter.shape[0]) if i not in removed]
    setattr(module, name, nn.Parameter(parameter.data[kept].clone(), requires_grad=parameter.requires_grad))


def slim(model: nn.Module, layers: list[PrunableLayer], keep: Mapping[str, torch.Tensor],
         example_input: torch.Tensor) -> list[int]:
    """Remove the channels not in ``keep`` from ``model`` in place; returns the new width of every layer in
    ``layers`` (in order)."""
    for layer in layers:
        if len(keep[layer.name]) < 1:
            raise ValueError(f"layer {layer.name!r} would be left without channels")
    MaskedNormalization.remove_all(model)
    graph = dependency_graph(model, example_input[:1])
    for layer in layers:
        removed = removed_channels(layer, keep[layer.name]).tolist()
        if removed and layer.heads_of is not None:
            prune_heads(layer.heads_of, sorted({layer.unit_of(c) for c in removed}))
        elif removed:
            rows = [(member.module, name) for member in layer.members
                    for name, _ in layer_row_parameters(member.module)]
            pruning_group(graph, layer.module, removed).prune()
            for module, name in rows:
                _drop_rows(module, name, removed)
    refresh_recorded_widths(model)
    return [layer.num_channels for layer in layers]


def slim_to_widths(model: nn.Module, widths: Mapping[str, int], example_input: torch.Tensor) -> None:
    """Slim the dense ``model`` in place so that channel group ``name`` keeps its first ``widths[name]`` channels
    (the first positions of every block where grouped convolutions split them; groups not named keep all): the
    shape of a slimmed network, rebuilt before its weights are loaded."""
    layers = find_prunable_layers(model, example_input)
    found = {layer.name: layer for layer in layers}
    unknown = sorted(set(widths) - set(found))
    if unknown:
        raise ValueError(f"the structure record names channel group(s) {unknown} this network does not have; "
                         f"its groups are {sorted(found)}")
    for name, width in widths.items():
        layer = found[name]
        if not 1 <= int(width) <= layer.num_channels or int(width) % layer.unit_size:
            raise ValueError(f"the structure record gives group {name!r} {width} channels; it has "
                             f"{layer.num_channels}, pruned in multiples of {layer.unit_size}")
    keep = {layer.name: layer.unit_channels(torch.arange(int(widths.get(layer.name, layer.num_channels))
                                                         // layer.unit_size)) for layer in layers}
    slim(model, layers, keep, example_input)
