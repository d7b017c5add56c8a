"""The field's channel criteria (taylor, bn_scale, fpgm, hrank, chip, apoz): equal to Torch-Pruning's importance
classes where it ships them, to independent numpy/scipy computations where it does not, invariant under channel
permutation, and the same under two processes as under one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
import torchvision
from scipy.spatial.distance import cdist

from infoprune.callbacks.channel_scores import StatisticsSettings, score_channels
from infoprune.datamodules import DigitsDataModule
from infoprune.models import SimpleNet
from infoprune.pruning.activation_metrics import APoZ, ChannelIndependence, HRank
from infoprune.pruning.feature_stats import channel_independence, feature_map_rank, zero_fraction
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.torch_pruning_metrics import FPGM, BatchNormScale, Taylor
from tests.test_channel_scores import batches_of

SETTINGS = StatisticsSettings(num_images=90, batch_size=32)


def digits_net(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = SimpleNet(num_classes=4, in_channels=1, width=0.125, pool_after=[3, 6])
    for m in net.modules():  # trained-looking BatchNorm: scales and shifts that differ per channel
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 2.0), m.bias.data.uniform_(-0.5, 0.5)
    return net, torch.randn(90, 1, 8, 8), torch.randint(0, 4, (90,))


def scores_of(metric, net, images, labels, batch: int = 32) -> dict[str, torch.Tensor]:
    layers = find_prunable_layers(net, images[:1])
    return score_channels(net, layers, metric, batches_of(images, labels, batch), 4, SETTINGS)[0]


def feature_maps(net: nn.Module, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = []
    handle = module.register_forward_hook(lambda m, i, o: out.append(o.detach().clone()))
    with torch.no_grad():
        net.eval()(images)
    handle.remove()
    return torch.cat(out)


# --- Torch-Pruning's criteria: ours equals its importance classes, and the per-layer forms equal formulas -------

def tp_groups(net: nn.Module, convs: list[nn.Conv2d], example: torch.Tensor) -> list:
    """Torch-Pruning's groups of the convolutions' output channels, from a graph built here."""
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    return [graph.get_pruning_group(c, tp.prune_conv_out_channels, idxs=list(range(c.out_channels))) for c in convs]


@pytest.mark.parametrize("build,shape", [
    (lambda: digits_net()[0], (1, 8, 8)),
    (lambda: torchvision.models.resnet18(num_classes=4), (3, 32, 32)),
])
@pytest.mark.parametrize("reduction", ["mean", "first"])
def test_weight_criteria_equal_torch_pruning(build, shape, reduction):
    torch.manual_seed(1)
    net = build()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 2.0)
    example = torch.randn(1, *shape)
    layers = find_prunable_layers(net, example)
    groups = tp_groups(net, [layer.module for layer in layers], example)
    for ours, theirs in [(BatchNormScale(reduction), tp.importance.BNScaleImportance(reduction, normalizer=None)),
                         (FPGM(reduction), tp.importance.FPGMImportance(group_reduction=reduction, normalizer=None))]:
        for layer, group in zip(layers, groups):
            expected = theirs(group).double()
            torch.testing.assert_close(ours(layer), expected, rtol=0, atol=0)


def test_per_layer_forms_equal_their_formulas():
    net, images, _ = digits_net()
    layers = find_prunable_layers(net, images[:1])
    for layer in layers:
        w = layer.module.weight.detach().double().flatten(1).numpy()
        expected_fpgm = cdist(np.abs(w) ** 2, np.abs(w) ** 2).sum(0)  # TP's form: distances between |w|^2 filters
        np.testing.assert_allclose(FPGM("first")(layer).numpy(), expected_fpgm, rtol=1e-4)  # float32 cdist
        np.testing.assert_array_equal(BatchNormScale("first")(layer).numpy(),
                                      layer.taps["bn"].weight.detach().abs().double().numpy())


def test_taylor_equals_torch_pruning_on_the_whole_calibration_gradient():
    net, images, labels = digits_net()
    ours = scores_of(Taylor("mean", multivariable=False), net, images, labels, batch=32)
    assert all(p.grad is None for p in net.parameters())  # the gradient pass leaves no gradient behind
    net.zero_grad()
    F.cross_entropy(net.eval()(images), labels).backward()  # one batch of all 90 images: the same mean gradient
    importance = tp.importance.TaylorImportance(normalizer=None, multivariable=False)
    layers = find_prunable_layers(net, images[:1])
    for layer, group in zip(layers, tp_groups(net, [layer.module for layer in layers], images[:1])):
        expected = importance(group).double()
        torch.testing.assert_close(ours[layer.name], expected, rtol=1e-4, atol=1e-9)


def test_taylor_per_filter_is_the_first_order_loss_change_of_the_filter():
    net, images, labels = digits_net()
    ours = scores_of(Taylor("first", multivariable=True), net, images, labels)
    net64 = net.double().eval()
    layers = find_prunable_layers(net64, images[:1].double())
    weights = [layer.module.weight for layer in layers]
    grads = torch.autograd.grad(F.cross_entropy(net64(images.double()), labels), weights)
    for layer, w, g in zip(layers, weights, grads):
        expected = (w.detach() * g).flatten(1).sum(1).abs()  # |sum_s w_s dL/dw_s| in float64
        torch.testing.assert_close(ours[layer.name], expected, rtol=1e-4, atol=1e-7)


def test_existing_gradients_survive_the_taylor_pass():
    net, images, labels = digits_net()
    F.cross_entropy(net(images[:8]), labels[:8]).backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    scores_of(Taylor(), net, images, labels)
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, before[n]), n


def test_bn_scale_without_batchnorm_is_a_clear_error():
    from infoprune.models import LeNet5
    net = LeNet5()
    layers = find_prunable_layers(net, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="needs a BatchNorm after layer"):
        BatchNormScale()(layers[0])


# --- HRank, CHIP, APoZ: independent numpy computations --------------------------------------------------------

def test_feature_map_rank_equals_numpy_matrix_rank():
    torch.manual_seed(0)
    ranks = torch.randint(0, 7, (5, 4))
    maps = torch.zeros(5, 4, 9, 7)
    for n in range(5):
        for c in range(4):
            r = int(ranks[n, c])
            maps[n, c] = torch.randn(9, r) @ torch.randn(r, 7)  # rank r by construction
    maps = F.relu(maps)  # as after the activation: rank no longer known in advance
    expected = np.array([[np.linalg.matrix_rank(maps[n, c].numpy()) for c in range(4)] for n in range(5)])
    np.testing.assert_array_equal(feature_map_rank(maps).numpy(), expected)


@pytest.mark.parametrize("height", [5, 1], ids=["channel-gram", "position-gram"])  # P = 20 > C - 1, P = 4 < C - 1
def test_channel_independence_equals_explicit_nuclear_norms(height):
    torch.manual_seed(0)
    maps = F.relu(torch.randn(3, 6, height, 4, dtype=torch.float64))
    maps[1, 2] = 0.0  # an all-zero channel changes nothing when removed
    maps[2, 4] = maps[2, 1]  # a duplicate channel
    expected = np.zeros((3, 6))
    for n in range(3):
        a = maps[n].reshape(6, -1).numpy()
        for c in range(6):
            without = a.copy()
            without[c] = 0.0
            expected[n, c] = np.linalg.norm(a, "nuc") - np.linalg.norm(without, "nuc")
    got = channel_independence(maps, max_elements=2 * 6 * 25)  # chunks of one or two images
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-9)  # sqrt of Gram eigenvalues: ~1e-8
    assert got[1, 2] == pytest.approx(0.0, abs=1e-9) and (got >= -1e-9).all()


def test_zero_fraction_equals_numpy():
    maps = F.relu(torch.randn(4, 3, 5, 5))
    np.testing.assert_array_equal(zero_fraction(maps).numpy(), (maps.numpy() == 0).mean(axis=(2, 3)))


@pytest.mark.parametrize("metric,statistic", [(HRank(), np.linalg.matrix_rank), (APoZ(), None),
                                              (ChannelIndependence(), None)])
def test_feature_criteria_average_over_images_and_batches(metric, statistic):
    net, images, labels = digits_net()
    ours = scores_of(metric, net, images, labels, batch=32)  # three batches, the last of 26
    layer = find_prunable_layers(net, images[:1])[2]
    maps = feature_maps(net, layer.taps["act"], images).double()
    if isinstance(metric, HRank):
        per_image = np.array([[statistic(m.float().numpy()) for m in image] for image in maps])
    elif isinstance(metric, APoZ):
        per_image = 1.0 - (maps.numpy() == 0).mean(axis=(2, 3))
    else:
        per_image = channel_independence(maps).numpy()
    np.testing.assert_allclose(ours[layer.name].numpy(), per_image.mean(0), rtol=1e-9, atol=1e-9)


# --- invariances -----------------------------------------------------------------------------------------------

def permute_first_layer(net: nn.Module, perm: torch.Tensor) -> None:
    """Reorder the first conv layer's output channels (its BatchNorm and the next conv's inputs with them): the
    network computes the same function."""
    conv, bn, nxt = net.features[0].conv, net.features[0].bn, net.features[1].conv
    with torch.no_grad():
        for t in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[perm])
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[perm])
        nxt.weight.copy_(nxt.weight[:, perm])


CRITERIA = [Taylor(), BatchNormScale(), FPGM(), HRank(), ChannelIndependence(), APoZ()]


@pytest.mark.parametrize("metric", CRITERIA, ids=lambda m: m.name)
def test_permuting_a_layer_permutes_its_scores(metric):
    net, images, labels = digits_net()
    first = find_prunable_layers(net, images[:1])[0].name
    before = scores_of(metric, net, images, labels)[first]
    perm = torch.randperm(before.numel(), generator=torch.Generator().manual_seed(3))
    permute_first_layer(net, perm)
    after = scores_of(metric, net, images, labels)[first]
    torch.testing.assert_close(after, before[perm], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("metric", [m for m in CRITERIA if not isinstance(m, FPGM)], ids=lambda m: m.name)
def test_a_zeroed_channel_scores_lowest(metric):
    """A channel whose output is exactly zero scores lowest wherever the criterion implies it (no gradient through
    it, zero scale, rank 0, no nuclear-norm share, all zeros). FPGM does not: a zero filter is far from the
    geometric median unless the others are small (its formula is checked above)."""
    net, images, labels = digits_net()
    layer = find_prunable_layers(net, images[:1])[1]
    with torch.no_grad():
        layer.module.weight[3] = 0.0
        layer.taps["bn"].weight[3], layer.taps["bn"].bias[3] = 0.0, 0.0  # the channel's output is exactly zero
    scores = scores_of(metric, net, images, labels)[layer.name]
    assert scores[3] == scores.min()


# --- two processes: the same scores as one -------------------------------------------------------------------

DDP_CRITERIA = {"taylor": Taylor, "hrank": HRank, "chip": ChannelIndependence, "apoz": APoZ}


def _digits_scores(rank: int, world_size: int) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = SimpleNet(num_classes=10, in_channels=1, width=0.125, pool_after=[3, 6])
    dm = DigitsDataModule()
    dm.setup()
    layers = find_prunable_layers(net, torch.zeros(1, 1, 8, 8))
    batches = dm.calibration_batches(300 - 7, 64, seed=0, device=torch.device("cpu"), rank=rank,
                                     world_size=world_size)
    return {name: score_channels(net, layers, build(), batches, 10, SETTINGS)[0]
            for name, build in DDP_CRITERIA.items()}


def test_two_processes_give_the_same_scores_as_one(ddp_pair):
    single = _digits_scores(0, 1)
    ddp = torch.load(ddp_pair / "field_criteria" / "scores.pt", weights_only=False)  # _digits_scores of rank 0
    for name, scores in single.items():
        for layer, values in scores.items():
            # gradients are float32 sums in another order; rank and zero counts are exact
            tolerance = dict(rtol=1e-5, atol=1e-9) if name == "taylor" else dict(rtol=0, atol=1e-12)
            torch.testing.assert_close(ddp[name][layer], values, **tolerance, msg=f"{name} {layer}")
