"""Networks from anywhere: torchvision and user networks sized for the data, coupled channel groups pruned as one
(masked == slimmed), slimmed checkpoints of any architecture, group scores under DDP, bad networks."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torchvision

from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.datamodules import DigitsDataModule
from infoprune.models import CifarResNet
from infoprune.models.classifier import ImageClassifier
from infoprune.models.network import build_network
from infoprune.pruning.cost import PruningCost, count_flops
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.masks import apply_channel_masks
from infoprune.pruning.metrics import MutualInformation, RandomScore, score_group
from infoprune.pruning.selection import select_global, select_layerwise
from infoprune.pruning.slim import slim
from infoprune.pruning.stats import collect_statistics
from infoprune.validation import ConfigError, validate_pruning
from tests.conftest import slim_classifier
from tests.test_pruning import randomized
from tests.two_processes import rank_zero_result

GROUPED = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "resnet56": lambda: CifarResNet(),  # option-A zero-padding shortcuts between stages
    "resnet56_b": lambda: CifarResNet(shortcut="B"),
}


class NoSizeArguments(nn.Module):
    """A user's network that takes neither ``num_classes`` nor ``in_channels``."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                      nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(hidden, 1000)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class NoConvolution(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


def not_a_module(num_classes: int = 10) -> dict:
    return {"num_classes": num_classes}


@pytest.mark.parametrize("target", ["torchvision.models.resnet18", "torchvision.models.mobilenet_v2",
                                    "tests.test_any_network.NoSizeArguments"])
def test_networks_from_anywhere_are_sized_for_the_data(target):
    net = build_network({"_target_": target}, num_classes=7, in_channels=1)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert net.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("model", ["resnet18_tv", "mobilenet_v2_tv"])
def test_torchvision_configs_run_on_digits_and_cifar_sized_inputs(make_cfg, model):
    cfg = make_cfg([f"model={model}"], "prune")
    checked = validate_pruning(cfg)
    assert checked.datamodule.input_shape == (1, 8, 8)
    cifar = ImageClassifier(net={**dict(cfg.model.net), "num_classes": 10, "in_channels": 3},
                            optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                            input_shape=(3, 32, 32))
    assert cifar.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def assert_masked_equals_slimmed(net: nn.Module, layers: list, keep: dict, x: torch.Tensor) -> None:
    """``net`` with the channels not in ``keep`` masked gives the outputs of ``net`` slimmed to ``keep`` (which
    ``net`` then is)."""
    masked = copy.deepcopy(net)
    apply_channel_masks(find_prunable_layers(masked, x[:1]), keep)
    with torch.no_grad():
        expected = masked(x)
        slim(net, layers, keep, x[:1])
        got = net(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("network", sorted(GROUPED))
def test_every_group_is_prunable_and_masked_equals_slimmed(network):
    torch.manual_seed(0)
    net = randomized(GROUPED[network]())
    x = torch.randn(4, 3, 32, 32)
    layers = find_prunable_layers(net, x[:1])
    members = {m.module for layer in layers for m in layer.members}
    assert members == {m for m in net.modules() if isinstance(m, nn.Conv2d)}  # nothing left out
    assert any(len(layer.members) > 1 for layer in layers)
    keep = select_layerwise({layer.name: RandomScore(1)(layer) for layer in layers}, layers, 0.5, mode="channels")
    assert_masked_equals_slimmed(net, layers, keep, x)
    assert all(layer.num_channels == len(keep[layer.name]) for layer in layers)
    assert all(m.module.out_channels == layer.num_channels for layer in layers for m in layer.members)


@pytest.mark.parametrize("net", [{"_target_": "torchvision.models.resnet18"},
                                 {"_target_": "infoprune.models.CifarResNet", "depth": 20}])
def test_slimmed_checkpoint_of_a_grouped_network_reloads_with_equal_outputs(tmp_path, net):
    torch.manual_seed(0)
    module = ImageClassifier(net={**net, "num_classes": 10, "in_channels": 1},
                             optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                             input_shape=(1, 8, 8))
    randomized(module.net)
    layers = find_prunable_layers(module.net, module.example_input_array)
    dense_stem = next(m for m in module.net.modules() if isinstance(m, nn.Conv2d)).out_channels
    slim_classifier(module, select_layerwise({l.name: RandomScore(2)(l) for l in layers}, layers, 0.6))
    assert module.hparams.structure["conv1"] < dense_stem  # the residual width of stage 1 was pruned
    path = save_weights_checkpoint(module, tmp_path / "slim.ckpt")
    reloaded = ImageClassifier.load_from_checkpoint(path).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), module.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet56_flops_target_is_met_within_one_channel_of_a_group(shortcut):
    net = randomized(CifarResNet(shortcut=shortcut))
    x = torch.zeros(1, 3, 32, 32)
    layers = find_prunable_layers(net, x)
    cost = PruningCost(net, layers, x)
    dense = cost.dense_flops
    largest = max(cost.removal_cost(layer.name, 0)[1] for layer in layers)  # one channel of the costliest group
    keep = select_global({l.name: RandomScore(0)(l) for l in layers}, layers, cost, 0.5, resource="flops")
    stage_widths = [keep[name].numel() for name in ("conv1", "blocks.9.conv2", "blocks.18.conv2")]
    assert stage_widths != [16, 32, 64]  # the residual widths took part in the ranking
    slim(net, layers, keep, x)
    assert dense * 0.5 - largest <= count_flops(net, x) <= dense * 0.5
    assert count_flops(net, x) == cost.flops  # the exact account equals the FLOP counter after slimming


def _group_scores(rank: int, world_size: int):
    torch.manual_seed(0)
    net = randomized(build_network({"_target_": "torchvision.models.resnet18"}, 10, 1))
    dm = DigitsDataModule()
    dm.setup()
    x = torch.zeros(1, 1, 8, 8)
    layers = find_prunable_layers(net, x)
    batches = dm.calibration_batches(999, 100, seed=0, device=torch.device("cpu"), rank=rank, world_size=world_size)
    stats = collect_statistics(net, layers, batches, 10, bins=16, progress=False)
    scores = {layer.name: score_group(MutualInformation(), layer, stats) for layer in layers}
    keep = select_global(scores, layers, PruningCost(net, layers, x), 0.5, resource="flops")
    return scores, {name: k.numel() for name, k in keep.items()}


@pytest.mark.slow  # 25 s; per-layer scores under DDP are tested exact in test_channel_scores, groups combine them
def test_group_scores_and_widths_of_a_torchvision_network_under_ddp_equal_one_process(tmp_path):
    single_scores, single_widths = _group_scores(0, 1)
    ddp_scores, ddp_widths = rank_zero_result(_group_scores, tmp_path)
    assert ddp_widths == single_widths and ddp_widths["conv1"] < 64
    for name, scores in single_scores.items():
        torch.testing.assert_close(ddp_scores[name], scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("target, message", [("tests.test_any_network.not_a_module", "not a torch.nn.Module"),
                                             ("tests.test_any_network.NoConvolution", "no prunable convolution")])
def test_bad_networks_fail_before_any_training(make_cfg, target, message):
    cfg = make_cfg(["~model.net", f"+model.net={{_target_:{target}}}"], "prune")
    with pytest.raises((ConfigError, TypeError), match=message):
        validate_pruning(cfg)


@pytest.mark.slow  # 15-45 s on 2 cores: outside the default suite's 4-minute budget
def test_a_slimmed_torchvision_network_goes_through_every_entry_point(tmp_path):
    from infoprune.pipeline import prune
    from infoprune.training import train
    from tests.conftest import FAST, compose_config, digits_test_accuracy
    from tests.test_prune import QUICK

    tv = QUICK + ["model=resnet18_tv", "pruning/metric=l1_in", "pruning/scope=global", "pruning.target=0.5"]
    first = prune(compose_config("prune", tv + ["trainer.max_epochs=1"], tmp_path / "first"))
    final = tmp_path / "first" / "final.ckpt"
    assert first["groups"]["conv1"] == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert first["params_remaining"] < 0.6
    # load_from_checkpoint knows no widths: the structure record rebuilds the slimmed network
    assert digits_test_accuracy(final) == pytest.approx(first["acc_finetuned"], abs=1e-6)
    rebuilt = ImageClassifier.load_from_checkpoint(final, weights_only=False)
    randomized(rebuilt.net)  # trainer.test(ckpt_path=...) must restore the weights into the rebuilt network
    tester = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    tested = tester.test(rebuilt, datamodule=DigitsDataModule(), ckpt_path=str(final), weights_only=False,
                         verbose=False)[0]
    assert tested["test/acc"] == pytest.approx(first["acc_finetuned"], abs=1e-6)
    trained = FAST + ["trainer.accelerator=cpu", "model=resnet18_tv"]
    tested = train(compose_config("train", trained + [f"init_from={final}", "train=false"],
                                  tmp_path / "tested"))
    assert tested["test/acc"] == pytest.approx(first["acc_finetuned"], abs=1e-6)
    fit = trained + [f"init_from={final}", "test=false"]
    train(compose_config("train", fit + ["trainer.max_epochs=1"], tmp_path / "tuned"))
    last = tmp_path / "tuned" / "checkpoints" / "last.ckpt"
    train(compose_config("train", fit + ["trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "tuned"))
    resumed = torch.load(last, weights_only=False)
    assert resumed["epoch"] == 1 and resumed["hyper_parameters"]["structure"] == first["channels_after"]
    again = prune(compose_config("prune", tv + [f"ckpt_path={final}"], tmp_path / "again"))
    assert again["channels_before"] == first["channels_after"]
