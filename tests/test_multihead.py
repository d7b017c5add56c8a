"""``nn.MultiheadAttention`` as a linear pair: the same attention from the same parameters, heads that prune whole."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.multihead import PairedMultiheadAttention, pair_multihead_attention
from infoprune.pruning.selection import select_layerwise
from infoprune.pruning.slim import slim, slim_to_widths
from tests.test_transformers import assert_masked_equals_slimmed_exactly


def attention_pair(batch_first: bool) -> tuple[nn.MultiheadAttention, PairedMultiheadAttention]:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    return attention, PairedMultiheadAttention(copy.deepcopy(attention)).eval()


def boolean_mask() -> torch.Tensor:
    """A fixed 5 x 5 attention mask (True: masked) that leaves every query key 0, which padding never masks."""
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) > 0.6
    mask[:, 0] = False
    return mask


PADDING = torch.tensor([[False] * 4 + [True], [False] * 5])  # the last key of the first sequence
CALLS = {"no weights": dict(need_weights=False), "weights": dict(),
         "weights per head": dict(average_attn_weights=False),
         "boolean mask": dict(attn_mask=boolean_mask()),
         "padding": dict(key_padding_mask=PADDING, need_weights=False),
         "mask per head": dict(attn_mask=torch.randn(8, 5, 5, generator=torch.Generator().manual_seed(1))),
         "both masks": dict(attn_mask=boolean_mask(), key_padding_mask=PADDING)}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_paired_attention_gives_what_nn_multihead_attention_gives(batch_first, call):
    attention, paired = attention_pair(batch_first)
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    with torch.no_grad():
        (expected, expected_weights), (got, got_weights) = attention(x, x, x, **CALLS[call]), paired(x, x, x, **CALLS[call])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got_weights is None) == (expected_weights is None)
    if expected_weights is not None:
        torch.testing.assert_close(got_weights, expected_weights, rtol=1e-5, atol=1e-6)


def test_paired_attention_attends_across_inputs_and_keeps_the_state_dict_names():
    attention, paired = attention_pair(True)
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(paired(query, memory, memory)[0], attention(query, memory, memory)[0])
    assert paired.state_dict().keys() == attention.state_dict().keys()
    fresh = PairedMultiheadAttention(nn.MultiheadAttention(16, 4, batch_first=True))
    fresh.load_state_dict(attention.state_dict(), strict=True)
    assert torch.equal(fresh.qkv.weight, attention.in_proj_weight) and torch.equal(fresh.proj.bias, attention.out_proj.bias)


def test_an_encoder_layer_prunes_its_heads_and_its_width_and_still_runs():
    """``nn.TransformerEncoderLayer`` (a fused fast path in eval) with its attention paired, heads removed whole."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, batch_first=True),
                        nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 6)
    dense = copy.deepcopy(net)
    pair_multihead_attention(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), dense(x))
    heads = "1.self_attn.qkv"
    assert {layer.name: layer.unit_size for layer in find_prunable_layers(net, x[:1])}[heads] == 12
    assert_masked_equals_slimmed_exactly(net, {"0": 5, heads: 2}, x)
    attention = net[1].self_attn
    assert (attention.num_heads, attention.embed_dim, attention.qkv.weight.shape) == (2, 11, (24, 11))
    rebuilt = copy.deepcopy(dense)
    slim_to_widths(rebuilt, {"0": 11, heads: 24}, x[:1])
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_an_attention_across_two_inputs_is_not_paired():
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)

        def forward(self, x):
            return self.attention(x, x[..., :4], x[..., :4])[0]

    net = Decoder()
    pair_multihead_attention(net)
    assert type(net.attention) is nn.MultiheadAttention


def test_a_single_head_stays_a_group_that_keeps_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.TransformerEncoderLayer(16, 1, dim_feedforward=8, batch_first=True),
                        nn.Linear(16, 3)).eval()
    x = torch.randn(2, 5, 6)
    layers = find_prunable_layers(net, x[:1])
    heads = next(layer for layer in layers if layer.heads_of is not None)
    assert heads.num_channels == heads.unit_size == 48
    scores = {layer.name: torch.rand(layer.num_channels) for layer in layers}
    keep = select_layerwise(scores, layers, 0.99, mode="channels")  # as few channels as every group allows
    assert len(keep[heads.name]) == 48
    with pytest.raises(ValueError, match="without channels"):
        slim(copy.deepcopy(net), layers, {**keep, heads.name: keep[heads.name][:0]}, x[:1])
    slim(net, layers, keep, x[:1])
    assert net[1].self_attn.num_heads == 1
    assert net(x).shape == (2, 5, 3)
