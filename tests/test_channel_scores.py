"""Feature-map statistics and channel scorers: counts against a numpy reference, binning, errors, every scorer on
every network, output-L1 through flatten and residuals, and exactness under DDP (2 processes == 1 process)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hydra.utils import instantiate

from infoprune.datamodules import DigitsDataModule
from infoprune.models import VGG16BN, AlexNet, CifarResNet, LeNet5, SimpleNet
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import (
    Entropy,
    InputL1,
    MutualInformation,
    RandomScore,
    WeightedMutualInformation,
    output_l1,
)
from infoprune.pruning.stats import collect_statistics
from infoprune.pruning.storage import load_channel_scores, save_channel_scores
from tests.conftest import CONF
from tests.test_grouped_convolutions import tiny_resnext
from tests.test_transformers import tiny_timm_vit
from tests.two_processes import rank_zero_result


def batches_of(images: torch.Tensor, labels: torch.Tensor, size: int):
    return lambda: zip(images.split(size), labels.split(size))


def pooled_reference(net: nn.Module, module: nn.Module, images: torch.Tensor) -> np.ndarray:
    out = []
    handle = module.register_forward_hook(lambda m, i, o: out.append(o.mean((2, 3)).double().clone()))
    with torch.no_grad():
        net.eval()(images)
    handle.remove()
    return torch.cat(out).numpy()


@pytest.fixture
def small_setup():
    torch.manual_seed(0)
    net = SimpleNet(num_classes=4, in_channels=1, width=0.125, pool_after=[3, 6])
    images, labels = torch.randn(90, 1, 8, 8), torch.randint(0, 4, (90,))
    layers = find_prunable_layers(net, images[:1])
    return net, layers, images, labels


def test_counts_match_a_numpy_histogram_of_pooled_activations(small_setup):
    net, layers, images, labels = small_setup
    stats = collect_statistics(net, layers, batches_of(images, labels, 32), 4, bins=8, progress=False)
    for layer in (layers[0], layers[5]):
        s = stats[layer.name]
        values = pooled_reference(net, layer.taps["act"], images)
        for c in range(layer.num_channels):
            lo, hi = values[:, c].min(), values[:, c].max()
            np.testing.assert_allclose(s.edges[c].numpy(), np.linspace(lo, hi, 9), rtol=1e-6, atol=1e-7)
            if hi > lo:
                edges = np.linspace(lo, hi, 9)
                hist = np.stack([np.histogram(values[labels.numpy() == k, c], bins=edges)[0] for k in range(4)], 1)
                np.testing.assert_array_equal(s.counts[c].numpy(), hist)
            np.testing.assert_allclose(s.abs_sum[c].sum().item(), np.abs(values[:, c]).sum(), rtol=1e-9)
        assert s.num_images == 90 and s.counts.dtype == torch.int64


def test_equal_frequency_bins_hold_nearly_equal_counts(small_setup):
    net, layers, images, labels = small_setup
    stats = collect_statistics(net, layers[:1], batches_of(images, labels, 50), 4, bins=3, binning="frequency",
                               tap="bn", progress=False)
    per_bin = stats[layers[0].name].counts.sum(-1)
    assert stats[layers[0].name].tap == "bn"
    assert ((per_bin - 30).abs() <= 2).all(), per_bin


def test_tap_falls_back_to_the_conv_output_when_there_is_no_bn_or_activation():
    net = LeNet5()
    layers = find_prunable_layers(net, torch.zeros(1, 1, 28, 28))
    assert [layer.tap("act")[0] for layer in layers] == ["conv", "conv"]
    with pytest.raises(ValueError, match="unknown tap point"):
        layers[0].tap("pool")


def test_nan_activations_raise_naming_the_layer(small_setup):
    net, layers, images, labels = small_setup
    with torch.no_grad():
        net.features[2].conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="features.2.conv"):
        collect_statistics(net, layers, batches_of(images, labels, 32), 4, progress=False)


def test_dead_channel_gets_zero_information_not_nan(small_setup):
    net, layers, images, labels = small_setup
    with torch.no_grad():
        net.features[0].conv.weight[3].zero_()
        net.features[0].bn.bias[3] = -1.0  # relu(bn(0)) == 0 for every image: a dead channel
    stats = collect_statistics(net, layers[:1], batches_of(images, labels, 32), 4, progress=False)
    for scorer in (MutualInformation(), Entropy(), WeightedMutualInformation("activation"),
                   WeightedMutualInformation("l1_out")):
        scores = scorer(layers[0], stats[layers[0].name])
        assert torch.isfinite(scores).all() and scores[3] == 0.0


def test_bad_settings_are_rejected(small_setup):
    net, layers, images, labels = small_setup
    with pytest.raises(ValueError, match="unknown binning"):
        collect_statistics(net, layers, batches_of(images, labels, 32), 4, binning="quantile")
    with pytest.raises(ValueError, match="unknown weighted-MI variant"):
        WeightedMutualInformation("both")
    with pytest.raises(ValueError, match="needs feature-map statistics"):
        MutualInformation()(layers[0], None)


def test_output_l1_follows_flatten_into_linear_and_sums_all_consumers():
    net = LeNet5()
    conv2 = find_prunable_layers(net, torch.zeros(1, 1, 28, 28))[1]
    fc1 = net.classifier[1].weight.detach().double().abs()                # 500 x (50 * 4 * 4), channel-major flatten
    expected = fc1.view(500, 50, 16).sum(dim=(0, 2))
    torch.testing.assert_close(output_l1(conv2), expected)
    resnet = CifarResNet(depth=20, shortcut="B")
    groups = {layer.name: layer for layer in find_prunable_layers(resnet, torch.zeros(1, 3, 32, 32))}
    inner = groups["blocks.0.conv1"]
    torch.testing.assert_close(output_l1(inner), resnet.blocks[0].conv2.weight.detach().double().abs().sum((0, 2, 3)))
    # the stem's residual width: read by every stage-1 block's conv1 and by stage 2's first conv1 and shortcut conv
    readers = [resnet.blocks[b].conv1 for b in range(4)] + [resnet.blocks[3].shortcut[0]]
    expected = sum(m.weight.detach().double().abs().sum((0, 2, 3)) for m in readers)
    torch.testing.assert_close(output_l1(groups["conv1"]), expected)


def test_input_l1_is_the_filter_norm():
    net = AlexNet(num_classes=10)
    layer = find_prunable_layers(net, torch.zeros(1, 3, 224, 224))[2]
    torch.testing.assert_close(InputL1()(layer), net.features[6].weight.detach().abs().sum((1, 2, 3)).double())


NETWORKS = {"lenet5": (lambda: LeNet5(), (1, 28)), "simplenet": (lambda: SimpleNet(width=0.25), (3, 32)),
            "alexnet": (lambda: AlexNet(num_classes=10, width=0.25), (3, 224)),
            "vgg16_bn": (lambda: VGG16BN(width=0.25), (3, 32)), "resnet56": (lambda: CifarResNet(), (3, 32)),
            "resnext": (lambda: tiny_resnext(), (3, 16)), "timm_vit_heads": (lambda: tiny_timm_vit(10), (3, 16))}
ALL_METRICS = ["mi", "wmi", "wmi_l1", "wmi_act", "entropy", "l1_in", "l1_out", "random", "taylor", "bn_scale", "fpgm",
               "hrank", "chip", "apoz"]
WITHOUT_BATCHNORM = {"lenet5", "alexnet", "timm_vit_heads"}


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_every_metric_config_on_every_network_gives_one_finite_score_per_channel(network):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from infoprune.callbacks.channel_scores import StatisticsSettings, score_channels
    build, (channels, size) = NETWORKS[network]
    torch.manual_seed(0)
    net = build()
    images, labels = torch.randn(24, channels, size, size), torch.randint(0, 10, (24,))
    layers = find_prunable_layers(net, images[:1])
    settings = StatisticsSettings(bins=8, num_images=24, batch_size=12)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        for name in ALL_METRICS:
            scorer = instantiate(compose("train", overrides=[f"pruning/metric={name}"]).pruning.metric)
            if name == "bn_scale" and network in WITHOUT_BATCHNORM:
                with pytest.raises(ValueError, match="needs a BatchNorm"):
                    score_channels(net, layers, scorer, batches_of(images, labels, 12), 10, settings)
                continue
            scores, _ = score_channels(net, layers, scorer, batches_of(images, labels, 12), 10, settings)
            for layer in layers:
                values = scores[layer.name]
                assert values.shape == (layer.num_channels,) and torch.isfinite(values).all(), (name, layer.name)
    assert len(layers) == {"lenet5": 2, "simplenet": 13, "alexnet": 5, "vgg16_bn": 13,
                           "resnet56": 27 + 3, "resnext": 6,
                           "timm_vit_heads": 5}[network]  # inner widths + the stage widths (+ attention heads)


def test_random_scores_are_reproducible_and_differ_between_seeds(small_setup):
    _, layers, _, _ = small_setup
    torch.testing.assert_close(RandomScore(3)(layers[0]), RandomScore(3)(layers[0]))
    assert not torch.equal(RandomScore(3)(layers[0]), RandomScore(4)(layers[0]))


def test_scores_file_round_trip(small_setup, tmp_path):
    net, layers, images, labels = small_setup
    stats = collect_statistics(net, layers, batches_of(images, labels, 32), 4, bins=8, progress=False)
    scores = {layer.name: MutualInformation()(layer, stats[layer.name]) for layer in layers}
    path = save_channel_scores(tmp_path / "s.pt", "mi", scores, stats, {"bins": 8}, num_classes=4)
    payload = load_channel_scores(path)
    assert payload["num_images"] == 90 and payload["settings"]["bins"] == 8
    first = payload["layers"][layers[0].name]
    torch.testing.assert_close(first["scores"], scores[layers[0].name])
    from infoprune.pruning.information import mutual_information
    torch.testing.assert_close(mutual_information(first["counts"]), first["scores"])  # recomputable from counts
    from sklearn.metrics import mutual_info_score  # the recipe docs/statistics.md gives
    assert mutual_info_score(None, None, contingency=first["counts"][1].numpy()) == pytest.approx(
        first["scores"][1].item(), abs=1e-9)


# --- DDP: two gloo processes on disjoint, uneven shards give exactly the single-process statistics -------------

def _digits_statistics(rank: int, world_size: int, num_images: int):
    torch.manual_seed(0)
    net = SimpleNet(num_classes=10, in_channels=1, width=0.125, pool_after=[3, 6])
    dm = DigitsDataModule()
    dm.setup()
    layers = find_prunable_layers(net, torch.zeros(1, 1, 8, 8))
    batches = dm.calibration_batches(num_images, 64, seed=0, device=torch.device("cpu"), rank=rank,
                                     world_size=world_size)
    stats = collect_statistics(net, layers, batches, 10, bins=16, progress=False)
    scores = {layer.name: MutualInformation()(layer, stats[layer.name]) for layer in layers}
    return stats, scores


@pytest.mark.slow  # 16 s; the Lightning DDP test below checks the same counts and scores on an uneven split end to end
def test_two_processes_give_the_same_histograms_and_scores_as_one(tmp_path):
    num_images = 1000 - 37  # 16 batches of 64 would be 1024: 15 full batches + one of 3, split unevenly
    single_stats, single_scores = _digits_statistics(0, 1, num_images)
    ddp_stats, ddp_scores = rank_zero_result(_digits_statistics, tmp_path, num_images)
    ddp = {"stats": ddp_stats, "scores": ddp_scores}
    for name, s in single_stats.items():
        assert s.num_images == num_images
        assert torch.equal(ddp["stats"][name].counts, s.counts)
        assert torch.equal(ddp["stats"][name].edges, s.edges)
        torch.testing.assert_close(ddp["stats"][name].abs_sum, s.abs_sum, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ddp["scores"][name], single_scores[name], rtol=0, atol=1e-12)


def test_callback_under_lightning_ddp_on_cpu_matches_one_process(tmp_path, ddp_pair):
    from infoprune.training import train
    from tests.conftest import compose_config
    from tests.ddp_pair import SCORES_RUN
    train(compose_config("train", ["trainer=cpu", *SCORES_RUN], tmp_path / "single"))  # one process
    single = load_channel_scores(tmp_path / "single" / "channel_scores.pt")
    ddp = load_channel_scores(ddp_pair / "channel_scores" / "channel_scores.pt")
    assert single["num_images"] == ddp["num_images"] == 999
    for name, layer in single["layers"].items():
        assert torch.equal(layer["counts"], ddp["layers"][name]["counts"])
        torch.testing.assert_close(layer["scores"], ddp["layers"][name]["scores"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("binning", ["width", "frequency"])
def test_one_forward_pass_gives_the_statistics_of_one_pass_per_stage_bit_for_bit(binning):
    """The first stage keeps the pooled maps and the later stages replay them: the network runs once, and the
    edges, counts and sums equal those of running it once per stage (buffer_images=0), as they do when a process
    sees more images than it keeps."""
    torch.manual_seed(0)
    net = SimpleNet(width=0.25, num_classes=4).eval()
    images, labels = torch.randn(96, 3, 32, 32), torch.randint(0, 4, (96,))
    layers = find_prunable_layers(net, images[:1])
    forwards = []
    net.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
    results = {}
    for buffer in (2048, 0, 95):  # all kept; none; overflowing on the last batch
        forwards.clear()
        results[buffer] = collect_statistics(net, layers, batches_of(images, labels, 32), 4, bins=8, binning=binning,
                                             progress=False, buffer_images=buffer)
        stages = 3 if binning == "frequency" else 2
        assert len(forwards) == 3 * (1 if buffer == 2048 else stages)  # batches of 32 per forward pass
    for buffer in (0, 95):
        for name, stats in results[2048].items():
            for field in ("edges", "counts", "abs_sum"):
                assert torch.equal(getattr(stats, field), getattr(results[buffer][name], field)), (buffer, name)
    # batches from a DataLoader, whose iterators draw from the global generator: the random state afterwards is the
    # same whether the network ran once or once per stage, so what trains after the statistics is the same too
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32)
    states = []
    for buffer in (2048, 0):
        torch.manual_seed(1)
        collect_statistics(net, layers, lambda: iter(loader), 4, bins=8, binning=binning, progress=False,
                           buffer_images=buffer)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)
