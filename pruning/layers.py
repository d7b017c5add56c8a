"""What can be pruned: the prunable convolutions of a network, their tap points and the layers that consume their
channels, found with Torch-Pruning's dependency graph."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

#: Where a channel's feature map is read: the convolution's output, after its BatchNorm, or after its activation.
TAP_POINTS = ("conv", "bn", "act")


@dataclass
class Consumer:
    """A layer that reads a pruned layer's channels: ``module``'s input index ``idxs[i]`` carries channel
    ``root_idxs[i]`` (several inputs per channel after a flatten into a linear layer)."""

    module: nn.Module
    idxs: torch.Tensor
    root_idxs: torch.Tensor


@dataclass
class PrunableLayer:
    """One prunable convolution: ``name`` in the model, the module, the modules behind each tap point and the
    consumers of its output channels."""

    name: str
    conv: nn.Conv2d
    taps: dict[str, nn.Module]
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return self.conv.out_channels

    def tap(self, point: str) -> tuple[str, nn.Module]:
        """The module behind tap ``point``, or the nearest earlier one the layer has (a convolution without
        BatchNorm or activation, as in LeNet-5, is read at its output)."""
        if point not in TAP_POINTS:
            raise ValueError(f"unknown tap point {point!r}; choose one of {TAP_POINTS}")
        for candidate in reversed(TAP_POINTS[: TAP_POINTS.index(point) + 1]):
            if candidate in self.taps:
                return candidate, self.taps[candidate]
        raise AssertionError("every layer has its conv tap")


@contextmanager
def preserved_modes(model: nn.Module):
    """Restore every submodule's train/eval flag on exit, whatever the body (or a library it calls) set."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _following_taps(model: nn.Module, conv_name: str) -> dict[str, nn.Module]:
    """The BatchNorm and ReLU that directly follow ``conv_name`` in module order (before the next conv/linear)."""
    names = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    start = [n for n, _ in names].index(conv_name)
    taps: dict[str, nn.Module] = {"conv": names[start][1]}
    for _, module in names[start + 1:]:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            break
        if isinstance(module, nn.BatchNorm2d) and "bn" not in taps and "act" not in taps:
            taps["bn"] = module
        elif isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU)):
            taps["act"] = module
            break
    return taps


def _is_out_channel_op(item) -> bool:
    return item.dep.handler.__name__ == "prune_out_channels" and isinstance(item.dep.target.module,
                                                                             (nn.Conv2d, nn.Linear))


def find_prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[PrunableLayer]:
    """Every convolution whose output channels can be removed on their own, in forward order.

    A convolution is left out when its channels are coupled to another layer's outputs (the residual widths of a
    ResNet stage, tied by additions) or when it is a grouped/depthwise convolution. Consumers are the in-channel
    (or in-feature) pruning operations of its dependency group, with Torch-Pruning's index mapping.
    """
    with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():  # tracer needs autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module.groups != 1:
            continue
        group = graph.get_pruning_group(module, tp.prune_conv_out_channels, idxs=list(range(module.out_channels)))
        if sum(_is_out_channel_op(item) for item in group) > 1:
            continue
        consumers = [
            Consumer(item.dep.target.module, torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs))
            for item in group
            if item.dep.handler.__name__ == "prune_in_channels"
            and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
        ]
        layers.append(PrunableLayer(name, module, _following_taps(model, name), consumers))
    return layers
