"""What can be pruned: the channel groups of a network (the output channels of convolutions and linear layers that
must be removed together), their tap points and the layers that consume their channels, found with Torch-Pruning's
dependency graph."""
from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning._helpers import _HybridIndex
from torch_pruning.dependency import index_mapping, shape_infer

from infoprune.pruning.attention import (
    GenericTiedPruner,
    LinearPairPruner,
    attention_heads,
    head_count,
    infer_attention_roles,
    is_linear_pair,
    is_tied_attention,
    is_width_tied,
    prunable_heads,
    tied_attention_pruners,
)
from infoprune.pruning.modes import preserved_modes
from infoprune.pruning.multihead import pair_multihead_attention

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
    """One layer of a channel group: ``name`` in the model, the convolution or linear layer ``module`` whose
    output channels (weight rows) are the group's, the modules behind each tap point (a depthwise convolution's
    filter of channel ``c`` and its BatchNorm entry go with channel ``c``) and the axis of the channels in the
    module's output (1 for a convolution's N x C x H x W, -1 for a linear layer's N x ... x C)."""

    name: str
    module: nn.Module
    taps: dict[str, nn.Module]
    channel_axis: int = 1

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
    """One prunable channel group: the convolutions and linear layers whose output channels are tied (a residual
    stage's width: the stem or first block's projection and every block's last convolution; an expansion
    convolution and the depthwise convolution after it; a transformer's embedding width; an MLP's hidden width),
    removed together, channel ``c`` of every member at once. Most layers of a plain network are groups of one.
    ``name`` is the first member's name in module order; ``consumers`` are the layers that read the group's
    channels."""

    name: str
    members: list[Member]
    consumers: list[Consumer] = field(default_factory=list)
    #: other modules whose outputs carry the group's channels and that mask them themselves
    #: (``mask_out_channels(removed)``, e.g. ResNet's zero-padding shortcut)
    self_masking: list[nn.Module] = field(default_factory=list)
    #: layer norms that normalize over the group's channels (masked by normalizing over the kept ones), as consumers:
    #: entry ``idxs[i]`` of the norm carries channel ``root_idxs[i]`` (several entries per channel after a
    #: concatenation of spatial neighbours, as Swin's patch merging)
    norms: list[Consumer] = field(default_factory=list)
    #: parameters outside any layer that carry the channels, with the axis they lie on (a class token, positional
    #: embeddings, ConvNeXt's layer scale)
    parameters: list[tuple[nn.Parameter, int]] = field(default_factory=list)
    #: attention modules whose embedding (and so inner) width is the group (see ``pruning.attention``)
    attentions: list[nn.Module] = field(default_factory=list)
    #: Torch-Pruning's group of the first member's output channels as the network was when the layer was found
    #: (what criteria wrapping Torch-Pruning's importance classes score); None for views of one member
    dependency_group: tp.Group | None = field(default=None, repr=False, compare=False)
    #: ``g`` when grouped convolutions (``groups=g``, not depthwise) produce or read the channels: the channels
    #: fall into ``g`` equal blocks and the same positions are removed from every block, so every convolution
    #: group keeps as many channels as the others (Torch-Pruning's ``ch_groups``); 1 otherwise
    channel_groups: int = 1
    #: positions of a block removed together, contiguous: 1 for channels; a head's dimensions for a group of
    #: attention heads (``head_layer``), whose query, key and value projections are the group's three blocks
    unit_width: int = 1
    #: the attention module whose heads the group is (``head_layer``), else None
    heads_of: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def module(self) -> nn.Module:
        """The first member's convolution or linear layer (the group's pruning root)."""
        return self.members[0].module

    @property
    def taps(self) -> dict[str, nn.Module]:
        return self.members[0].taps

    @property
    def num_channels(self) -> int:
        return self.module.weight.shape[0]

    @property
    def member_names(self) -> list[str]:
        return [member.name for member in self.members]

    def tap(self, point: str) -> tuple[str, nn.Module]:
        """The first member's tap module (see ``Member.tap``)."""
        return self.members[0].tap(point)

    def member_view(self, member: Member) -> "PrunableLayer":
        """A group of ``member`` alone with the group's consumers (what a criterion scores member by member)."""
        return PrunableLayer(member.name, [member], self.consumers, self.self_masking, self.norms, self.parameters,
                             self.attentions, channel_groups=self.channel_groups, unit_width=self.unit_width,
                             heads_of=self.heads_of)

    @property
    def unit_size(self) -> int:
        """Channels removed at once: ``g * w`` (``channel_groups`` blocks, ``unit_width`` positions each)."""
        return self.channel_groups * self.unit_width

    def unit_channels(self, units: torch.Tensor) -> torch.Tensor:
        """Sorted channels of the given units ``u`` in every block: ``u w + d + b C / g`` for ``d < w``, ``b < g``
        (the units themselves when ``g`` and ``w`` are 1)."""
        block = self.num_channels // self.channel_groups
        offsets = (torch.arange(self.channel_groups)[:, None] * block + torch.arange(self.unit_width)[None, :])
        starts = torch.as_tensor(units, dtype=torch.long) * self.unit_width
        return (starts[None, :, None] + offsets[:, None, :]).flatten().sort().values

    def unit_of(self, channel: int) -> int:
        """The unit channel ``c`` belongs to: ``(c mod C / g) // w``."""
        return channel % (self.num_channels // self.channel_groups) // self.unit_width

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """One score per unit ``u``: the mean of ``scores`` over its channels (``unit_channels``; the scores
        themselves when ``g`` and ``w`` are 1)."""
        return scores.view(self.channel_groups, -1, self.unit_width).mean(dim=(0, 2))


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """How Torch-Pruning prunes the modules of ``model`` its tracer cannot see into: a module class with a
    ``dependency_pruner`` attribute (a ``tp.pruner.function.BasePruningFunc``) says itself how its channels map
    (``models.resnet.PadShortcut``); the attention modules of ``pruning.attention`` (tied, linear-pair and
    width-tied, as ``infer_attention_roles`` found them)."""
    known = tied_attention_pruners()
    custom = {type(m): type(m).dependency_pruner for m in model.modules() if hasattr(type(m), "dependency_pruner")}
    custom.update({type(m): known[type(m)] for m in model.modules() if type(m) in known})
    custom.update({type(m): LinearPairPruner() for m in model.modules() if is_linear_pair(m)})
    custom.update({type(m): GenericTiedPruner() for m in model.modules() if is_width_tied(m)})
    return custom


def _channels_between(graph, source, node) -> int | None:
    """Torch-Pruning's channels from ``source`` to ``node``, or None where it cannot tell (a split whose sizes it
    recorded for fewer outputs than the split has)."""
    try:
        return shape_infer.infer_channels_between(graph, source, node)
    except IndexError:
        return None


def _slice_cuts_the_channels(graph, node) -> bool:
    """Whether a slice cuts its input's channels: it is not the whole axis, and the sliced axis is as long as the
    channels Torch-Pruning infers for the input (a channels-last tensor's spatial slice, as Swin's patch merging's
    ``x[..., 0::2, 0::2, :]``, is not)."""
    sizes, axis = getattr(node.grad_fn, "_saved_self_sym_sizes", None), node.module.dim
    if sizes is None or not 0 <= axis < len(sizes):
        return True
    if node.module.start == 0 and node.module.step == 1 and node.module.end >= sizes[axis]:
        return False
    channels = [_channels_between(graph, source, node) for source in node.inputs]
    return all(c is None or c == sizes[axis] for c in channels)


def _traced_concat_sizes(node) -> list[int] | None:
    """The sizes of a concatenation's inputs along its axis as the forward pass had them (each input operation's
    output shape, as autograd recorded it), when they add up to the output's; None otherwise."""
    def shape(grad_fn):
        metadata = getattr(grad_fn, "_input_metadata", None)
        return metadata[0].shape if metadata else None

    out, dim = shape(node.grad_fn), getattr(node.grad_fn, "_saved_dim", None)
    shapes = [shape(source.grad_fn) for source in node.inputs]
    if out is None or dim is None or any(s is None or len(s) != len(out) for s in shapes):
        return None
    dim = dim - 2 ** 64 + len(out) if dim >= 2 ** 63 else dim
    sizes = [s[dim] for s in shapes]
    return sizes if sum(sizes) == out[dim] else None


def _concat_sizes_known(graph, node) -> bool:
    """Whether the channels of every input of a concatenation are known: recorded in the trace
    (``_traced_concat_sizes``), or inferred by Torch-Pruning (it stops mapping one whose inputs it cannot size, but
    first adds the sizes up and fails on the unknown ones)."""
    if node.module.concat_sizes is None:
        node.module.concat_sizes = _traced_concat_sizes(node)
    if node.module.concat_sizes is not None:
        return True
    return all(_channels_between(graph, source, node) is not None for source in node.inputs)


class _InterleavedIndexMapping:
    """Channel ``c`` of ``channels`` at positions ``c + j * channels`` (``j < copies``) of a channels-last tensor
    whose channel axis was merged, innermost, with spatial neighbours (timm's patch merging:
    ``N x H x W x C -> N x H/2 x W/2 x 4C``); ``reverse`` maps a position back to its channel."""

    def __init__(self, channels: int, copies: int, reverse: bool = False) -> None:
        self.channels, self.copies, self.reverse = channels, copies, reverse

    def __call__(self, idxs):
        if self.reverse:
            return list({_HybridIndex(idx=i.idx % self.channels, root_idx=i.root_idx) for i in idxs})
        return [_HybridIndex(idx=i.idx + j * self.channels, root_idx=i.root_idx)
                for j in range(self.copies) for i in idxs]


def _channels_last_merge(graph, node) -> tuple[int, int] | None:
    """``(C, k)`` when reshape ``node`` merges the channel axis of a channels-last tensor (its input's last axis,
    ``C`` channels) innermost into an output axis of ``k C`` (its output's last axis); None otherwise."""
    sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    metadata = getattr(node.grad_fn, "_input_metadata", None)
    if sizes is None or not metadata:
        return None
    inputs = [_channels_between(graph, source, node) for source in node.inputs]
    channels, out = next((c for c in inputs if c), None), metadata[0].shape[-1]
    if not channels or sizes[-1] != channels or out <= channels or out % channels:
        return None
    return channels, out // channels


def _map_interleaved(node, channels: int, copies: int) -> None:
    for source in node.inputs:
        for dep in node.dependencies:
            if dep.target == source:
                dep.index_mapping[0] = _InterleavedIndexMapping(channels, copies, reverse=True)
        for dep in source.dependencies:
            if dep.target == node:
                dep.index_mapping[0] = _InterleavedIndexMapping(channels, copies)


def _last_axis_split_sizes(graph, node) -> list[int] | None:
    """The sizes of a split of a channels-last tensor (``N x ... x C``, 3-d or more) along its channels, the last
    axis (a gated MLP's ``chunk(2, dim=-1)``), which Torch-Pruning leaves unmapped; None for other splits."""
    sizes, dim = getattr(node.grad_fn, "_saved_self_sym_sizes", None), getattr(node.grad_fn, "_saved_dim", None)
    if dim is not None and dim >= 2 ** 63:  # a negative axis, saved unsigned
        dim -= 2 ** 64
    if sizes is None or dim is None or len(sizes) < 3 or dim not in (-1, len(sizes) - 1):
        return None
    total = sizes[-1]
    if any(_channels_between(graph, source, node) not in (None, total) for source in node.inputs):
        return None
    split = getattr(node.grad_fn, "_saved_split_sizes", None)
    if split is None:
        size = getattr(node.grad_fn, "_saved_split_size", None)
        if not size:
            return None
        split = [min(size, total - start) for start in range(0, total, size)]
    return list(split)


def _map_last_axis_split(node, split: list[int]) -> None:
    """Map each output of a split along the channels to its range of the input's channels (Torch-Pruning's split
    mapping)."""
    offsets = [0]
    for size in split:
        offsets.append(offsets[-1] + size)
    node.module.split_sizes, node.module.offsets = split, offsets
    for i, out in enumerate(node.outputs[: len(split)]):
        for dep in node.dependencies:
            if dep.target == out:
                dep.index_mapping[0] = index_mapping._SplitIndexMapping(offset=offsets[i:i + 2], reverse=False)
                break
        for dep in out.dependencies:
            if dep.target == node:
                dep.index_mapping[0] = index_mapping._SplitIndexMapping(offset=offsets[i:i + 2], reverse=True)
                break


@contextmanager
def _index_mapping_fixes():
    """Torch-Pruning's index mapping with a slice mapping channels only when it cuts them
    (``_slice_cuts_the_channels``: its own rule takes axis 1 of every 4-d tensor for the channels), a
    concatenation sized by the trace, or left unmapped, as Torch-Pruning means to, when its inputs cannot be sized
    (``_concat_sizes_known``), a reshape that merges a channels-last tensor's channels with spatial
    neighbours mapped as interleaved (``_channels_last_merge``; Torch-Pruning maps 4-d flattens only, as blocks),
    a split of a channels-last tensor along its channels mapped (``_last_axis_split_sizes``; Torch-Pruning maps
    splits along axis 1 only), an unbind none of whose outputs reaches a layer left unmapped (Torch-Pruning
    divides by their number), and channels that Torch-Pruning's inference cannot tell (a split whose sizes it
    recorded for fewer outputs than the split has) unknown rather than an error."""
    slice_mapping, concat_mapping = index_mapping.update_slice_index_mapping, index_mapping.update_concat_index_mapping
    reshape_mapping, split_mapping = index_mapping.update_reshape_index_mapping, index_mapping.update_split_index_mapping
    unbind_mapping = index_mapping.update_unbind_index_mapping
    infer_out, infer_in = shape_infer.infer_out_channels_recursively, shape_infer.infer_in_channels_recursively

    def unknown_on_index_error(infer):
        def safe(*args, **kwargs):
            try:
                return infer(*args, **kwargs)
            except IndexError:
                return None
        return safe

    def update_slice(graph, node):
        if _slice_cuts_the_channels(graph, node):
            slice_mapping(graph, node)

    def update_concat(graph, node):
        if _concat_sizes_known(graph, node):
            concat_mapping(graph, node)

    def update_reshape(graph, node):
        merge = _channels_last_merge(graph, node)
        if merge is None:
            with suppress(ZeroDivisionError):  # channels inferred as 0 (a residual from the input): unmapped
                reshape_mapping(graph, node)
        else:
            _map_interleaved(node, *merge)

    def update_split(graph, node):
        split = _last_axis_split_sizes(graph, node)
        if split is None:
            split_mapping(graph, node)
        else:
            _map_last_axis_split(node, split)

    def update_unbind(graph, node):
        if node.outputs:
            unbind_mapping(graph, node)

    index_mapping.update_slice_index_mapping, index_mapping.update_concat_index_mapping = update_slice, update_concat
    index_mapping.update_reshape_index_mapping, index_mapping.update_split_index_mapping = update_reshape, update_split
    index_mapping.update_unbind_index_mapping = update_unbind
    shape_infer.infer_out_channels_recursively = unknown_on_index_error(infer_out)
    shape_infer.infer_in_channels_recursively = unknown_on_index_error(infer_in)
    try:
        yield
    finally:
        index_mapping.update_slice_index_mapping, index_mapping.update_concat_index_mapping = (slice_mapping,
                                                                                             concat_mapping)
        index_mapping.update_reshape_index_mapping, index_mapping.update_split_index_mapping = (reshape_mapping,
                                                                                               split_mapping)
        index_mapping.update_unbind_index_mapping = unbind_mapping
        shape_infer.infer_out_channels_recursively, shape_infer.infer_in_channels_recursively = infer_out, infer_in


#: Torch-Pruning's node types that are operations on tensors, not layers with weights
_TENSOR_OPERATIONS = {tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT,
                      tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.EXPAND, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.OUTPUT}


def parameter_channel_axis(parameter: torch.Tensor) -> int | None:
    """The axis of a parameter outside any layer that carries channels: the last axis longer than 1 whose length no
    other such axis has (a positional embedding of ``1 x C x H x W``: axis 1; of ``1 x H x W x C`` or ``1 x T x C``:
    the last), else the last axis longer than 1 (Torch-Pruning's rule); None for a scalar."""
    long = [i for i, size in enumerate(parameter.shape) if size > 1]
    unique = [i for i in long if sum(parameter.shape[j] == parameter.shape[i] for j in long) == 1]
    return (unique or long or [None])[-1]


#: indices Torch-Pruning may map in one group search before the group counts as one it cannot map (VGG-16's
#: flatten into its classifier maps 25,088 per channel list; a runaway search, millions per list and growing)
MAX_MAPPED_INDICES = 1_000_000


class IndexMappingBlowUp(RuntimeError):
    """A group search mapped more than ``MAX_MAPPED_INDICES`` indices."""


@contextmanager
def _bounded_index_mapping():
    """Count the indices Torch-Pruning's flatten, concatenation and split mappings produce in one group search;
    raise ``IndexMappingBlowUp`` past ``MAX_MAPPED_INDICES`` (mappings that multiply index lists along every path
    through flattens and concatenations, as EfficientViT-M's cascaded attention)."""
    classes = (index_mapping._FlattenIndexMapping, index_mapping._ConcatIndexMapping,
               index_mapping._SplitIndexMapping)
    calls = {cls: cls.__call__ for cls in classes}
    mapped = [0]

    def counted(call):
        def mapping(self, idxs):
            out = call(self, idxs)
            mapped[0] += len(out)
            if mapped[0] > MAX_MAPPED_INDICES:
                raise IndexMappingBlowUp(f"more than {MAX_MAPPED_INDICES} indices mapped for one group")
            return out
        return mapping

    for cls, call in calls.items():
        cls.__call__ = counted(call)
    try:
        yield
    finally:
        for cls, call in calls.items():
            cls.__call__ = call


def _covers_pruning_op(group: tp.Group, dep, idxs) -> bool:
    """Whether ``group`` already prunes every index of ``idxs`` (with its root index) on ``dep``'s layer and
    operation. The indices of each (layer, operation) are collected as the group grows (``group._covered``: the
    items seen, their indices by layer and operation), so that a search's checks take time linear in its items."""
    seen, covered = getattr(group, "_covered", (0, {}))
    for other, other_idxs in group.items[seen:]:
        covered.setdefault((other.target, other.handler), set()).update(other_idxs)
    group._covered = (len(group.items), covered)
    return covered.get((dep.target, dep.handler), set()).issuperset(idxs)


class DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's dependency graph with channels-last slices left unmapped (``_index_mapping_fixes``) when it
    is built and whenever it maps a group's indices, and without the operations that lead only to the network's
    outputs (``_drop_dead_ends``)."""

    def build_dependency(self, *args, **kwargs) -> "DependencyGraph":
        with _index_mapping_fixes():
            super().build_dependency(*args, **kwargs)
        self._drop_dead_ends()
        return self

    def _detect_unwrapped_parameters(self, unwrapped_parameters):
        """Torch-Pruning's parameters outside any layer, each pruned on ``parameter_channel_axis``."""
        names, found = super()._detect_unwrapped_parameters(unwrapped_parameters)
        return names, [entry._replace(pruning_dim=parameter_channel_axis(entry.parameters))
                       if isinstance(entry, tp._helpers.UnwrappedParameters) else entry for entry in found]

    def _trace(self, model, *args, **kwargs):
        """Torch-Pruning's trace, with every module that has a customized pruner read as one operation from its
        inputs to its output: the tracer also walks the operations inside it (a fused query-key-value output split
        into three), which would tie its input channels to three times as many."""
        inputs: dict[nn.Module, set] = {}

        def record(module, args):
            inputs[module] = {x.grad_fn for x in args if isinstance(x, torch.Tensor) and x.grad_fn is not None}

        custom = tuple(t for t in self.CUSTOMIZED_PRUNERS if isinstance(t, type))
        hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, custom)]
        try:
            module2node = super()._trace(model, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        by_grad_fn = {node.grad_fn: node for node in module2node.values()}
        for module, grad_fns in inputs.items():
            node = module2node.get(module)
            sources = [by_grad_fn[fn] for fn in grad_fns if fn in by_grad_fn]
            if node is None or not sources:
                continue
            for source in node.inputs:
                source.outputs = [n for n in source.outputs if n is not node]
            node.inputs = sources
            for source in sources:
                source.outputs.append(node)
        return module2node

    def _drop_dead_ends(self) -> None:
        """Forget the tensor operations from which no layer is reached (a detection head's outputs reshaped and
        concatenated over the levels of a feature pyramid): a group never needs them, and Torch-Pruning would map
        every output position of them, millions of indices per group."""
        nodes = list(self.module2node.values())
        live = {node for node in nodes if node.type not in _TENSOR_OPERATIONS}
        frontier = list(live)
        while frontier:
            for source in frontier.pop().inputs:
                if source not in live:
                    live.add(source)
                    frontier.append(source)
        for node in nodes:
            node.outputs = [n for n in node.outputs if n in live]
            node.dependencies = [d for d in node.dependencies if d.target in live]

    def get_pruning_group(self, *args, **kwargs) -> tp.Group:
        """Torch-Pruning's group, with the index mapping fixes, and a dependency reached again not followed again
        when the indices it carries are already in the group for its layer (Torch-Pruning follows it unless they
        are the very same list, which multiplies the work through networks that slice, concatenate and add the
        same channels, as DPN's dual paths)."""
        original = tp.dependency.group.Group.has_pruning_op
        tp.dependency.group.Group.has_pruning_op = _covers_pruning_op
        try:
            with _index_mapping_fixes(), _bounded_index_mapping():
                return super().get_pruning_group(*args, **kwargs)
        finally:
            tp.dependency.group.Group.has_pruning_op = original


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> DependencyGraph:
    """The dependency graph of ``model`` (``DependencyGraph``, with ``customized_pruners``); parameters outside any
    layer (class tokens, positional embeddings, layer scales) are pruned on ``parameter_channel_axis``; the
    roles of attention modules of no known class are inferred first (``infer_attention_roles``), after every
    ``nn.MultiheadAttention`` that can be is made a linear pair (``pruning.multihead``)."""
    pair_multihead_attention(model)
    infer_attention_roles(model, example_input)
    with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():  # tracer needs autograd
        return DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False,
                                                  customized_pruners=customized_pruners(model))


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


def _following_taps(module: nn.Module, calls: list[_Call], reused: set[nn.Module],
                    channel_axis: int) -> dict[str, nn.Module]:
    """The BatchNorm and the activation that ``module``'s output flows into, followed through the forward pass's
    dataflow (not the order modules are registered in): from the module's output, the first module that reads
    it (``_reads``: directly, or behind a residual addition); a BatchNorm is the ``bn`` tap, an activation the
    ``act`` tap (and the end), any other module (pooling, dropout) is passed through; a convolution or linear
    layer, a normalization across channels (LayerNorm, GroupNorm), a module that moves or changes the channel axis
    (a permutation, a flatten), a module called more than once per forward pass (its hook would see several
    feature maps), or a tensor that no module reads ends the walk. A concatenation changes the shape and so ends it
    too (DenseNet)."""
    taps: dict[str, nn.Module] = {"conv": module}
    index = next((i for i, call in enumerate(calls) if call.module is module), None)
    if index is None or module in reused:
        return taps
    tensor, tensor_fn = calls[index].output, calls[index].output_fn
    for call in calls[index + 1:]:
        if not _reads(call, tensor, tensor_fn):
            continue
        reader = call.module
        if isinstance(reader, (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.GroupNorm)) or reader in reused:
            break
        if not (isinstance(call.output, torch.Tensor) and call.output.dim() == tensor.dim()
                and call.output.shape[channel_axis] == tensor.shape[channel_axis]):
            break
        if isinstance(reader, nn.BatchNorm2d) and "bn" not in taps:
            taps["bn"] = reader
        elif isinstance(reader, ACTIVATIONS):
            taps["act"] = reader
            break
        tensor, tensor_fn = call.output, call.output_fn
    return taps


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def convolution_groups(module: nn.Module) -> int:
    """``groups`` of a grouped (not depthwise) convolution, 1 for every other layer."""
    return module.groups if isinstance(module, nn.Conv2d) and not _is_depthwise(module) else 1


def _root_pruning_fn(module: nn.Module):
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def pruning_group(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int]) -> tp.Group:
    """Torch-Pruning's group of output channels ``idxs`` of convolution or linear layer ``module``."""
    return graph.get_pruning_group(module, _root_pruning_fn(module), idxs=idxs)


def _member(module: nn.Module, names: dict, calls: list[_Call], reused: set[nn.Module]) -> Member | None:
    """The group member behind an out-channel operation's module, if it makes the channels: a convolution, a
    linear layer, a linear-pair attention's output projection."""
    if is_linear_pair(module):
        module = module.proj
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        axis = 1 if isinstance(module, nn.Conv2d) else -1
        return Member(names[module], module, _following_taps(module, calls, reused, axis), channel_axis=axis)
    return None


def _consumer(item) -> Consumer | None:
    """The layer behind an in-channel operation of a Torch-Pruning group, if it reads the channels with weights of
    its own (an ordinary convolution, a linear layer, a linear-pair attention's ``qkv``)."""
    module = item.dep.target.module
    module = module.qkv if is_linear_pair(module) else module
    if not isinstance(module, (nn.Conv2d, nn.Linear)) or _is_depthwise(module):
        return None
    return Consumer(module, torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs))


def layer_row_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters a convolution or linear layer subclass keeps beside its weight and bias, one row per output
    channel (the gain of timm's ``ScaledStdConv2d``): Torch-Pruning does not prune them with the layer's rows."""
    return [(name, p) for name, p in module.named_parameters(recurse=False)
            if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == module.weight.shape[0]]


def _untapped_batchnorms(targets: list[nn.Module], members: list[Member]) -> list[nn.Module]:
    """Batch norms of a group that are no member's ``bn`` tap (LeViT's over flattened tokens): their affine entries
    go with the channels as loose parameters."""
    taps = {member.taps.get("bn") for member in members}
    return [m for m in targets if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in taps]


def _input_channels(module: nn.Module) -> int:
    """The input channels (features) of a convolution or linear layer."""
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def _is_op(item, name: str) -> bool:
    return item.dep.handler.__name__ == name


def _split_copies(graph: tp.DependencyGraph, module: nn.Module, group: tp.Group) -> int:
    """How many of ``module``'s output channels go with its channel 0 when its outputs are split and recombined
    (a gated MLP's ``a * act(b)`` over the two halves of one linear layer: 2); 1 for groups without a split."""
    if not any(item.dep.target.type == tp.ops.OPTYPE.SPLIT for item in group):
        return 1
    single = pruning_group(graph, module, [0])
    tied = {int(i) for item in single if item.dep.target.module is module and _is_op(item, "prune_out_channels")
            for i in item.idxs}
    width = module.weight.shape[0]
    if width % len(tied) or tied != set(range(0, width, width // len(tied))):
        return 1
    return len(tied)


def _head_dependency_group(qkv: nn.Linear, proj: nn.Linear, names: dict) -> tp.Group:
    """A Torch-Pruning group of attention heads for its importance classes: ``qkv``'s rows (the group's channels)
    and the columns of ``proj`` that read the value rows ``2 W + j``."""
    width = proj.in_features
    source, target = tp.dependency.Node(qkv, None, names[qkv]), tp.dependency.Node(proj, None, names[proj])
    group = tp.Group()
    group.add_dep(tp.Dependency(tp.prune_linear_out_channels, tp.prune_linear_out_channels, source, source),
                  list(range(3 * width)))
    group.add_dep(tp.Dependency(tp.prune_linear_out_channels, tp.prune_linear_in_channels, source, target),
                  list(range(width)))
    group[0].root_idxs, group[1].root_idxs = list(range(3 * width)), list(range(2 * width, 3 * width))
    return group


def head_layer(attention: nn.Module, names: dict) -> PrunableLayer:
    """The heads of a linear-pair attention module (``pruning.attention.prune_heads``) as a channel group: the
    ``3 W`` rows of ``qkv`` (its queries, keys and values: ``channel_groups`` 3), removed a head at a time
    (``unit_width`` ``W / H``), read by ``proj``'s columns (through the values). Its feature map is ``qkv``'s
    output; a head's score is the mean of its query, key and value dimensions' scores."""
    qkv, proj = attention.qkv, attention.proj
    width = proj.in_features
    return PrunableLayer(names[qkv], [Member(names[qkv], qkv, {"conv": qkv}, channel_axis=-1)],
                         [Consumer(proj, torch.arange(width), torch.arange(2 * width, 3 * width))],
                         dependency_group=_head_dependency_group(qkv, proj, names), channel_groups=3,
                         unit_width=width // head_count(attention), heads_of=attention)


def find_prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[PrunableLayer]:
    """Every channel group that can be pruned, in module order of its first member.

    A group is what Torch-Pruning's dependency graph ties to the output channels of a convolution or of a linear
    layer applied per position or token (N x ... x C: a transformer's or ConvNeXt's channel mixer; a linear layer on
    flat feature vectors, as a classifier's hidden layers, has neurons, not channels, and is not a group's root):
    convolutions and linear layers whose outputs are added (residual stages, a transformer's embedding width),
    depthwise convolutions that carry the channels on, the layer norms, attention modules and loose parameters
    (tokens, positional embeddings, layer scales) on the way. Consumers are the group's in-channel (or in-feature)
    pruning operations on ordinary convolutions and linear layers, with Torch-Pruning's index mapping (several
    inputs per channel after a flatten). Channels that grouped (not depthwise) convolutions produce or read are
    pruned block-symmetrically (``channel_groups``: the least common multiple of those convolutions' ``groups``),
    as are channels that an attention module splits into heads (its head count, ``pruning.attention``) or a group
    norm into groups (``num_groups``: every group keeps as many channels; its affine entries are masked as loose
    parameters, while its statistics still include a masked channel's zeros; so are the affine entries of batch
    norms that are no member's tap and a member's own per-row parameters, ``layer_row_parameters``). A group whose
    members differ in width (an operation the graph cannot map, as a fused query-key-value output split into
    heads), that no layer reads (the network's outputs: a classifier's logits, a segmentation head's class maps) or
    that the graph maps beyond a consumer's inputs (a split into heads of unequal parts, as LeViT's keys, queries and
    values) or to more indices than a search allows (``MAX_MAPPED_INDICES``) is not prunable here and is left out
    (logged). The tap points of every member follow its output through the forward
    pass (``_following_taps``). A convolution that the forward pass in eval mode never calls (an auxiliary
    classifier run only in training) is an error: the channels it reads could not be kept consistent.
    """
    graph = dependency_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    calls = _leaf_calls(model, example_input)
    counts = Counter(call.module for call in calls)
    reused = {module for module, n in counts.items() if n > 1}
    positional = {c.module for c in calls if isinstance(c.output, torch.Tensor) and c.output.dim() > 2}
    untraced = [n for n, m in leaves if isinstance(m, nn.Conv2d) and not counts[m]]
    if untraced:
        raise ValueError(f"convolution(s) {untraced[:4]}{' ...' if len(untraced) > 4 else ''} are not called by the "
                         f"network's forward pass (in eval mode), so the channels they read cannot be traced; remove "
                         f"them or build the network without them (torchvision's GoogLeNet and Inception-v3: "
                         f"aux_logits=False, their auxiliary classifiers run only in training)")
    unwrapped = {id(p.parameters): p.pruning_dim for p in graph.unwrapped_parameters}
    heads = {m.qkv: m for m in model.modules() if prunable_heads(m)}
    layers, covered = [], set()
    for name, module in leaves:
        if module in heads:
            layers.append(head_layer(heads[module], names))
            continue
        root = isinstance(module, nn.Conv2d) or isinstance(module, nn.Linear) and module in positional
        if not root or module in covered or _is_depthwise(module) or module not in graph.module2node:
            continue
        try:
            group = pruning_group(graph, module, list(range(module.weight.shape[0])))
        except IndexMappingBlowUp:
            log.warning("channels of %s map to more indices than a group search allows (%d) and are not pruned",
                        names[module], MAX_MAPPED_INDICES)
            continue
        targets = [item.dep.target.module for item in group if _is_op(item, "prune_out_channels")]
        members = sorted(filter(None, (_member(m, names, calls, reused) for m in targets)), key=lambda m: order[m.module])
        covered.update(member.module for member in members)
        if len({member.module.weight.shape[0] for member in members}) > 1:
            log.warning("channels of %s are tied to layers of other widths through an operation the dependency "
                        "graph cannot map and are not pruned", [member.name for member in members])
            continue
        consumers = list(filter(None, (_consumer(item) for item in group if _is_op(item, "prune_in_channels"))))
        if not consumers:
            log.info("channels of %s are the network's outputs (no layer reads them) and are not pruned",
                     [member.name for member in members])
            continue
        unmapped = [names[c.module] for c in consumers if int(c.idxs.max()) >= _input_channels(c.module)]
        if unmapped:
            log.warning("channels of %s reach %s through an operation the dependency graph maps beyond their inputs "
                        "and are not pruned", [member.name for member in members], unmapped)
            continue
        attentions = [m for m in targets if is_tied_attention(m)]
        group_norms = [m for m in targets if isinstance(m, nn.GroupNorm)]
        channel_groups = math.lcm(*(convolution_groups(m.module) for m in members),
                                  *(convolution_groups(c.module) for c in consumers),
                                  *(attention_heads(m) for m in attentions), *(m.num_groups for m in group_norms),
                                  _split_copies(graph, module, group))
        layers.append(PrunableLayer(
            members[0].name, members, consumers,
            self_masking=[m for m in targets if hasattr(m, "mask_out_channels")],
            norms=[Consumer(item.dep.target.module, torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs))
                   for item in group if _is_op(item, "prune_out_channels")
                   and isinstance(item.dep.target.module, nn.LayerNorm)],
            parameters=[(m, unwrapped[id(m)]) for m in targets if id(m) in unwrapped]
            + [(p, 0) for m in group_norms + _untapped_batchnorms(targets, members)
               for p in (m.weight, m.bias) if p is not None]
            + [(p, 0) for member in members for _, p in layer_row_parameters(member.module)],
            attentions=attentions, dependency_group=group, channel_groups=channel_groups))
    return layers
