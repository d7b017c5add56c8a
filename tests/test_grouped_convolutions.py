"""Grouped (not depthwise) convolutions, as in ResNeXt and RegNet: the channels they produce or read are pruned
block-symmetrically, masked equals slimmed, the cost accounting is exact, and slimmed checkpoints reload."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck

from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.allocation import SensitivityTable, allocate_widths
from infoprune.pruning.cost import PruningCost, count_flops, count_parameters
from infoprune.pruning.layers import PrunableLayer, find_prunable_layers
from infoprune.pruning.masks import removed_channels
from infoprune.pruning.metrics import RandomScore, output_l1
from infoprune.pruning.selection import keep_top_channels, select_global, select_layerwise
from infoprune.pruning.slim import slim
from tests.conftest import slim_classifier
from tests.test_any_network import assert_masked_equals_slimmed
from tests.test_pruning import randomized

GROUPS = 4


def tiny_resnext(num_classes: int = 10) -> nn.Module:
    """Two of torchvision's ResNeXt bottlenecks (1x1, 3x3 of 4 groups, 1x1, residual addition) on a 16-channel
    stem: the first with a projection shortcut, the second adding onto its output."""
    projection = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         Bottleneck(16, 8, downsample=projection, groups=GROUPS, base_width=32),
                         Bottleneck(32, 8, groups=GROUPS, base_width=32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


@pytest.fixture
def resnext():
    torch.manual_seed(0)
    net = randomized(tiny_resnext())
    x = torch.randn(4, 3, 32, 32)
    return net, x, find_prunable_layers(net, x[:1])


def is_block_symmetric(layer: PrunableLayer, keep: torch.Tensor) -> bool:
    """The same positions are kept in each of the layer's ``channel_groups`` blocks."""
    blocks = keep.view(layer.channel_groups, -1) - torch.arange(layer.channel_groups)[:, None] * (
        layer.num_channels // layer.channel_groups)
    return bool((blocks == blocks[0]).all())


def test_every_convolution_is_prunable_and_grouped_channels_are_marked(resnext):
    net, _, layers = resnext
    assert {m.module for layer in layers for m in layer.members} == {m for m in net.modules()
                                                                    if isinstance(m, nn.Conv2d)}
    groups = {layer.name: (layer.channel_groups, len(layer.members)) for layer in layers}
    # conv1 feeds the grouped conv2; conv2 is grouped; the stem and the residual width (the first block's conv3
    # and projection, the second block's conv3) are not
    assert groups == {"0": (1, 1), "3.conv1": (GROUPS, 1), "3.conv2": (GROUPS, 1), "3.conv3": (1, 3),
                      "4.conv1": (GROUPS, 1), "4.conv2": (GROUPS, 1)}


def test_tied_grouped_convolutions_take_the_least_common_multiple_of_their_groups():
    net = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 12, 3, groups=2), nn.ReLU(),
                        nn.Conv2d(12, 12, 1, groups=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))
    layers = {layer.name: layer for layer in find_prunable_layers(net, torch.zeros(1, 3, 16, 16))}
    assert {name: layer.channel_groups for name, layer in layers.items()} == {"0": 2, "2": 6, "4": 3}


@pytest.mark.parametrize("selection", ["layerwise", "global"])
def test_masked_equals_slimmed_and_the_cost_accounting_is_exact(resnext, selection):
    net, x, layers = resnext
    scores = {layer.name: RandomScore(1)(layer) for layer in layers}
    cost = PruningCost(net, layers, x[:1])
    if selection == "layerwise":
        keep = select_layerwise(scores, layers, 0.5, mode="channels")
        for layer in layers:
            for channel in removed_channels(layer, keep[layer.name]).tolist():
                cost.remove(layer.name, channel)
    else:
        keep = select_global(scores, layers, cost, 0.5, resource="flops")
    assert all(is_block_symmetric(layer, keep[layer.name]) for layer in layers)
    assert any(len(keep[layer.name]) < layer.num_channels for layer in layers if layer.channel_groups > 1)
    assert_masked_equals_slimmed(net, layers, keep, x)
    assert all(m.groups == GROUPS for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               and m.in_channels != 3)
    assert (cost.params, cost.flops) == (count_parameters(net), count_flops(net, x[:1]))


@pytest.mark.parametrize("selection", ["layerwise", "global"])
def test_a_grouped_convolution_never_becomes_a_depthwise_one(selection):
    """Kept down to one channel a block, the 3x3 convolution (16 -> 16, 4 groups) would turn depthwise, which ties
    its input channels to its outputs: two positions a block stay, and the network keeps its channel groups."""
    net = randomized(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)))
    x = torch.randn(2, 3, 16, 16)
    layers = find_prunable_layers(net, x[:1])
    scores = {layer.name: RandomScore(0)(layer) for layer in layers}
    if selection == "layerwise":
        keep = select_layerwise(scores, layers, 0.95, mode="channels", exclude=["6"])
    else:  # the parameters left with two positions a block in both grouped layers: the lowest reachable target
        floor = PruningCost(net, layers, x[:1])
        for layer in layers[:2]:
            for channel in removed_channels(layer, layer.unit_channels(torch.arange(2))).tolist():
                floor.remove(layer.name, channel)
        keep = select_global(scores, layers, PruningCost(net, layers, x[:1]), floor.remaining("params"), exclude=["6"])
        with pytest.raises(ValueError, match="out of reach"):
            select_global(scores, layers, PruningCost(net, layers, x[:1]), 0.99 * floor.remaining("params"),
                          exclude=["6"])
    assert {name: len(kept) for name, kept in keep.items()} == {"0": 8, "3": 8, "6": 16}
    slim(net, layers, keep, x[:1])
    assert [(layer.name, layer.channel_groups) for layer in find_prunable_layers(net, x[:1])] == [
        ("0", 4), ("3", 4), ("6", 1)]


def test_keep_top_channels_keeps_the_best_positions_of_every_block():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10))
    layer = find_prunable_layers(net, torch.zeros(1, 3, 16, 16))[0]
    scores = torch.tensor([0.0, 9.0, 1.0, 5.0, 8.0, 0.0, 1.0, 0.0])  # position means 4, 4.5, 1, 2.5
    torch.testing.assert_close(keep_top_channels(layer, scores, 4), torch.tensor([0, 1, 4, 5]))
    with pytest.raises(ValueError, match="multiples of 2"):
        keep_top_channels(layer, scores, 3)


def test_output_l1_of_a_grouped_consumer_reads_the_filters_of_the_channels_group(resnext):
    net, _, layers = resnext
    layer = next(layer for layer in layers if layer.name == "4.conv1")
    weight = net[4].conv2.weight.detach().double().abs()  # (out, in / g, 3, 3)
    per_group_out, per_group_in = weight.shape[0] // GROUPS, weight.shape[1]
    expected = torch.stack([weight[(c // per_group_in) * per_group_out:(c // per_group_in + 1) * per_group_out,
                                   c % per_group_in].sum() for c in range(layer.num_channels)])
    torch.testing.assert_close(output_l1(layer), expected)


def test_sensitivity_widths_of_grouped_channels_are_whole_positions(resnext):
    net, x, layers = resnext
    free = [(0.25, 1.0), (0.5, 1.0), (0.75, 1.0)]  # the grouped layers lose nothing: they go first
    table = SensitivityTable({layer.name: free if layer.channel_groups > 1 else [(0.25, 0.9), (0.5, 0.8), (0.75, 0.5)]
                              for layer in layers}, 1.0, "random")
    scores = {layer.name: RandomScore(1)(layer) for layer in layers}
    cost = PruningCost(net, layers, x[:1])
    widths = allocate_widths(table, layers, scores, cost, 0.3, resource="flops")
    assert cost.remaining("flops") <= 0.7
    assert all(widths[layer.name] % layer.channel_groups == 0 for layer in layers)
    assert any(widths[layer.name] < layer.num_channels for layer in layers if layer.channel_groups > 1)


def test_slimmed_checkpoint_of_a_resnext_reloads_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    module = ImageClassifier(net={"_target_": "tests.test_grouped_convolutions.tiny_resnext", "num_classes": 10},
                             optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                             input_shape=(3, 16, 16))
    randomized(module.net)
    layers = find_prunable_layers(module.net, module.example_input_array)
    slim_classifier(module, select_layerwise({layer.name: RandomScore(2)(layer) for layer in layers}, layers, 0.6))
    assert module.hparams.structure["3.conv1"] < 16
    reloaded = ImageClassifier.load_from_checkpoint(save_weights_checkpoint(module, tmp_path / "slim.ckpt")).eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), module.eval()(x), rtol=0, atol=0)
