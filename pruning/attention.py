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

import torch
import torch.nn as nn
import torch_pruning as tp


def attention_projections(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None, nn.Linear]:
    """The fused query-key-value weight (``3E x E``) and bias and the output projection of an attention module."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_weight, module.in_proj_bias, module.out_proj
    return module.qkv.weight, module.qkv.bias, module.proj


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
            and qkv.out_features == 3 * proj.in_features and type(module) not in tied_attention_pruners())


def _inner_rows(width: int, idxs) -> torch.Tensor:
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    return torch.cat([idxs + k * width for k in range(3)])


class TiedAttentionPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's pruning of a Swin window attention module (``qkv`` and ``proj`` linear layers), whose input
    and output are one width (the residual width of its block): removing output channels ``c`` removes ``proj``'s
    rows ``c``, the same inner dimensions (``qkv``'s rows ``c``, ``E + c``, ``2E + c`` and ``proj``'s column ``c``)
    and the same input channels (``qkv``'s column ``c``). Input channels alone are never removed: the tracer
    reaches the input through the shifted window's slicing, whose channel mapping it gets wrong."""

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        return layer

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        tp.prune_linear_out_channels(layer.qkv, _inner_rows(layer.proj.out_features, idxs).tolist())
        tp.prune_linear_in_channels(layer.qkv, idxs)
        tp.prune_linear_in_channels(layer.proj, idxs)
        tp.prune_linear_out_channels(layer.proj, idxs)
        return layer

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.qkv.in_features

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.proj.out_features


def tied_attention_pruners() -> dict[type, TiedAttentionPruner]:
    """The attention classes ``TiedAttentionPruner`` handles: torchvision's Swin and Swin V2 window attention."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    return {ShiftedWindowAttention: TiedAttentionPruner(), ShiftedWindowAttentionV2: TiedAttentionPruner()}


def is_tied_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module) in tied_attention_pruners()


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
    biases, and ``8 E^2 T`` projection FLOPs; a Swin window attention's products of queries with keys and of
    attention with values are explicit matrix products, ``4 T A E`` FLOPs over windows of ``A`` positions, while
    ``nn.MultiheadAttention`` runs them in a fused kernel the counter does not count."""
    weight, bias, out = attention_projections(module)
    biases = 3 * width * (bias is not None) + width * (out.bias is not None)
    window = getattr(module, "window_size", None)
    products = 4 * tokens * window[0] * window[1] * width if window is not None else 0
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
