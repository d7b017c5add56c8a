"""Attention modules as seen by channel pruning.

**Linear-pair attention** (timm's ``Attention`` and every module built the same way: a ``qkv`` linear layer, a
``proj`` linear layer and a fixed ``head_dim``/``num_heads``) reads its input channels through ``qkv`` and writes
its output channels through ``proj``; its heads in between have a width of their own. ``LinearPairPruner`` makes
such a module one node of Torch-Pruning's dependency graph: removing input channels removes ``qkv``'s columns,
removing output channels ``proj``'s rows, and the heads are left whole (the tracer would otherwise tie the fused
query-key-value output to the output projection through the reshape into heads, which it cannot map).

**Tied attention**: the rest of this docstring.

``nn.MultiheadAttention`` and torchvision's Swin window attention project a token of width ``E`` to queries, keys
and values of width ``E`` each (one fused projection, ``3E x E``), split them into ``num_heads`` heads of
``E / num_heads`` dimensions, and project the heads' outputs back to ``E``. A channel ``c`` of the residual width they
sit on is therefore also dimension ``c`` of the queries, keys and values: removing it removes rows ``c``, ``E + c``,
``2E + c`` of the fused projection, its column ``c``, and row and column ``c`` of the output projection. Channels are
removed in head-symmetric blocks (``channel_groups = num_heads``, see ``PrunableLayer.unit_channels``) so every head
keeps the same dimension; the slimmed attention scales its scores by ``1/sqrt`` of the new head dimension.

torchvision's Swin attention calls its projections through ``torch.nn.functional``, so Torch-Pruning's tracer never
sees them: ``TiedAttentionPruner`` makes the module one node of the dependency graph with the pruning above.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn as nn
import torch_pruning as tp


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


def is_linear_pair(module: nn.Module) -> bool:
    """A module with ``qkv`` and ``proj`` linear layers, ``qkv`` three times as wide as ``proj``'s input, and
    ``num_heads`` (not a tied attention class)."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(getattr(module, "num_heads", None), int)
            and qkv.out_features == 3 * proj.in_features and type(module) not in tied_attention_classes())


def _inner_rows(width: int, idxs) -> torch.Tensor:
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    return torch.cat([idxs + k * width for k in range(3)])


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
    return isinstance(module, nn.MultiheadAttention) or type(module) in tied_attention_classes()


def attention_heads(module: nn.Module) -> int:
    """The head count of a tied attention module."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads
    return getattr(module, tied_attention_classes()[type(module)].heads)


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
    dimensions, with their biases (the masked heads then attend over the kept dimensions only)."""
    weight, bias, out = attention_projections(module)
    rows = _inner_rows(out.out_features, removed.cpu()).to(weight.device)
    weight[rows] = 0.0
    out.weight[removed] = 0.0
    if bias is not None:
        bias[rows] = 0.0
    if out.bias is not None:
        out.bias[removed] = 0.0
