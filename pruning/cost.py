"""Exact parameter and FLOP accounting of channel removal, without rebuilding the network.

A convolution or linear layer ``M`` costs ``out(M) * in(M) * k(M)`` weights (``k`` = kernel positions) plus its
bias and the affine parameters of its BatchNorm per output channel (and a channel of a group costs its layer norms'
affine parameters and its entries of loose parameters such as positional embeddings), and ``2 * out(M) * in(M) * k(M) * S(M)`` FLOPs
(``S`` = output positions), as ``torch.utils.flop_counter`` counts them. Removing channel ``c`` of a channel group
removes every member's filter over the inputs still kept (one input per filter for a depthwise member, the kept
inputs of its own group, ``in / g``, for a grouped member), its bias and BN entries, and, in every consumer, the
weights that read ``c`` over the consumer's outputs still kept (those of ``c``'s group, ``out / g``, in a grouped
consumer); each weight is counted once, when the first of its two ends goes (a member that also reads its own
group, as a residual block's projection back onto the residual width, loses its weight from ``c`` to ``c``
with its filter)."""
from __future__ import annotations

import copy
from collections import Counter
from functools import partial

import torch
import torch.nn as nn

from infoprune.pruning.attention import (
    attention_cost,
    attention_tokens,
    attention_width,
    is_tied_attention,
    is_width_tied,
    measured_attention_cost,
    prune_heads,
    record_calls,
)
from infoprune.pruning.flops import call_flops
from infoprune.pruning.layers import PrunableLayer, convolution_groups, preserved_modes


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: torch.nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass in eval mode on ``example_input`` (``pruning.flops.call_flops``)."""
    was_training = module.training
    module.eval()
    try:
        return call_flops(module, example_input)
    finally:
        module.train(was_training)


def output_positions(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, int]:
    """Output positions of every conv and linear layer for one input image: the output's elements per output
    channel (H x W for a convolution, 1 for a linear layer after a flatten; times the regions a detection head's
    layer sees per image, the tokens a linear layer sees), summed over the calls of a layer that the forward pass
    applies several times (a head shared by the levels of a feature pyramid); an attention module's tokens (see
    ``pruning.attention``)."""
    positions: dict[nn.Module, int] = {}

    def count(module, inputs, output):
        if is_tied_attention(module):
            positions[module] = positions.get(module, 0) + attention_tokens(module, output)
            return
        channels = output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1]
        positions[module] = positions.get(module, 0) + output.numel() // channels

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) or is_tied_attention(m)]
    with torch.no_grad(), preserved_modes(model):
        model.eval()(example_input[:1])
    for hook in hooks:
        hook.remove()
    return positions


class PruningCost:
    """Parameters and FLOPs of ``model`` as channels of ``layers`` are removed one by one (``remove``)."""

    def __init__(self, model: nn.Module, layers: list[PrunableLayer], example_input: torch.Tensor) -> None:
        self.dense_params = self.params = count_parameters(model)
        self.dense_flops = self.flops = count_flops(model, example_input[:1])
        self.layers = {layer.name: layer for layer in layers}
        positions = output_positions(model, example_input)
        tokens = {m: t for m, t in positions.items() if is_tied_attention(m)}
        heads = [layer for layer in layers if layer.heads_of is not None]
        calls = record_calls(model, example_input,
                             [m for m in tokens if is_width_tied(m)] + [layer.heads_of for layer in heads])
        #: (parameters, FLOPs) of every tied attention module as a function of its width
        self.attention_costs = {m: measured_attention_cost(m, calls[m]) if m in calls
                                else partial(attention_cost, m, tokens=t) for m, t in tokens.items()}
        self.widths = {m: attention_width(m) for m in tokens}
        self.positions = {m: p for m, p in positions.items() if m not in tokens}
        self.groups = {m: convolution_groups(m) for m in self.positions}
        self.out_kept = {m: m.weight.shape[0] for m in self.positions}
        #: inputs still read: every input of a grouped convolution, those of one filter otherwise (1: depthwise)
        self.in_kept = {m: m.weight.shape[1] * self.groups[m] for m in self.positions}
        self.reads = {layer.name: [(c.module, Counter(c.root_idxs.tolist())) for c in layer.consumers]
                      for layer in layers}
        self.norm_entries = {layer.name: [(norm, Counter(norm.root_idxs.tolist())) for norm in layer.norms]
                             for layer in layers}
        self.members = {layer.name: {member.module for member in layer.members} for layer in layers}
        self.removed: set[tuple[str, int]] = set()
        self.head_extras: dict[str, tuple[int, int]] = {}
        #: what removing a head of a group of heads costs beyond its projections' weights (the products of
        #: queries with keys and of attention with values), counted with the head's first channel
        self.head_extras = {layer.name: self._head_extra(layer, calls[layer.heads_of]) for layer in heads}

    def _head_extra(self, layer: PrunableLayer, call) -> tuple[int, int]:
        """(parameters, FLOPs) of the attention module ``layer.heads_of`` on its recorded ``call`` minus those
        with one head removed, less what ``removal_cost`` counts for that head's channels."""
        module, (args, kwargs, _) = layer.heads_of, call
        pruned = copy.deepcopy(module)
        prune_heads(pruned, [0])
        counted = [self.removal_cost(layer.name, c) for c in layer.unit_channels([0]).tolist()]
        return (count_parameters(module) - count_parameters(pruned) - sum(p for p, _ in counted),
                call_flops(module, *args, **kwargs) - call_flops(pruned, *args, **kwargs) - sum(f for _, f in counted))

    @staticmethod
    def _kernel(module: nn.Module) -> int:
        return module.weight[0, 0].numel()

    def removal_cost(self, name: str, channel: int) -> tuple[int, int]:
        """(parameters, FLOPs) that removing ``channel`` of layer ``name`` would save now."""
        params = flops = 0
        for member in self.layers[name].members:
            conv = member.module
            per_out = self.in_kept[conv] * self._kernel(conv) // self.groups[conv]
            params += per_out + (conv.bias is not None) + 2 * ("bn" in member.taps)
            flops += 2 * per_out * self.positions[conv]
        layer = self.layers[name]
        params += sum(((norm.module.weight is not None) + (norm.module.bias is not None)) * count[channel]
                      for norm, count in self.norm_entries[name])
        params += sum(parameter.numel() // parameter.shape[axis] for parameter, axis in layer.parameters)
        members = self.members[name]
        for module, counter in self.reads[name]:
            # a member that also reads the group (a residual block's projection back onto the residual width) lost
            # the weight from the channel to itself with its row already
            filters = self.out_kept[module] * self._kernel(module) // self.groups[module]
            inputs = counter[channel] * (filters - (module in members) * self._kernel(module))
            params += inputs
            flops += 2 * inputs * self.positions[module]
        for attention in self.layers[name].attentions:
            before = self.attention_costs[attention](self.widths[attention])
            after = self.attention_costs[attention](self.widths[attention] - 1)
            params, flops = params + before[0] - after[0], flops + before[1] - after[1]
        if name in self.head_extras and channel == layer.unit_of(channel) * layer.unit_width:
            params, flops = params + self.head_extras[name][0], flops + self.head_extras[name][1]
        return params, flops

    def remove(self, name: str, channel: int) -> None:
        """Account for the removal of ``channel`` of layer ``name``."""
        if (name, channel) in self.removed:
            raise ValueError(f"channel {channel} of {name!r} is already removed")
        params, flops = self.removal_cost(name, channel)
        self.params, self.flops = self.params - params, self.flops - flops
        for member in self.layers[name].members:
            self.out_kept[member.module] -= 1
        for module, counter in self.reads[name]:
            self.in_kept[module] -= counter[channel]
        for attention in self.layers[name].attentions:
            self.widths[attention] -= 1
        self.removed.add((name, channel))

    def remaining(self, resource: str) -> float:
        """Fraction of the dense ``params`` or ``flops`` still left."""
        if resource == "params":
            return self.params / self.dense_params
        if resource == "flops":
            return self.flops / self.dense_flops
        raise ValueError(f"unknown resource {resource!r}; choose params or flops")
