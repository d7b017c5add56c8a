"""Attention modules as seen by channel pruning.

**Linear-pair attention** (timm's ``Attention`` and every module built the same way: a ``qkv`` linear layer, a
``proj`` linear layer and a fixed ``head_dim``/``num_heads``) reads its input channels through ``qkv`` and writes
its output channels through ``proj``; its heads in between have a width of their own. ``LinearPairPruner`` makes
such a module one node of Torch-Pruning's dependency graph: removing input channels removes ``qkv``'s columns,
removing output channels ``proj``'s rows (the tracer would otherwise tie the fused query-key-value output to the
output projection through the reshape into heads, which it cannot map). Its heads have a group of their own
(``prune_heads``, ``pruning.layers.head_layer``) when removing one gives what zeroing its queries, keys and values
gives. ``nn.MultiheadAttention`` is made such a module (``pruning.multihead``) where it can be.

**Tied attention**: the rest of this docstring.

An ``nn.MultiheadAttention`` left as it is (``pruning.multihead.can_pair``) and torchvision's Swin window attention
project a token of width ``E`` to queries, keys and values of width ``E`` each (one fused projection, ``3E x E``), split them into ``num_heads`` heads of
``E / num_heads`` dimensions, and project the heads' outputs back to ``E``. A channel ``c`` of the residual width they
sit on is therefore also dimension ``c`` of the queries, keys and values: removing it removes rows ``c``, ``E + c``,
``2E + c`` of the fused projection, its column ``c``, and row and column ``c`` of the output projection. Channels are
removed in head-symmetric blocks (``channel_groups = num_heads``, see ``PrunableLayer.unit_channels``) so every head
keeps the same dimension; the slimmed attention scales its scores by ``1/sqrt`` of the new head dimension.

torchvision's Swin attention calls its projections through ``torch.nn.functional``, so Torch-Pruning's tracer never
sees them: ``TiedAttentionPruner`` makes the module one node of the dependency graph with the pruning above.

**Other attention modules** (timm's families write their own: PVT's ``q``/``kv``/``sr``, CrossViT's
``wq``/``wk``/``wv``, window and channel attentions that split their input width ``C`` into heads) are told apart by
trying them (``infer_attention_roles``): a module with a head count (``num_heads``, ``n_heads`` or ``heads``) and an
output projection (``proj``, ``o_proj``, ``out_proj``, ``to_out``, ``merge``, ``proj_out``) is copied, one channel of
every head is removed from its input and output width, and the copy is run on the input the module received in an
example forward pass. It is a *linear pair* when it runs with its heads left whole (only ``qkv``'s input columns and
``proj``'s output rows removed, and its ``qkv`` is three times ``proj``'s input); otherwise it is *width-tied* when it
runs with the removal carried through every direct child (``GenericTiedPruner``: the rows ``c + k C`` of every
linear layer or convolution whose output is ``k`` times ``C`` wide, the columns ``c`` of every one that reads ``C``,
the entries ``c`` of every norm over ``C``, and the widths it keeps as attributes); a module that runs neither way is
left to the tracer. The cost of a width-tied module is measured rather than derived: its parameters and FLOPs on the
recorded input at three widths, a quadratic in the width (``MeasuredAttentionCost``).
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import torch
import torch.nn as nn
import torch_pruning as tp

from infoprune.pruning.flops import call_flops
from infoprune.pruning.modes import preserved_modes


def attention_projections(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None, nn.Linear]:
    """The fused query-key-value weight (``3E x E``) and bias and the output projection of an attention module."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_weight, module.in_proj_bias, module.out_proj
    parts = tied_attention_classes()[type(module)]
    reader = getattr(module, parts.reader)
    return reader.weight, reader.bias, getattr(module, parts.writer)


class LinearPairPruner(tp.pruner.function.BasePruningFunc):
    """Input channels of a linear-pair attention module are ``qkv``'s input features, its output channels
    ``proj``'s output features."""

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        tp.prune_linear_in_channels(layer.qkv, idxs)
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        tp.prune_linear_out_channels(layer.proj, idxs)
        return layer

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.qkv.in_features

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.out_features


def has_linear_pair(module: nn.Module) -> bool:
    """Whether ``module`` has ``qkv`` and ``proj`` linear layers, ``qkv`` three times as wide as ``proj``'s
    input."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    return isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and qkv.out_features == 3 * proj.in_features


def is_linear_pair(module: nn.Module) -> bool:
    """Whether ``infer_attention_roles`` found ``module`` to run as a linear pair."""
    return _ROLES.get(module) == "pair"


def _inner_rows(width: int, idxs, copies: int = 3) -> torch.Tensor:
    """Rows ``c + k * width`` for ``k < copies``: channel ``c`` in each of a fused projection's outputs."""
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    return torch.cat([idxs + k * width for k in range(copies)])


@dataclass(frozen=True)
class TiedAttention:
    """Where a tied attention class keeps its parts: the fused query-key-value layer, the output projection, the
    head count and, where the class keeps it as an attribute its forward pass reads, the head dimension."""

    reader: str = "qkv"
    writer: str = "proj"
    heads: str = "num_heads"
    head_dim: str | None = None


class TiedAttentionPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's pruning of a tied attention module (torchvision's Swin window attention, MaxViT's relative
    attention), whose input and output are one width (the residual width of its block): removing output channels
    ``c`` removes the output projection's rows ``c``, the same inner dimensions (the fused layer's rows ``c``,
    ``E + c``, ``2E + c`` and the output projection's column ``c``) and the same input channels (the fused layer's
    column ``c``), and updates a head-dimension attribute. Input channels alone are never removed: the tracer
    reaches the input through the shifted window's slicing, whose channel mapping it gets wrong."""

    def __init__(self, parts: TiedAttention) -> None:
        super().__init__()
        self.parts = parts

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        reader, writer = getattr(layer, self.parts.reader), getattr(layer, self.parts.writer)
        tp.prune_linear_out_channels(reader, _inner_rows(writer.out_features, idxs).tolist())
        tp.prune_linear_in_channels(reader, idxs)
        tp.prune_linear_in_channels(writer, idxs)
        tp.prune_linear_out_channels(writer, idxs)
        if self.parts.head_dim is not None:
            setattr(layer, self.parts.head_dim, writer.out_features // getattr(layer, self.parts.heads))
        return layer

    def get_in_channels(self, layer: nn.Module) -> int:
        return getattr(layer, self.parts.reader).in_features

    def get_out_channels(self, layer: nn.Module) -> int:
        return getattr(layer, self.parts.writer).out_features


@cache
def tied_attention_classes() -> dict[type, TiedAttention]:
    """The tied attention classes: torchvision's Swin and Swin V2 window attention and MaxViT's relative
    attention."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    return {ShiftedWindowAttention: TiedAttention(), ShiftedWindowAttentionV2: TiedAttention(),
            RelativePositionalMultiHeadAttention: TiedAttention("to_qkv", "merge", "n_heads", "head_dim")}


@cache
def tied_attention_pruners() -> dict[type, TiedAttentionPruner]:
    return {cls: TiedAttentionPruner(parts) for cls, parts in tied_attention_classes().items()}


def is_tied_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module) in tied_attention_classes() or is_width_tied(module)


def is_width_tied(module: nn.Module) -> bool:
    """Whether ``infer_attention_roles`` found ``module`` to run with its inner width tied to its input width."""
    return _ROLES.get(module) == "tied"


def attention_heads(module: nn.Module) -> int:
    """The head count of a tied attention module."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads
    if is_width_tied(module):
        return head_count(module)
    return getattr(module, tied_attention_classes()[type(module)].heads)


def attention_width(module: nn.Module) -> int:
    """The embedding width ``E`` of a tied attention module (its output projection's outputs)."""
    if is_width_tied(module):
        return _channels(output_projection(module), "out")
    return attention_projections(module)[2].out_features


def window_area(module: nn.Module) -> int | None:
    """Positions of one attention window: a Swin window's, a MaxViT partition's; None for global attention."""
    if getattr(module, "window_size", None) is not None:
        return module.window_size[0] * module.window_size[1]
    return getattr(module, "max_seq_len", None)


def attention_tokens(module: nn.Module, output) -> int:
    """Tokens an attention module projects for one image: its output's (``N x T x E``, the first of an
    ``nn.MultiheadAttention``'s outputs); a Swin window attention's ``N x H x W x E`` output padded up to whole
    windows, as it computes them."""
    output = output[0] if isinstance(output, tuple) else output
    window = getattr(module, "window_size", None)
    if window is None or output.dim() != 4:
        return output.numel() // output.shape[-1]
    (h, w), (wh, ww) = output.shape[1:3], window
    return output.shape[0] * -(-h // wh) * wh * -(-w // ww) * ww


def attention_cost(module: nn.Module, width: int, tokens: int) -> tuple[int, int]:
    """(parameters, FLOPs per image) of an attention module at width ``E`` over ``T`` tokens, as
    ``count_parameters`` and ``torch.utils.flop_counter`` count them: ``4 E^2`` projection weights plus ``4 E``
    biases, and ``8 E^2 T`` projection FLOPs; a Swin or MaxViT window attention's products of queries with keys and
    of attention with values are explicit matrix products, ``4 T A E`` FLOPs over windows of ``A`` positions, while
    ``nn.MultiheadAttention`` runs them in a fused kernel the counter does not count."""
    weight, bias, out = attention_projections(module)
    biases = 3 * width * (bias is not None) + width * (out.bias is not None)
    area = window_area(module)
    products = 4 * tokens * area * width if area is not None else 0
    return 4 * width * width + biases, 8 * width * width * tokens + products


@torch.no_grad()
def mask_attention(module: nn.Module, removed: torch.Tensor) -> None:
    """Zero the output projection's rows ``removed`` and the query, key and value rows of the same inner
    dimensions, with their biases (the masked heads then attend over the kept dimensions only); in a width-tied
    module, the rows ``c + k C`` of every direct child whose output is ``k`` times ``C`` wide."""
    if is_width_tied(module):
        width = attention_width(module)
        for child in module.children():
            if _is_projection(child) and _channels(child, "out") % width == 0:
                rows = _inner_rows(width, removed.cpu(), _channels(child, "out") // width).to(child.weight.device)
                child.weight[rows] = 0.0
                if child.bias is not None:
                    child.bias[rows] = 0.0
        return
    weight, bias, out = attention_projections(module)
    rows = _inner_rows(out.out_features, removed.cpu()).to(weight.device)
    weight[rows] = 0.0
    out.weight[removed] = 0.0
    if bias is not None:
        bias[rows] = 0.0
    if out.bias is not None:
        out.bias[removed] = 0.0


#: the role ``infer_attention_roles`` found for each attention module of the networks it ran on: "pair" or "tied"
_ROLES: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()

#: attributes that hold an attention module's head count, and the names of its output projection
HEAD_COUNTS = ("num_heads", "n_heads", "heads")
OUTPUT_PROJECTIONS = ("proj", "o_proj", "out_proj", "to_out", "merge", "proj_out")


def head_count(module: nn.Module) -> int | None:
    """The head count an attention module keeps as an attribute (``HEAD_COUNTS``), or None."""
    for name in HEAD_COUNTS:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _is_projection(module: nn.Module) -> bool:
    """A linear layer or an ungrouped convolution."""
    return isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and module.groups == 1


def output_projection(module: nn.Module) -> nn.Module | None:
    """An attention module's output projection: its linear layer or ungrouped convolution named as in
    ``OUTPUT_PROJECTIONS``."""
    for name in OUTPUT_PROJECTIONS:
        child = getattr(module, name, None)
        if _is_projection(child):
            return child
    return None


def _channels(layer: nn.Module, side: str) -> int:
    """Output (``side="out"``) or input channels of a linear layer or convolution."""
    if isinstance(layer, nn.Linear):
        return layer.out_features if side == "out" else layer.in_features
    return layer.out_channels if side == "out" else layer.in_channels


def prune_tied_width(module: nn.Module, idxs) -> None:
    """Remove channels ``idxs`` of a width-tied attention module's width ``C`` everywhere inside it: rows
    ``c + k C`` of every direct child linear layer or ungrouped convolution whose output is ``k C`` wide, columns
    ``c`` of every one that reads ``C`` channels, entries ``c`` of every layer or batch norm over ``C`` and of the
    module's own parameters and buffers of ``C`` entries (Swin V2's query and value biases); the integer
    attributes that hold ``C`` (names with ``dim`` or ``features``) and the head dimension follow."""
    width, idxs = _channels(output_projection(module), "out"), sorted(int(i) for i in idxs)
    kept, heads = width - len(idxs), head_count(module)
    for child in module.children():
        if _is_projection(child):
            out_fn, in_fn = ((tp.prune_linear_out_channels, tp.prune_linear_in_channels) if isinstance(child, nn.Linear)
                             else (tp.prune_conv_out_channels, tp.prune_conv_in_channels))
            if _channels(child, "out") % width == 0:
                out_fn(child, _inner_rows(width, idxs, _channels(child, "out") // width).tolist())
            if _channels(child, "in") == width:
                in_fn(child, idxs)
        elif isinstance(child, nn.LayerNorm) and tuple(child.normalized_shape) == (width,):
            tp.prune_layernorm_out_channels(child, idxs)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and child.num_features == width:
            tp.prune_batchnorm_out_channels(child, idxs)
    kept_idxs = _kept(width, idxs)
    for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if tensor is not None and tuple(tensor.shape) == (width,):
            kept_tensor = tensor.data.index_select(0, kept_idxs.to(tensor.device))
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(kept_tensor, requires_grad=tensor.requires_grad))
            else:
                module._buffers[name] = kept_tensor
    for name, value in list(vars(module).items()):
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if name == "head_dim" and value * heads == width:
            setattr(module, name, kept // heads)
        elif ("dim" in name or "features" in name) and value == width:
            setattr(module, name, kept)


class GenericTiedPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's pruning of a width-tied attention module (``prune_tied_width``), whose input and output are
    one width: removing output channels removes them everywhere inside; input channels alone are never removed."""

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        prune_tied_width(layer, idxs)
        return layer

    def get_in_channels(self, layer: nn.Module) -> int:
        return attention_width(layer)

    def get_out_channels(self, layer: nn.Module) -> int:
        return attention_width(layer)


def _is_candidate(module: nn.Module) -> bool:
    """An attention module of no known class: a head count, an output projection, a width its heads divide."""
    if isinstance(module, nn.MultiheadAttention) or type(module) in tied_attention_classes():
        return False
    heads, writer = head_count(module), output_projection(module)
    return heads is not None and writer is not None and _channels(writer, "out") % heads == 0


def _channel_axis(tensor: torch.Tensor, width: int) -> int | None:
    """The axis of a tensor that carries ``width`` channels: the last (tokens), else axis 1 of an image tensor."""
    if tensor.dim() >= 2 and tensor.shape[-1] == width:
        return tensor.dim() - 1
    if tensor.dim() == 4 and tensor.shape[1] == width:
        return 1
    return None


def _first_tensor(output) -> torch.Tensor | None:
    return output if isinstance(output, torch.Tensor) else next(
        (t for t in output if isinstance(t, torch.Tensor)), None) if isinstance(output, (tuple, list)) else None


def _without(tensor, width: int, kept: torch.Tensor):
    """``tensor`` with only channels ``kept`` on its channel axis (other values as they are)."""
    if not isinstance(tensor, torch.Tensor):
        return tensor
    axis = _channel_axis(tensor, width)
    return tensor if axis is None else tensor.index_select(axis, kept.to(tensor.device))


def _one_per_head(width: int, heads: int, count: int = 1) -> list[int]:
    """The first ``count`` channels of every head's block of ``width / heads`` channels."""
    block = width // heads
    return [b * block + u for b in range(heads) for u in range(count)]


def _kept(width: int, removed: list[int]) -> torch.Tensor:
    """The channels of ``width`` not in ``removed``."""
    removed = set(removed)
    return torch.tensor([c for c in range(width) if c not in removed], dtype=torch.long)


@torch.no_grad()
def _runs_pruned(module: nn.Module, prune, call, removed: list[int], in_width: int | None = None) -> bool:
    """Whether a copy of ``module`` with output channels ``removed`` (and as many input channels: the same ones when
    its input is as wide as its output, ``in_width`` channels, else the first ones) pruned by ``prune(copy, inputs,
    outputs)`` runs on the recorded ``call`` (``args, kwargs, output``) with those channels removed from its
    inputs, and gives the output it gave with those channels removed."""
    args, kwargs, output = call
    width = _channels(output_projection(module), "out")
    in_width = width if in_width is None else in_width
    removed_in = removed if in_width == width else list(range(len(removed)))
    kept_in = _kept(in_width, removed_in)
    trial = copy.deepcopy(module)
    try:
        prune(trial, removed_in, removed)
        result = _first_tensor(trial(*(_without(a, in_width, kept_in) for a in args),
                                     **{k: _without(v, in_width, kept_in) for k, v in kwargs.items()}))
    except Exception:  # noqa: BLE001 - any failure means this reading of the module is wrong
        return False
    expected = _first_tensor(output)
    axis = None if expected is None else _channel_axis(expected, width)
    if result is None or axis is None:
        return False
    shape = list(expected.shape)
    shape[axis] = width - len(removed)
    return list(result.shape) == shape


#: attention modules of the networks ``infer_attention_roles`` ran on whose heads can be removed whole
_HEADS: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def prunable_heads(module: nn.Module) -> bool:
    """Whether ``infer_attention_roles`` found that ``module`` (a linear pair) runs with whole heads removed
    (``prune_heads``), giving what it gives with those heads' queries, keys and values zeroed."""
    return module in _HEADS


def _head_count_attribute(module: nn.Module) -> str:
    return next(name for name in HEAD_COUNTS if getattr(module, name, None) == head_count(module))


def head_dims(width: int, heads: int, removed) -> list[int]:
    """The inner dimensions ``h d_h + d`` (``d < d_h = width / heads``) of heads ``removed``."""
    size = width // heads
    return [h * size + d for h in sorted(int(h) for h in removed) for d in range(size)]


def prune_heads(module: nn.Module, removed) -> None:
    """Remove heads ``removed`` of a linear-pair attention module (inner width ``W = proj.in_features``, ``H``
    heads of ``d_h = W / H`` dimensions): rows ``k W + h d_h + d`` (``k < 3``) of ``qkv``, columns ``h d_h + d``
    of ``proj``; the head count becomes ``H - |removed|`` and an ``attn_dim`` attribute the new inner width."""
    width, heads = module.proj.in_features, head_count(module)
    dims = head_dims(width, heads, removed)
    tp.prune_linear_out_channels(module.qkv, _inner_rows(width, dims).tolist())
    tp.prune_linear_in_channels(module.proj, dims)
    setattr(module, _head_count_attribute(module), heads - len(set(removed)))
    if getattr(module, "attn_dim", None) == width:
        module.attn_dim = module.proj.in_features


@torch.no_grad()
def _prunes_heads_exactly(module: nn.Module, call) -> bool:
    """Whether a copy of ``module`` with its first head removed (``prune_heads``) gives, on the recorded ``call``,
    what a copy with that head's ``qkv`` rows zeroed gives (within 1e-5)."""
    heads, width = head_count(module), module.proj.in_features
    if width % heads:
        return False
    masked, pruned = copy.deepcopy(module), copy.deepcopy(module)
    rows = _inner_rows(width, head_dims(width, heads, [0]))
    masked.qkv.weight[rows] = 0.0
    if masked.qkv.bias is not None:
        masked.qkv.bias[rows] = 0.0
    args, kwargs, _ = call
    try:
        prune_heads(pruned, [0])
        expected, result = _first_tensor(masked(*args, **kwargs)), _first_tensor(pruned(*args, **kwargs))
    except Exception:  # noqa: BLE001 - any failure means the heads cannot be removed this way
        return False
    return (result is not None and expected is not None and result.shape == expected.shape
            and torch.allclose(result, expected, rtol=1e-4, atol=1e-5))


def _try_pair(module: nn.Module, inputs, outputs) -> None:
    tp.prune_linear_in_channels(module.qkv, inputs)
    tp.prune_linear_out_channels(module.proj, outputs)


def _try_tied(module: nn.Module, inputs, outputs) -> None:
    if list(inputs) != list(outputs):
        raise ValueError("a width-tied module's input is as wide as its output")
    prune_tied_width(module, outputs)


def infer_attention_roles(model: nn.Module, example_input: torch.Tensor) -> None:
    """Find how every attention module of no known class in ``model`` prunes, by trying (see the module's
    docstring): all modules of one class in the network get the role every one of them passes ("pair" before
    "tied"), or none."""
    candidates = [m for m in model.modules() if _is_candidate(m)]
    for module in candidates:
        _ROLES.pop(module, None)
        _HEADS.discard(module)
    if not candidates:
        return
    calls = record_calls(model, example_input, candidates)
    by_class: dict[type, list[nn.Module]] = {}
    for module in candidates:
        by_class.setdefault(type(module), []).append(module)
    for modules in by_class.values():
        if not all(m in calls for m in modules):
            continue
        for role, trial in (("pair", _try_pair), ("tied", _try_tied)):
            if role == "pair" and not all(has_linear_pair(m) for m in modules):
                continue
            if all(_runs_pruned(m, trial, calls[m], _one_per_head(_channels(output_projection(m), "out"), head_count(m)),
                                m.qkv.in_features if role == "pair" else None) for m in modules):
                for m in modules:
                    _ROLES[m] = role
                break
        if all(is_linear_pair(m) for m in modules) and all(_prunes_heads_exactly(m, calls[m]) for m in modules):
            _HEADS.update(modules)


def record_calls(model: nn.Module, example_input: torch.Tensor, modules: list[nn.Module]) -> dict:
    """The first call of each of ``modules`` in a forward pass of ``example_input[:1]`` in eval mode: module ->
    (positional arguments, keyword arguments, output)."""
    calls: dict[nn.Module, tuple] = {}

    def record(module, args, kwargs, output):
        calls.setdefault(module, (args, kwargs, output))

    if not modules:
        return calls
    hooks = [m.register_forward_hook(record, with_kwargs=True) for m in modules]
    try:
        with torch.no_grad(), preserved_modes(model):
            model.eval()(example_input[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def measured_attention_cost(module: nn.Module, call) -> "MeasuredAttentionCost":
    """The cost of a width-tied attention module measured on its recorded ``call`` (see ``MeasuredAttentionCost``)."""
    width, heads = attention_width(module), head_count(module)
    points = {}
    for units in range(min(3, width // heads)):
        removed = _one_per_head(width, heads, units)
        trial, args, kwargs = module, call[0], call[1]
        if units:
            trial = copy.deepcopy(module)
            prune_tied_width(trial, removed)
            kept = _kept(width, removed)
            args = tuple(_without(a, width, kept) for a in args)
            kwargs = {k: _without(v, width, kept) for k, v in kwargs.items()}
        points[width - len(removed)] = (sum(p.numel() for p in trial.parameters()), call_flops(trial, *args, **kwargs))
    return MeasuredAttentionCost(points)


@dataclass(frozen=True)
class MeasuredAttentionCost:
    """(parameters, FLOPs) of an attention module at any width ``w``: the polynomial through the measured widths
    ``points`` (quadratic through three: projections cost ``w^2``, products with the tokens ``w``), exact at the
    measured widths and so for the removal of whole blocks of one channel per head."""

    points: dict

    def __call__(self, width: int) -> tuple[int, int]:
        values = [Fraction(0), Fraction(0)]
        for x, costs in self.points.items():
            weight = Fraction(1)
            for other in self.points:
                if other != x:
                    weight *= Fraction(width - other, x - other)
            values = [v + weight * c for v, c in zip(values, costs)]
        return round(values[0]), round(values[1])
