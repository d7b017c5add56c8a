"""``nn.MultiheadAttention`` as a linear pair, so that its heads can be removed whole.

``nn.MultiheadAttention`` ties the width of its heads to its embedding width ``E``: its fused projection is
``3E x E``, its output projection ``E x E``, and its forward pass (``F.multi_head_attention_forward``) derives the
head dimension from ``E``. A head removed from it would change ``E`` too. ``PairedMultiheadAttention`` computes the
same attention from the same parameters, held as two linear layers, ``qkv`` (``3 H d_h x E``, the fused projection)
and ``proj`` (``E x H d_h``, the output projection), with ``H`` heads of a fixed dimension ``d_h``: its input and
output channels are ``qkv``'s columns and ``proj``'s rows, and its heads ``qkv``'s rows and ``proj``'s columns
(``pruning.attention``: a linear pair whose heads prune whole). Its state dict keeps ``nn.MultiheadAttention``'s
names (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``), so checkpoints load either way.

``pair_multihead_attention`` swaps every ``nn.MultiheadAttention`` of a network whose query, key and value share
one width and that has no learned key/value biases or zero attention (``bias_k``, ``add_zero_attn``) for one, in
place, keeping its parameter objects (an optimizer built before still updates them)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: beginnings of ``PairedMultiheadAttention``'s state-dict keys -> ``nn.MultiheadAttention``'s
_NAMES = {"qkv.weight": "in_proj_weight", "qkv.bias": "in_proj_bias", "proj.": "out_proj."}


class PairedMultiheadAttention(nn.Module):
    """Multi-head attention of ``nn.MultiheadAttention`` (same call, same results, same state-dict names) over
    ``num_heads`` heads of ``head_dim`` dimensions each, whatever the embedding width."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.batch_first, self.dropout = attention.batch_first, attention.dropout
        #: keeps ``nn.TransformerEncoderLayer`` off its fused path, which assumes ``nn.MultiheadAttention``'s shapes
        self._qkv_same_embed_dim = False
        self.qkv = nn.Linear(attention.embed_dim, 3 * attention.embed_dim, bias=attention.in_proj_bias is not None,
                             device="meta")
        self.qkv.weight, self.qkv.bias = attention.in_proj_weight, attention.in_proj_bias
        self.proj = attention.out_proj
        self.train(attention.training)
        self.register_state_dict_post_hook(_multihead_names)
        self.register_load_state_dict_pre_hook(_paired_names)

    @property
    def embed_dim(self) -> int:
        """The width of the input and output tokens."""
        return self.proj.out_features

    @property
    def in_proj_weight(self) -> nn.Parameter:
        return self.qkv.weight

    @property
    def in_proj_bias(self) -> nn.Parameter | None:
        return self.qkv.bias

    @property
    def out_proj(self) -> nn.Linear:
        return self.proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``softmax(q_h k_h^T / sqrt(d_h) + mask) v_h`` for every head ``h``, concatenated and projected by
        ``proj``; with ``need_weights``, also the attention weights (averaged over heads with
        ``average_attn_weights``), as ``nn.MultiheadAttention`` returns them."""
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if key is query and value is query:
            q, k, v = self.qkv(query).chunk(3, dim=-1)
        else:
            weights, biases = self.qkv.weight.chunk(3), (self.qkv.bias.chunk(3) if self.qkv.bias is not None
                                                         else (None,) * 3)
            q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
        (n, target), source = query.shape[:2], key.shape[1]
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        mask = _additive_mask(attn_mask, key_padding_mask, n, self.num_heads, target, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            attention = (scores if mask is None else scores + mask).softmax(dim=-1)
            out = F.dropout(attention, dropout) @ v
        else:
            attention = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=is_causal and mask is None)
        out = self.proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if attention is not None and average_attn_weights:
            attention = attention.mean(dim=1)
        return out, attention


def _additive_mask(attn_mask, key_padding_mask, n: int, heads: int, target: int, source: int, dtype):
    """``nn.MultiheadAttention``'s masks as one additive mask broadcast to ``N x H x L x S`` (``-inf`` where a
    boolean mask is True), or None."""
    masks = []
    if attn_mask is not None:
        mask = attn_mask.view(n, heads, target, source) if attn_mask.dim() == 3 else attn_mask
        masks.append(mask)
    if key_padding_mask is not None:
        masks.append(key_padding_mask.view(n, 1, 1, source))
    total = None
    for mask in masks:
        additive = (torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
                    if mask.dtype == torch.bool else mask.to(dtype))
        total = additive if total is None else total + additive
    return total


def _renamed(state_dict, prefix: str, names: dict[str, str]) -> None:
    """Rename, in place, the keys of ``state_dict`` under ``prefix`` that begin with a key of ``names``."""
    for key in list(state_dict):
        old = next((name for name in names if key.startswith(prefix + name)), None)
        if old is not None:
            state_dict[prefix + names[old] + key[len(prefix + old):]] = state_dict.pop(key)


def _multihead_names(module, state_dict, prefix, local_metadata) -> None:
    _renamed(state_dict, prefix, _NAMES)


def _paired_names(module, state_dict, prefix, *args) -> None:
    _renamed(state_dict, prefix, {theirs: ours for ours, theirs in _NAMES.items()})


def can_pair(attention: nn.Module) -> bool:
    """Whether ``attention`` is an ``nn.MultiheadAttention`` that ``PairedMultiheadAttention`` computes: one width
    for query, key and value, no learned key/value biases, no zero attention."""
    return (type(attention) is nn.MultiheadAttention and attention._qkv_same_embed_dim and attention.bias_k is None
            and not attention.add_zero_attn)


def pair_multihead_attention(model: nn.Module) -> None:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` that ``can_pair`` by a
    ``PairedMultiheadAttention`` of the same parameters."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if can_pair(child):
                setattr(parent, name, PairedMultiheadAttention(child))
