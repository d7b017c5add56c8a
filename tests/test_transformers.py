"""Channel groups through linear layers, layer norms and attention: ConvNeXt and Vision Transformer blocks on tiny
torchvision instances."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer

import infoprune.pruning.layers as layers_module
from infoprune.pruning.attention import is_linear_pair, is_width_tied
from infoprune.pruning.cost import PruningCost, count_flops, count_parameters
from infoprune.pruning.layers import (
    _traced_concat_sizes,
    dependency_graph,
    find_prunable_layers,
    parameter_channel_axis,
)
from infoprune.pruning.masks import apply_channel_masks
from infoprune.pruning.metrics import RandomScore
from infoprune.pruning.multihead import PairedMultiheadAttention
from infoprune.pruning.selection import select_layerwise
from infoprune.pruning.slim import slim, slim_to_widths
from infoprune.pruning.stats import channel_maps, collect_statistics
from tests.test_any_network import randomized


def tiny_convnext() -> ConvNeXt:
    torch.manual_seed(0)
    return randomized(ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 1)], num_classes=5)).eval()


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return randomized(VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                        mlp_dim=24, num_classes=5)).eval()


def keep_all_but(layers, pruned: dict[str, int]) -> dict[str, torch.Tensor]:
    """Every group whole, except ``pruned[name]`` units (``unit_size`` channels: a position of every grouped block,
    a head) of the named ones, chosen at random."""
    g = torch.Generator().manual_seed(1)
    keep = {}
    for layer in layers:
        units = layer.num_channels // layer.unit_size
        kept = torch.randperm(units, generator=g)[: units - pruned.get(layer.name, 0)].sort().values
        keep[layer.name] = layer.unit_channels(kept)
    return keep


def assert_masked_equals_slimmed_exactly(net: nn.Module, pruned: dict[str, int], x: torch.Tensor) -> None:
    """``net`` with ``pruned`` units masked (``keep_all_but``) gives, within 1e-5 of the output scale, the outputs of
    ``net`` slimmed to the same channels (which ``net`` then is)."""
    keep = keep_all_but(find_prunable_layers(net, x[:1]), pruned)
    masked = copy.deepcopy(net)
    apply_channel_masks(find_prunable_layers(masked, x[:1]), keep)
    with torch.no_grad():
        expected = masked(x)
        slim(net, find_prunable_layers(net, x[:1]), keep, x[:1])
        got = net(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_convnext_groups_tie_convolutions_linear_layers_norms_and_layer_scales():
    net, x = tiny_convnext(), torch.randn(3, 3, 32, 32)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    stage = layers["features.0.0"]  # stem conv, each block's depthwise conv and second linear layer
    assert [m.name for m in stage.members] == ["features.0.0", "features.1.0.block.0", "features.1.0.block.5",
                                               "features.1.1.block.0", "features.1.1.block.5"]
    assert [m.channel_axis for m in stage.members] == [1, 1, -1, 1, -1]
    assert len(stage.norms) == 4 and len(stage.parameters) == 2  # stem, 2 blocks, downsample; 2 layer scales
    hidden = layers["features.1.0.block.3"]  # an MLP's hidden width: Linear -> GELU -> Linear
    assert hidden.taps["act"] is net.features[1][0].block[4] and hidden.num_channels == 32
    assert sorted(layers) == ["features.0.0", "features.1.0.block.3", "features.1.1.block.3", "features.2.1",
                              "features.3.0.block.3"]


def test_convnext_masked_equals_slimmed_with_exact_widths():
    net, x = tiny_convnext(), torch.randn(3, 3, 32, 32)
    assert_masked_equals_slimmed_exactly(net, {"features.0.0": 3, "features.1.0.block.3": 10, "features.2.1": 5}, x)
    assert net.features[0][0].out_channels == 5 and net.features[1][0].layer_scale.shape == (5, 1, 1)
    assert net.features[1][0].block[2].normalized_shape == (5,) and net.features[1][0].block[3].out_features == 22
    assert net.features[2][1].in_channels == 5 and net.features[2][1].out_channels == 11
    assert net.classifier[2].in_features == 11


def test_vit_groups_are_the_embedding_width_each_mlp_hidden_width_and_each_blocks_heads():
    net, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    dense = copy.deepcopy(net)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    attention = net.encoder.layers[0].self_attention  # nn.MultiheadAttention made a linear pair
    assert isinstance(attention, PairedMultiheadAttention) and is_linear_pair(attention)
    with torch.no_grad():
        assert torch.equal(net(x), dense(x))
    assert net.state_dict().keys() == dense.state_dict().keys()  # nn.MultiheadAttention's names
    assert sorted(layers) == ["conv_proj", "encoder.layers.encoder_layer_0.mlp.0",
                              "encoder.layers.encoder_layer_0.self_attention.qkv", "encoder.layers.encoder_layer_1.mlp.0",
                              "encoder.layers.encoder_layer_1.self_attention.qkv"]
    embed, heads = layers["conv_proj"], layers["encoder.layers.encoder_layer_0.self_attention.qkv"]
    assert embed.channel_groups == 1 and not embed.attentions  # the heads have a width of their own
    assert attention.proj in {m.module for m in embed.members} and attention.qkv in {c.module for c in embed.consumers}
    assert len(embed.norms) == 5  # two per block and the encoder's last
    assert {tuple(p.shape) for p, _ in embed.parameters} == {(1, 1, 16), (1, 17, 16)}  # class token, positions
    assert (heads.heads_of, heads.num_channels, heads.unit_size) == (attention, 48, 24)


def test_vit_mlp_hidden_widths_masked_equal_slimmed():
    net, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    hidden = {"encoder.layers.encoder_layer_0.mlp.0": 9, "encoder.layers.encoder_layer_1.mlp.0": 1}
    assert_masked_equals_slimmed_exactly(net, hidden, x)
    assert [block.mlp[0].out_features for block in net.encoder.layers] == [15, 23]


def test_vit_embedding_width_and_heads_slim_every_tied_part_and_reload_from_their_structure():
    net, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    layers = find_prunable_layers(net, x[:1])
    keep = select_layerwise({layer.name: RandomScore(2)(layer) for layer in layers}, layers, 0.5, mode="channels")
    slim(net, layers, keep, x[:1])
    attention = net.encoder.layers[0].self_attention
    assert (net.hidden_dim, net.class_token.shape[-1], net.encoder.pos_embedding.shape[-1]) == (8, 8, 8)
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (8, 1, 8)
    assert (attention.qkv.weight.shape, attention.proj.weight.shape) == ((24, 8), (8, 8))
    assert net.heads.head.in_features == 8 and net(x).shape == (2, 5)
    rebuilt = tiny_vit()
    slim_to_widths(rebuilt, {layer.name: layer.num_channels for layer in layers}, x[:1])
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_vit_heads_and_embedding_width_masked_equal_slimmed():
    net, x = tiny_vit(), torch.randn(2, 3, 16, 16)
    assert_masked_equals_slimmed_exactly(net, {"conv_proj": 3, "encoder.layers.encoder_layer_1.self_attention.qkv": 1}, x)
    assert [block.self_attention.num_heads for block in net.encoder.layers] == [2, 1]


@pytest.mark.parametrize("build, size", [(tiny_convnext, 32), (tiny_vit, 16)])
def test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size, units=1):
    x = torch.randn(1, 3, size, size)
    dense = build()
    layers = find_prunable_layers(dense, x)
    for layer in layers:
        cost = PruningCost(dense, layers, x)
        unit = layer.unit_channels(torch.arange(min(units, layer.num_channels // layer.unit_size - 1)))
        for channel in unit.tolist():
            cost.remove(layer.name, channel)
        net = build()
        slim(net, find_prunable_layers(net, x), keep_all_but(find_prunable_layers(net, x), {layer.name: 1}) | {
            layer.name: torch.tensor([c for c in range(layer.num_channels) if c not in unit.tolist()])}, x)
        assert (cost.params, cost.flops) == (count_parameters(net), count_flops(net, x)), layer.name


def test_token_statistics_pool_over_tokens_as_over_space():
    tokens = torch.randn(4, 7, 5, dtype=torch.float64)  # N x T x C
    assert torch.equal(channel_maps(tokens, -1).mean(dim=(2, 3)), tokens.mean(dim=1))
    channels_last = torch.randn(4, 3, 3, 5)  # N x H x W x C
    assert torch.equal(channel_maps(channels_last, -1), channels_last.permute(0, 3, 1, 2))
    assert channel_maps(torch.randn(4, 5), -1).shape == (4, 5, 1, 1)


def test_statistics_of_an_mlp_hidden_width_read_the_token_mean_after_its_activation():
    net, x = tiny_vit(), torch.randn(6, 3, 16, 16)
    layers = [layer for layer in find_prunable_layers(net, x[:1]) if layer.name.endswith("layer_1.mlp.0")]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    stats = collect_statistics(net, layers, lambda: [(x, labels)], 3, bins=4, progress=False)
    seen = []
    handle = net.encoder.layers[1].mlp[1].register_forward_hook(lambda m, i, o: seen.append(o.double().mean(1)))
    with torch.no_grad():
        net(x)
    handle.remove()
    s = stats[layers[0].name]
    assert s.tap == "act" and s.num_images == 6
    pooled = seen[0]
    for c in range(pooled.shape[1]):
        lo, hi = pooled[:, c].min(), pooled[:, c].max()
        assert torch.allclose(s.edges[c, [0, -1]], torch.stack([lo, hi]), rtol=1e-6)


def tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return randomized(SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                      window_size=[2, 2], num_classes=5)).eval()


def test_swin_window_attention_and_patch_merging_prune_with_their_stage():
    net, x = tiny_swin(), torch.randn(2, 3, 12, 12)  # 6 x 6 then 3 x 3 tokens: the second stage pads its windows
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    assert sorted(layers) == ["features.0.0", "features.1.0.mlp.0", "features.1.1.mlp.0", "features.2.reduction",
                              "features.3.0.mlp.0"]
    stage = layers["features.0.0"]
    assert stage.channel_groups == 2 and len(stage.attentions) == 2
    merging = next(norm for norm in stage.norms if norm.module is net.features[2].norm)  # over 4 x 8 channels
    assert sorted(merging.idxs[merging.root_idxs == 3].tolist()) == [3, 11, 19, 27]
    keep = keep_all_but(list(layers.values()), {"features.0.0": 1, "features.2.reduction": 3})
    slim(net, list(layers.values()), keep, x[:1])
    attention = net.features[1][0].attn
    assert (attention.qkv.in_features, attention.qkv.out_features, attention.proj.out_features) == (6, 18, 6)
    assert net.features[2].norm.normalized_shape == (24,) and net.features[2].reduction.out_features == 10
    assert net(x).shape == (2, 5)


@pytest.mark.parametrize("build, size", [(tiny_swin, 12)])
def test_swin_costs_are_exact_with_padded_windows(build, size):
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size)


def test_swin_mlp_hidden_widths_masked_equal_slimmed():
    net, x = tiny_swin(), torch.randn(2, 3, 12, 12)
    assert_masked_equals_slimmed_exactly(net, {"features.1.0.mlp.0": 9, "features.3.0.mlp.0": 20}, x)


def tiny_timm_vit(num_classes: int = 5) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    return randomized(TimmViT(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                              num_classes=num_classes)).eval()


def test_timm_attention_heads_prune_whole_beside_the_embedding_width_and_mlps():
    net, x = tiny_timm_vit(), torch.randn(2, 3, 16, 16)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    assert sorted(layers) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1",
                              "patch_embed.proj"]
    embed, heads = layers["patch_embed.proj"], layers["blocks.0.attn.qkv"]
    assert net.blocks[0].attn.proj in {m.module for m in embed.members}  # written by the output projection
    assert net.blocks[0].attn.qkv in {c.module for c in embed.consumers}  # read by the fused projection
    assert heads.heads_of is net.blocks[0].attn and (heads.num_channels, heads.unit_size) == (48, 24)
    assert heads.unit_channels([1]).tolist() == [*range(8, 16), *range(24, 32), *range(40, 48)]  # q, k, v of head 1
    # a removed head's queries, keys and values are zero when masked: masked == slimmed exactly
    assert_masked_equals_slimmed_exactly(net, {"patch_embed.proj": 5, "blocks.0.mlp.fc1": 30,
                                               "blocks.0.attn.qkv": 1}, x)
    attention = net.blocks[0].attn
    assert (attention.qkv.in_features, attention.qkv.out_features, attention.num_heads) == (11, 24, 1)
    assert (attention.proj.in_features, attention.attn_dim, attention.head_dim) == (8, 8, 8)
    assert net.blocks[1].attn.num_heads == 2 and net.blocks[0].mlp.fc1.out_features == 34


def test_a_heads_query_key_and_value_dimensions_share_the_output_l1_of_the_weights_reading_the_head():
    from infoprune.pruning.metrics import output_l1

    net, x = tiny_timm_vit(), torch.randn(2, 3, 16, 16)
    heads = next(layer for layer in find_prunable_layers(net, x[:1]) if layer.name == "blocks.0.attn.qkv")
    columns = net.blocks[0].attn.proj.weight.detach().double().abs().sum(dim=0)  # what reads head dimension d
    assert torch.allclose(output_l1(heads), columns.repeat(3))


def test_a_group_of_heads_keeps_at_least_one_head_and_reloads_from_its_structure():
    net, x = tiny_timm_vit(), torch.randn(2, 3, 16, 16)
    layers = find_prunable_layers(net, x[:1])
    scores = {layer.name: RandomScore(3)(layer) for layer in layers}
    # 60% of 48 channels rounds up to whole heads: both
    assert len(select_layerwise(scores, layers, 0.4, mode="channels")["blocks.0.attn.qkv"]) == 48
    keep = select_layerwise(scores, layers, 0.9, mode="channels")
    assert {name: len(keep[name]) for name in ("blocks.0.attn.qkv", "blocks.1.attn.qkv")} == {
        "blocks.0.attn.qkv": 24, "blocks.1.attn.qkv": 24}
    widths = dict(zip([layer.name for layer in layers], slim(net, layers, keep, x[:1])))
    assert [block.attn.num_heads for block in net.blocks] == [1, 1]
    rebuilt = tiny_timm_vit()
    slim_to_widths(rebuilt, widths, x[:1])
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def tiny_timm_vit_explicit_products() -> nn.Module:
    """``tiny_timm_vit`` computing attention by explicit matrix products, which the FLOP counter counts (it does not
    count the fused kernel's)."""
    net = tiny_timm_vit()
    for block in net.blocks:
        block.attn.fused_attn = False
    return net


@pytest.mark.parametrize("build, size", [(tiny_timm_vit, 16), (tiny_timm_vit_explicit_products, 16)])
def test_timm_vit_costs_are_exact(build, size):
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size)


def tiny_pvt() -> nn.Module:
    from timm.models.pvt_v2 import PyramidVisionTransformerV2

    torch.manual_seed(0)
    return randomized(PyramidVisionTransformerV2(depths=(1, 1), embed_dims=(8, 16), num_heads=(2, 2),
                                                 sr_ratios=(2, 1), mlp_ratios=(2, 2), num_classes=5)).eval()


def test_an_attention_that_splits_its_input_width_into_heads_is_found_width_tied_and_slims_inside():
    net, x = tiny_pvt(), torch.randn(2, 3, 32, 32)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    attention = net.stages[0].blocks[0].attn  # q, kv, spatial-reduction conv and norm, all over the stage width
    assert is_width_tied(attention) and not is_linear_pair(attention)
    stage = next(layer for layer in layers.values() if attention in layer.attentions)
    assert stage.channel_groups == 2 and stage.num_channels == 8
    slim(net, list(layers.values()), keep_all_but(list(layers.values()), {stage.name: 1}), x[:1])
    assert (attention.q.in_features, attention.q.out_features, attention.kv.out_features) == (6, 6, 12)
    assert (attention.sr.in_channels, attention.sr.out_channels, attention.norm.normalized_shape) == (6, 6, (6,))
    assert (attention.proj.in_features, attention.proj.out_features, attention.dim, attention.head_dim) == (6, 6, 6, 3)
    assert net(x).shape == (2, 5)


def test_a_timm_vit_attention_is_found_a_linear_pair():
    net, x = tiny_timm_vit(), torch.randn(1, 3, 16, 16)
    find_prunable_layers(net, x)
    assert is_linear_pair(net.blocks[0].attn) and not is_width_tied(net.blocks[0].attn)


@pytest.mark.parametrize("build, size", [(tiny_pvt, 32)])
def test_width_tied_attention_costs_are_exact(build, size):
    for units in (1, 3):  # 3 of the first stage's 4 blocks of one channel per head: beyond the widths measured
        test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size, units)


def tiny_timm_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return randomized(SwinTransformer(img_size=16, patch_size=2, embed_dim=8, depths=(1, 1), num_heads=(2, 2),
                                      window_size=2, num_classes=5)).eval()


def test_timm_patch_merging_reads_each_channel_at_four_interleaved_positions():
    net, x = tiny_timm_swin(), torch.randn(2, 3, 16, 16)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    stage = layers["patch_embed.proj"]  # 8 channels; N x H x W x 8 -> N x H/2 x W/2 x 32
    merging = next(norm for norm in stage.norms if norm.module is net.layers[1].downsample.norm)
    assert sorted(merging.idxs[merging.root_idxs == 3].tolist()) == [3, 11, 19, 27]
    assert_masked_equals_slimmed_exactly(net, {"patch_embed.proj": 3}, x)
    assert net.layers[1].downsample.norm.normalized_shape == (20,)
    assert net.layers[1].downsample.reduction.in_features == 20


@pytest.mark.parametrize("build, size", [(tiny_timm_swin, 16)])
def test_timm_swin_costs_are_exact(build, size):
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size)


class GatedMlpNet(nn.Module):
    """Patch embedding and positional embeddings (a 3-d parameter: Torch-Pruning then maps no split after it), then
    tokens through timm's gated MLP (``fc1`` -> halves ``a``, ``b`` -> ``silu(a) * b`` -> ``fc2``) with a residual,
    pooled into a classifier."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import GluMlp

        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.positions = nn.Parameter(torch.zeros(1, 16, 8))
        self.mlp = GluMlp(8, 2 * 21, act_layer=nn.SiLU, gate_last=False)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.positions
        return self.head((tokens + self.mlp(tokens)).mean(1))


def tiny_gated_mlp_net() -> nn.Module:
    torch.manual_seed(0)
    return randomized(GatedMlpNet()).eval()


def test_a_gated_mlp_prunes_its_hidden_units_as_pairs_of_the_two_halves_it_multiplies():
    net, x = tiny_gated_mlp_net(), torch.randn(2, 3, 16, 16)
    layers = {layer.name: layer for layer in find_prunable_layers(net, x[:1])}
    hidden = layers["mlp.fc1"]  # 2 x 21 outputs: unit u is outputs u and 21 + u
    assert hidden.channel_groups == 2 and hidden.num_channels == 42
    assert_masked_equals_slimmed_exactly(net, {"mlp.fc1": 5}, x)
    assert (net.mlp.fc1.out_features, net.mlp.fc2.in_features) == (32, 16)


@pytest.mark.parametrize("build, size", [(tiny_gated_mlp_net, 16)])
def test_gated_mlp_costs_are_exact(build, size):
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(build, size)


def tiny_levit() -> nn.Module:
    from timm.models.levit import Levit

    torch.manual_seed(0)
    return randomized(Levit(img_size=32, num_classes=5, embed_dim=(16, 24), key_dim=4, depth=(1, 1),
                            num_heads=(2, 3))).eval()


def test_channels_mapped_beyond_a_consumers_inputs_are_left_out_and_the_rest_prunes_exactly():
    """LeViT splits each head's fused output into a query, a key and a wider value: the graph maps the fused
    layer's channels past the output projection's inputs, so those channels are not a group."""
    net, x = tiny_levit(), torch.randn(1, 3, 32, 32)
    names = {layer.name for layer in find_prunable_layers(net, x)}
    assert not any(".qkv." in name or ".kv." in name for name in names)
    assert "stages.0.blocks.0.mlp.ln1.linear" in names
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(tiny_levit, 32)


class ImagePositionNet(nn.Module):
    """Convolutions with a positional embedding of ``1 x C x H x W`` added to the first one's output (Visformer)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.positions = nn.Parameter(torch.zeros(1, 6, 4, 4))
        self.conv = nn.Conv2d(6, 7, 3, padding=1)
        self.head = nn.Linear(7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.stem(x) + self.positions)).mean((2, 3)))


def tiny_image_position_net() -> nn.Module:
    torch.manual_seed(0)
    return randomized(ImagePositionNet()).eval()


def test_a_loose_parameter_is_pruned_on_its_one_axis_of_its_own_length():
    assert [parameter_channel_axis(torch.zeros(shape)) for shape in
            [(1, 6, 4, 4), (1, 4, 4, 6), (1, 197, 192), (1, 1, 8), (1, 8, 1, 1), (5,), (1, 5, 5, 5), (1,)]] == [
        1, 3, 2, 2, 1, 0, 3, None]
    net, x = tiny_image_position_net(), torch.randn(2, 3, 8, 8)
    assert_masked_equals_slimmed_exactly(net, {"stem": 2}, x)
    assert net.positions.shape == (1, 4, 4, 4) and net.conv.in_channels == 4


def tiny_dpn() -> nn.Module:
    from timm.models.dpn import DPN

    torch.manual_seed(0)
    return randomized(DPN(k_sec=(1, 2, 1, 1), inc_sec=(4, 4, 4, 4), k_r=8, groups=2, num_init_features=8,
                          small=True, num_classes=5)).eval()


def test_dual_path_groups_cost_exactly_and_are_torch_prunings_groups_found_without_repeated_work(monkeypatch):
    """DPN slices each block's output into a residual part and a dense part concatenated onto the earlier ones:
    every group is what Torch-Pruning's own search finds (which follows a dependency again unless it carries the
    very same index list), and removing any group's unit costs what slimming it saves."""
    x = torch.randn(1, 3, 32, 32)

    def groups(net):
        return {layer.name: ([m.name for m in layer.members],
                             [(c.idxs.tolist(), c.root_idxs.tolist()) for c in layer.consumers])
                for layer in find_prunable_layers(net, x)}

    ours = groups(tiny_dpn())
    monkeypatch.setattr(layers_module, "_covers_pruning_op", tp.dependency.group.Group.has_pruning_op)
    assert groups(tiny_dpn()) == ours
    monkeypatch.undo()
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(tiny_dpn, 32)


def test_a_concatenation_is_sized_by_the_trace():
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1))

    graph = dependency_graph(Concat(), torch.randn(1, 3, 4, 4))
    (node,) = [n for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.CONCAT]
    assert _traced_concat_sizes(node) == [3, 5]


TINY_NETS = {
    "vit": ["model=vit_b_16_tv", "~model.net", "+model.net={_target_:torchvision.models.vision_transformer."
            "VisionTransformer,image_size:8,patch_size:2,num_layers:1,num_heads:2,hidden_dim:16,mlp_dim:24}"],
    "convnext": ["model=timm", "model.net.model_name=test_convnext", "datamodule.resize=32"],
}


@pytest.mark.parametrize("net", sorted(TINY_NETS))
def test_prune_fine_tune_and_reload_a_transformer_through_the_command_line_configs(tmp_path, net):
    from infoprune.pipeline import prune
    from infoprune.training import train
    from tests.conftest import FAST, compose_config
    from tests.test_prune import QUICK

    overrides = TINY_NETS[net] + ["pruning/scope=global", "pruning.target=0.5", "pruning.stats.num_images=256"]
    results = prune(compose_config("prune", QUICK + overrides + ["trainer.max_epochs=1"], tmp_path / "prune"))
    assert results["params_remaining"] < 0.9
    tested = train(compose_config("train", FAST + ["trainer.accelerator=cpu"] + TINY_NETS[net]
                                  + [f"init_from={tmp_path / 'prune' / 'final.ckpt'}", "train=false"], tmp_path / "test"))
    assert tested["test/acc"] == pytest.approx(results["acc_finetuned"], abs=1e-6)


def test_windows_or_regions_of_an_image_pool_into_its_one_value_per_channel():
    from infoprune.pruning.stats import per_image_maps

    windows = torch.randn(2 * 3, 5, 4, 4, dtype=torch.float64)  # 3 windows of each of 2 images, consecutive
    pooled = per_image_maps(windows, 2).mean(dim=(2, 3))
    assert torch.allclose(pooled, windows.view(2, 3, 5, 4, 4).mean(dim=(1, 3, 4)))
    with pytest.raises(ValueError, match="7 entries for a batch of 2 images"):
        per_image_maps(torch.randn(7, 5, 4, 4), 2)
    shared = torch.randn(1, 5, 4, 4)  # computed once for the batch, from no image
    assert torch.equal(per_image_maps(shared, 3), shared.expand(3, -1, -1, -1))


def test_flops_are_counted_when_a_parameter_reaches_a_layer_unchanged():
    """CaiT feeds its class token, expanded to the batch (a no-op for one image), straight into a block."""

    class TokenNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 1, 4))
            self.block = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.token.expand(x.shape[0], -1, -1)) + x.mean()

    net = TokenNet()
    assert count_flops(net, torch.randn(1, 3, 4, 4)) == 2 * 4 * 3
    assert all(p.requires_grad for p in net.parameters())


def tiny_std_conv_net() -> nn.Module:
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    return randomized(nn.Sequential(ScaledStdConv2d(3, 6, 3), nn.ReLU(), ScaledStdConv2d(6, 5, 3), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))).eval()


def test_a_layers_own_per_row_parameters_go_with_its_rows():
    """timm's ``ScaledStdConv2d`` keeps a gain per output channel beside its weight."""
    net, x = tiny_std_conv_net(), torch.randn(2, 3, 8, 8)
    layers = find_prunable_layers(net, x[:1])
    slim(net, layers, keep_all_but(layers, {"0": 2}), x[:1])
    assert net[0].weight.shape[0] == net[0].gain.shape[0] == 4 and net[2].in_channels == 4
    assert net(x).shape == (2, 4)
    test_the_cost_of_removing_one_unit_of_any_group_is_what_slimming_it_saves(tiny_std_conv_net, 8)
