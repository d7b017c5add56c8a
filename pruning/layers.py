"""What can be pruned: the prunable convolutions of a network, their tap points and the layers that consume their
channels, found with Torch-Pruning's dependency graph."""
from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

log = logging.getLogger(__name__)

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
class Member:
    """One convolution of a channel group: ``name`` in the model, the module and the modules behind each tap
    point (a depthwise convolution's filter of channel ``c`` and its BatchNorm entry go with channel ``c``)."""

    name: str
    conv: nn.Conv2d
    taps: dict[str, nn.Module]

    def tap(self, point: str) -> tuple[str, nn.Module]:
        """The module behind tap ``point``, or the nearest earlier one the convolution has (a convolution without
        BatchNorm or activation, as in LeNet-5, is read at its output)."""
        if point not in TAP_POINTS:
            raise ValueError(f"unknown tap point {point!r}; choose one of {TAP_POINTS}")
        for candidate in reversed(TAP_POINTS[: TAP_POINTS.index(point) + 1]):
            if candidate in self.taps:
                return candidate, self.taps[candidate]
        raise AssertionError("every member has its conv tap")


@dataclass
class PrunableLayer:
    """One prunable channel group: the convolutions whose output channels are tied (a residual stage's width: the
    stem or first block's projection and every block's last convolution; an expansion convolution and the
    depthwise convolution after it), removed together, channel ``c`` of every member at once. Most layers of a
    plain network are groups of one. ``name`` is the first member's name in module order; ``consumers`` are the
    layers that read the group's channels."""

    name: str
    members: list[Member]
    consumers: list[Consumer] = field(default_factory=list)
    #: other modules whose outputs carry the group's channels and that mask them themselves
    #: (``mask_out_channels(removed)``, e.g. ResNet's zero-padding shortcut)
    self_masking: list[nn.Module] = field(default_factory=list)
    #: Torch-Pruning's group of the first member's output channels as the network was when the layer was found
    #: (what criteria wrapping Torch-Pruning's importance classes score); None for views of one member
    dependency_group: tp.Group | None = field(default=None, repr=False, compare=False)
    #: ``g`` when grouped convolutions (``groups=g``, not depthwise) produce or read the channels: the channels
    #: fall into ``g`` equal blocks and the same positions are removed from every block, so every convolution
    #: group keeps as many channels as the others (Torch-Pruning's ``ch_groups``); 1 otherwise
    channel_groups: int = 1

    @property
    def conv(self) -> nn.Conv2d:
        """The first member's convolution (the group's pruning root)."""
        return self.members[0].conv

    @property
    def taps(self) -> dict[str, nn.Module]:
        return self.members[0].taps

    @property
    def num_channels(self) -> int:
        return self.conv.out_channels

    @property
    def member_names(self) -> list[str]:
        return [member.name for member in self.members]

    def tap(self, point: str) -> tuple[str, nn.Module]:
        """The first member's tap module (see ``Member.tap``)."""
        return self.members[0].tap(point)

    def member_view(self, member: Member) -> "PrunableLayer":
        """A group of ``member`` alone with the group's consumers (what a criterion scores member by member)."""
        return PrunableLayer(member.name, [member], self.consumers, self.self_masking,
                             channel_groups=self.channel_groups)

    def unit_channels(self, units: torch.Tensor) -> torch.Tensor:
        """Sorted channels of the given positions ``u`` in every block: ``u + b * C / g`` for ``b < g`` (the
        positions themselves when ``g`` is 1)."""
        block = self.num_channels // self.channel_groups
        offsets = torch.arange(self.channel_groups) * block
        return (torch.as_tensor(units, dtype=torch.long)[None, :] + offsets[:, None]).flatten().sort().values

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """One score per position ``u`` of the blocks: ``mean_b scores[u + b * C / g]`` (the scores themselves
        when ``g`` is 1)."""
        return scores.view(self.channel_groups, -1).mean(dim=0)


@contextmanager
def preserved_modes(model: nn.Module):
    """Restore every submodule's train/eval flag on exit, whatever the body (or a library it calls) set."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``; a module class with a ``dependency_pruner`` attribute (a
    ``tp.pruner.function.BasePruningFunc``) says itself how its channels map (``models.resnet.PadShortcut``)."""
    custom = {type(m): type(m).dependency_pruner for m in model.modules() if hasattr(type(m), "dependency_pruner")}
    with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():  # tracer needs autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, customized_pruners=custom)


#: activations whose output is a tap point (``act``)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish)


#: how many functional operations (a residual addition, a gating product) a tap may lie behind
FUNCTIONAL_STEPS = 2


@dataclass
class _Call:
    """One call of a leaf module in a forward pass: its first tensor input and its output, with the autograd nodes
    that made them at the time of the call (all kept alive, so identity comparisons are meaningful)."""

    module: nn.Module
    input: torch.Tensor | None
    input_fn: object
    output: object
    output_fn: object


def _leaf_calls(model: nn.Module, example_input: torch.Tensor) -> list[_Call]:
    """Every call of a leaf module in one forward pass of ``example_input[:1]`` (with autograd on, so every
    tensor records the operations it came from), in execution order."""
    calls: list[_Call] = []

    def record(module, inputs, output):
        first = next((x for x in inputs if isinstance(x, torch.Tensor)), None)
        calls.append(_Call(module, first, getattr(first, "grad_fn", None), output, getattr(output, "grad_fn", None)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()(example_input[:1].detach().clone().requires_grad_(True))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _derives_from(node, target, steps: int) -> bool:
    """Whether autograd node ``node`` is ``target`` or computed from it within ``steps`` operations."""
    if node is None or target is None:
        return False
    if node is target:
        return True
    return steps > 0 and any(_derives_from(parent, target, steps - 1) for parent, _ in node.next_functions)


def _reads(call: _Call, tensor: torch.Tensor, tensor_fn) -> bool:
    """Whether ``call``'s module reads ``tensor``: the very tensor, or one of its shape computed from it by at most
    ``FUNCTIONAL_STEPS`` functional operations (the activation after a residual addition)."""
    if call.input is None or not isinstance(tensor, torch.Tensor):
        return False
    return call.input is tensor or (call.input.shape == tensor.shape
                                    and _derives_from(call.input_fn, tensor_fn, FUNCTIONAL_STEPS))


def _following_taps(conv: nn.Module, calls: list[_Call], reused: set[nn.Module]) -> dict[str, nn.Module]:
    """The BatchNorm and the activation that ``conv``'s output flows into, followed through the forward pass's
    dataflow (not the order modules are registered in): from the convolution's output, the first module that reads
    it (``_reads``: directly, or behind a residual addition); a BatchNorm is the ``bn`` tap, an activation the
    ``act`` tap (and the end), any other module (pooling, dropout) is passed through; a convolution or linear
    layer, a module called more than once per forward pass (its hook would see several feature maps), or a tensor
    that no module reads ends the walk. A concatenation changes the shape and so ends it too (DenseNet)."""
    taps: dict[str, nn.Module] = {"conv": conv}
    index = next((i for i, call in enumerate(calls) if call.module is conv), None)
    if index is None or conv in reused:
        return taps
    tensor, tensor_fn = calls[index].output, calls[index].output_fn
    for call in calls[index + 1:]:
        if not _reads(call, tensor, tensor_fn):
            continue
        module = call.module
        if isinstance(module, (nn.Conv2d, nn.Linear)) or module in reused:
            break
        if isinstance(module, nn.BatchNorm2d) and "bn" not in taps:
            taps["bn"] = module
        elif isinstance(module, ACTIVATIONS):
            taps["act"] = module
            break
        tensor, tensor_fn = call.output, call.output_fn
    return taps


def _is_out_channel_op(item) -> bool:
    return item.dep.handler.__name__ == "prune_out_channels" and isinstance(item.dep.target.module,
                                                                             (nn.Conv2d, nn.Linear))


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def convolution_groups(module: nn.Module) -> int:
    """``groups`` of a grouped (not depthwise) convolution, 1 for every other layer."""
    return module.groups if isinstance(module, nn.Conv2d) and not _is_depthwise(module) else 1


def find_prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[PrunableLayer]:
    """Every channel group that can be pruned, in module order of its first member.

    A group is what Torch-Pruning's dependency graph ties to a convolution's output channels: convolutions whose
    outputs are added (residual stages) and depthwise convolutions that carry the channels on. Consumers are the
    group's in-channel (or in-feature) pruning operations on ordinary convolutions and linear layers, with
    Torch-Pruning's index mapping (several inputs per channel after a flatten). Channels that grouped (not
    depthwise) convolutions produce or read are pruned block-symmetrically (``channel_groups``: the least common
    multiple of those convolutions' ``groups``). A group whose channels reach a linear layer's outputs, whose
    members differ in width (an operation the graph cannot map), or that no layer reads (the network's outputs, as
    a segmentation head's class maps) is not prunable here and is left out with a warning naming it. The tap points
    of every member follow its output through the forward pass (``_following_taps``). A convolution that the
    forward pass in eval mode never calls (an auxiliary classifier run only in training) is an error: the channels
    it reads could not be kept consistent.
    """
    graph = dependency_graph(model, example_input)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    order = {m: i for i, (_, m) in enumerate(leaves)}
    names = {m: n for n, m in leaves}
    calls = _leaf_calls(model, example_input)
    counts = Counter(call.module for call in calls)
    reused = {module for module, n in counts.items() if n > 1}
    untraced = [n for n, m in leaves if isinstance(m, nn.Conv2d) and not counts[m]]
    if untraced:
        raise ValueError(f"convolution(s) {untraced[:4]}{' ...' if len(untraced) > 4 else ''} are not called by the "
                         f"network's forward pass (in eval mode), so the channels they read cannot be traced; remove "
                         f"them or build the network without them (torchvision's GoogLeNet and Inception-v3: "
                         f"aux_logits=False, their auxiliary classifiers run only in training)")
    layers, covered = [], set()
    for name, module in leaves:
        if not isinstance(module, nn.Conv2d) or module in covered or _is_depthwise(module):
            continue
        group = graph.get_pruning_group(module, tp.prune_conv_out_channels, idxs=list(range(module.out_channels)))
        outs = sorted({item.dep.target.module for item in group if _is_out_channel_op(item)}, key=order.get)
        covered.update(outs)
        reason = ("a linear layer's outputs" if any(isinstance(m, nn.Linear) for m in outs)
                  else "layers of other widths through an operation the dependency graph cannot map"
                  if len({m.out_channels for m in outs}) > 1 else None)
        if reason:
            log.warning("channels of %s are tied to %s and are not pruned", [names[m] for m in outs], reason)
            continue
        consumers = [
            Consumer(item.dep.target.module, torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs))
            for item in group
            if item.dep.handler.__name__ == "prune_in_channels"
            and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
            and not (isinstance(item.dep.target.module, nn.Conv2d) and _is_depthwise(item.dep.target.module))
        ]
        if not consumers:
            log.warning("channels of %s are the network's outputs (no layer reads them) and are not pruned",
                        [names[m] for m in outs])
            continue
        members = [Member(names[m], m, _following_taps(m, calls, reused)) for m in outs]
        self_masking = [item.dep.target.module for item in group if item.dep.handler.__name__ == "prune_out_channels"
                        and hasattr(item.dep.target.module, "mask_out_channels")]
        channel_groups = math.lcm(*(convolution_groups(m) for m in outs + [c.module for c in consumers]))
        layers.append(PrunableLayer(members[0].name, members, consumers, self_masking, dependency_group=group,
                                    channel_groups=channel_groups))
    return layers
