"""Structures beyond plain chains, on tiny instances: squeeze-and-excitation (MobileNetV3, EfficientNet, RegNetY),
concatenation (DenseNet), a segmentation head whose last convolution writes the class maps, a head shared by two
feature levels (detection), and modules registered in another order than they run. For each: the channel groups
found, the tap points, exact widths after slimming, slimmed == masked on the same input, and the exact cost."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from benchmarks.prunability import check_model
from infoprune.models import CifarResNet
from infoprune.pruning.cost import PruningCost, count_flops, count_parameters
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import RandomScore
from infoprune.pruning.selection import select_layerwise
from infoprune.pruning.slim import slim
from infoprune.pruning.stats import collect_statistics
from tests.test_any_network import assert_masked_equals_slimmed
from tests.test_pruning import randomized


class InvertedResidualSE(nn.Module):
    """MobileNetV3's block: 1x1 expansion, depthwise 3x3, squeeze-and-excitation scaling the depthwise output,
    1x1 projection, residual addition."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(3, 16, activation_layer=nn.Hardswish)
        self.expand = Conv2dNormActivation(16, 32, kernel_size=1, activation_layer=nn.Hardswish)
        self.depthwise = Conv2dNormActivation(32, 32, groups=32, activation_layer=nn.Hardswish)
        self.se = SqueezeExcitation(32, 8, scale_activation=nn.Hardsigmoid)
        self.project = Conv2dNormActivation(32, 16, kernel_size=1, activation_layer=None)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        return self.head(x.mean((2, 3)))


class ProjectionOntoTheResidual(nn.Module):
    """MobileNetV3-Large's first block (no expansion): depthwise, then a 1x1 projection added back onto its own
    input, so the projection both reads and writes the residual width."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.Hardswish)
        self.depthwise = Conv2dNormActivation(8, 8, groups=8)
        self.project = Conv2dNormActivation(8, 8, kernel_size=1, activation_layer=None)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.project(self.depthwise(x))).mean((2, 3)))


class SharedHead(nn.Module):
    """A detection-style head applied to two levels of features (the same convolutions called twice per forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.level1 = Conv2dNormActivation(3, 8)
        self.level2 = Conv2dNormActivation(8, 8, stride=2)
        self.head = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))

    def forward(self, x):
        a = self.level1(x)
        b = self.level2(a)
        return torch.cat([self.head(a).flatten(1), self.head(b).flatten(1)], 1)


class DenseBlock(nn.Module):
    """DenseNet's concatenation: the third convolution reads the first two's channels side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.a = Conv2dNormActivation(3, 8)
        self.b = Conv2dNormActivation(8, 6)
        self.c = Conv2dNormActivation(14, 12)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        a = self.a(x)
        return self.head(self.c(torch.cat([a, self.b(a)], 1)).mean((2, 3)))


class SegmentationHead(nn.Module):
    """FCN-style: features, then a 1x1 convolution to the class maps, upsampled to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(Conv2dNormActivation(3, 12, stride=2), Conv2dNormActivation(12, 12))
        self.classifier = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return {"out": F.interpolate(self.classifier(self.features(x)), size=x.shape[-2:], mode="bilinear")}


class _Out(nn.Module):
    """The segmentation head's ``out`` map as a plain tensor (what ``assert_masked_equals_slimmed`` compares)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["out"]


class RegisteredOutOfOrder(nn.Module):
    """The activation is registered before the convolution it follows, and another activation (used elsewhere)
    sits between the convolution and its BatchNorm in registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.other_act = nn.Sigmoid()
        self.gate = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x))) * self.other_act(self.gate(x))
        return self.head(self.conv2(y).mean((2, 3)))


def members(layers) -> dict[str, list[str]]:
    return {layer.name: layer.member_names for layer in layers}


def test_squeeze_excitation_prunes_with_the_channels_it_scales_and_reads_its_own_taps():
    torch.manual_seed(0)
    net = randomized(InvertedResidualSE())
    x = torch.randn(4, 3, 16, 16)
    layers = find_prunable_layers(net, x[:1])
    groups = members(layers)
    # the excitation's output channels multiply the depthwise output: one group with the expansion
    assert groups["expand.0"] == ["expand.0", "depthwise.0", "se.fc2"]
    assert groups["se.fc1"] == ["se.fc1"]  # the squeeze width is a group of its own
    se_fc2 = next(m for m in next(l for l in layers if l.name == "expand.0").members if m.name == "se.fc2")
    assert set(se_fc2.taps) == {"conv"}  # its ReLU (registered after it) belongs to se.fc1
    assert next(l for l in layers if l.name == "se.fc1").taps["act"] is net.se.activation
    batches = [(x, torch.randint(0, 10, (4,)))]
    stats = collect_statistics(net, layers, lambda: batches, 10, bins=4, progress=False)
    assert stats["se.fc2"].counts.shape[0] == 32 and stats["se.fc1"].counts.shape[0] == 8
    keep = select_layerwise({layer.name: RandomScore(1)(layer) for layer in layers}, layers, 0.5, mode="channels")
    assert_masked_equals_slimmed(net, layers, keep, x)
    assert (net.expand[0].out_channels, net.se.fc2.out_channels, net.se.fc1.out_channels) == (16, 16, 4)
    assert net.se.fc1.in_channels == net.project[0].in_channels == 16


def test_concatenated_channels_prune_in_each_producer_and_shrink_the_reader_by_their_sum():
    torch.manual_seed(0)
    net = randomized(DenseBlock())
    x = torch.randn(4, 3, 8, 8)
    layers = find_prunable_layers(net, x[:1])
    assert members(layers) == {"a.0": ["a.0"], "b.0": ["b.0"], "c.0": ["c.0"]}
    keep = select_layerwise({layer.name: RandomScore(2)(layer) for layer in layers}, layers, 0.5, mode="channels")
    assert_masked_equals_slimmed(net, layers, keep, x)
    assert (net.a[0].out_channels, net.b[0].out_channels, net.c[0].out_channels) == (4, 3, 6)
    assert net.c[0].in_channels == 7 and net.b[0].in_channels == 4


def test_a_segmentation_head_keeps_its_class_maps(caplog):
    torch.manual_seed(0)
    net = _Out(randomized(SegmentationHead()))
    x = torch.randn(2, 3, 16, 16)
    with caplog.at_level(logging.INFO, logger="infoprune.pruning.layers"):
        layers = find_prunable_layers(net, x[:1])
    assert [layer.name for layer in layers] == ["net.features.0.0", "net.features.1.0"]
    assert "['net.classifier'] are the network's outputs" in caplog.text
    keep = select_layerwise({layer.name: RandomScore(3)(layer) for layer in layers}, layers, 0.5, mode="channels")
    assert_masked_equals_slimmed(net, layers, keep, x)
    assert net(x).shape == (2, 5, 16, 16) and net.net.features[1][0].out_channels == 6


@pytest.mark.parametrize("build", [InvertedResidualSE, ProjectionOntoTheResidual, DenseBlock, RegisteredOutOfOrder,
                                   SharedHead])
def test_the_cost_of_removing_any_one_channel_is_what_slimming_it_saves(build):
    x = torch.randn(1, 3, 16, 16)
    for layer in find_prunable_layers(build(), x):
        for channel in (0, layer.num_channels - 1):
            net = build()
            layers = find_prunable_layers(net, x)
            cost = PruningCost(net, layers, x)
            cost.remove(layer.name, channel)
            keep = {other.name: torch.tensor([c for c in range(other.num_channels)
                                              if (other.name, c) != (layer.name, channel)]) for other in layers}
            slim(net, layers, keep, x)
            assert (cost.params, cost.flops) == (count_parameters(net), count_flops(net, x)), (layer.name, channel)


def test_tap_points_follow_the_dataflow_not_the_registration_order():
    net = RegisteredOutOfOrder().eval()
    layers = {layer.name: layer for layer in find_prunable_layers(net, torch.randn(1, 3, 8, 8))}
    assert layers["conv"].taps == {"conv": net.conv, "bn": net.bn, "act": net.act}
    gate = next(member for member in layers["conv"].members if member.module is net.gate)  # tied by the product
    assert gate.taps == {"conv": net.gate}  # its sigmoid is no tap activation
    assert layers["conv2"].taps == {"conv": net.conv2}
    resnet = CifarResNet(depth=8, shortcut="B").eval()  # the activation after the residual addition is a tap
    stage = {m.name: m.taps for layer in find_prunable_layers(resnet, torch.randn(1, 3, 8, 8)) for m in layer.members}
    assert stage["blocks.0.conv2"] == {"conv": resnet.blocks[0].conv2, "bn": resnet.blocks[0].bn2,
                                       "act": resnet.blocks[0].relu2}
    assert stage["blocks.1.conv2"]["act"] is resnet.blocks[1].relu2  # its projection shortcut sits in between


@pytest.mark.parametrize("family,name", [("classification", "mobilenet_v3_small"),
                                         ("segmentation", "lraspp_mobilenet_v3_large")])
def test_torchvision_networks_with_excitation_and_segmentation_heads_prune_and_reload(family, name):
    record = check_model(family, name, size=64, images=4)
    assert record["failure"] is None, record["failure"]
    assert record["groups"] > 5 and record["forward_ok"] and record["reload_ok"]
    assert 0.45 <= record["flops_kept"] <= 0.5 + 1e-9


def test_a_timm_model_runs_at_a_reduced_input_with_its_heads_pruned_whole():
    """``--reduce``: timm's six-block test ViT built for 32 x 32 instead of its own 160 x 160 prunes, slims and
    reloads."""
    record = check_model("timm", "test_vit", size=32, images=4, reduced=True)
    assert record["failure"] is None, record["failure"]
    assert record["input"] == [3, 32, 32] and record["reduced_input"]
    assert record["groups"] == 1 + 2 * 6 and record["forward_ok"] and record["reload_ok"]  # width, heads, MLPs


class AuxiliaryInTraining(nn.Module):
    """An auxiliary classifier that reads the features only in training, as GoogLeNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.features = Conv2dNormActivation(3, 8)
        self.aux = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.features(x)
        out = self.head(x.mean((2, 3)))
        return (out, self.aux(x)) if self.training else out


def test_a_convolution_the_forward_pass_never_calls_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\['aux'\] are not called by the network's forward pass.*aux_logits=False"):
        find_prunable_layers(AuxiliaryInTraining(), torch.randn(1, 3, 8, 8))


class GroupNormHead(nn.Module):
    """FCOS-style head convolutions, each followed by a GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                   nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.tower(x)


def test_group_norm_channels_go_one_position_per_group_and_cost_exactly():
    x = torch.randn(2, 3, 8, 8)
    layers = find_prunable_layers(GroupNormHead(), x[:1])
    assert [(layer.name, layer.channel_groups) for layer in layers] == [("tower.0", 4), ("tower.3", 2)]
    for layer in layers:
        net = GroupNormHead()
        found = find_prunable_layers(net, x[:1])
        cost = PruningCost(net, found, x[:1])
        unit = layer.unit_channels(torch.tensor([1]))
        for channel in unit.tolist():
            cost.remove(layer.name, channel)
        keep = {other.name: torch.arange(other.num_channels) for other in found}
        keep[layer.name] = torch.tensor([c for c in range(layer.num_channels) if c not in unit.tolist()])
        slim(net, found, keep, x[:1])
        assert (cost.params, cost.flops) == (count_parameters(net), count_flops(net, x[:1])), layer.name
        assert net(x).shape == (2, 3, 8, 8)
    assert (net.tower[1].num_channels, net.tower[4].num_channels) == (16, 6)


def test_a_group_search_that_maps_more_indices_than_allowed_leaves_that_group_out(monkeypatch, caplog):
    """A flatten into a linear layer maps each channel to its positions; past the bound the group is left out,
    logged, and the other groups stay."""
    import infoprune.pruning.layers as layers_module

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 5))
    x = torch.randn(1, 3, 8, 8)
    assert [layer.name for layer in find_prunable_layers(net, x)] == ["0", "2"]
    monkeypatch.setattr(layers_module, "MAX_MAPPED_INDICES", 6 * 16 - 1)  # the flatten maps 6 channels to 96 inputs
    with caplog.at_level("WARNING"):
        assert [layer.name for layer in find_prunable_layers(net, x)] == ["0"]
    assert "more indices than a group search allows" in caplog.text
