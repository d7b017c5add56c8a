"""Behaviours the README and docs promise, each against an independent expected value: the weighted-MI formulas
by hand, the calibration set (un-augmented, seeded), Inf detection, and every documented config group composing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from infoprune.config import instantiate_group
from infoprune.datamodules import DigitsDataModule
from infoprune.models import SimpleNet
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import WeightedMutualInformation
from infoprune.pruning.stats import LayerStatistics, collect_statistics
from tests.conftest import compose_config, mi_by_hand


@pytest.fixture
def layer_and_stats():
    """The first prunable layer of a small SimpleNet with random weights, and synthetic statistics for it."""
    torch.manual_seed(0)
    net = SimpleNet(width=0.125)
    layer = find_prunable_layers(net, torch.zeros(1, 3, 32, 32))[0]
    generator = torch.Generator().manual_seed(1)
    channels, bins, classes = layer.num_channels, 6, 4
    counts = torch.randint(0, 20, (channels, bins, classes), generator=generator)
    abs_sum = torch.rand(channels, bins, generator=generator, dtype=torch.float64) * counts.sum(-1)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).repeat(channels, 1)
    return layer, LayerStatistics("act", edges, counts, abs_sum)


def test_weighted_mi_l1_out_is_normalised_mi_times_normalised_output_l1(layer_and_stats, tmp_path):
    """The default ``pruning/metric=wmi`` (variant l1_out): ``MI_c / max MI * L1out_c / max L1out``."""
    layer, stats = layer_and_stats
    mi = mi_by_hand(stats.counts.numpy().astype(float))
    (consumer,) = layer.consumers  # the next conv reads channel c through its input slice c
    l1_out = consumer.module.weight.detach().double().abs().sum(dim=(0, 2, 3)).numpy()
    expected = mi / mi.max() * l1_out / l1_out.max()
    np.testing.assert_allclose(WeightedMutualInformation("l1_out")(layer, stats).numpy(), expected, rtol=1e-10)
    assert instantiate(compose_config("prune", ["pruning/metric=wmi"], tmp_path).pruning.metric).variant == "l1_out"


def test_weighted_mi_activation_weights_bins_by_mean_abs_activation(layer_and_stats):
    """``pruning/metric=wmi_act``: bin weight = mean |a| in the bin / mean |a| over the layer."""
    layer, stats = layer_and_stats
    counts = stats.counts.numpy().astype(float)
    in_bin = counts.sum(-1)
    bin_mean = np.where(in_bin > 0, stats.abs_sum.numpy() / np.maximum(in_bin, 1), 0.0)
    layer_mean = stats.abs_sum.numpy().sum() / (in_bin[0].sum() * layer.num_channels)
    expected = mi_by_hand(counts, bin_mean / layer_mean)
    np.testing.assert_allclose(WeightedMutualInformation("activation")(layer, stats).numpy(), expected, rtol=1e-10)


def test_calibration_images_are_unaugmented_training_images_chosen_by_the_seed():
    dm = DigitsDataModule()
    dm.setup("fit")
    normalised = dm.transform_batch(dm.train_set.images, train=False)
    rows = {tuple(image.flatten().tolist()) for image in normalised}

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(dm.calibration_batches(300, 128, seed, torch.device("cpu"))())
        assert [len(labels) for _, labels in batches] == [128, 128, 44]
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    images, labels = draw(0)
    assert all(tuple(image.flatten().tolist()) in rows for image in images)  # no crop or flip: training images as is
    assert len({tuple(image.flatten().tolist()) for image in images}) >= 295  # distinct draws (a few digits repeat)
    again, other = draw(0), draw(1)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)  # the seed fixes the set and its order
    assert not torch.equal(other[0], images)


def test_inf_activations_are_detected_before_they_reach_the_histograms():
    net = SimpleNet(width=0.125).eval()
    layers = find_prunable_layers(net, torch.zeros(1, 3, 32, 32))
    with torch.no_grad():
        layers[0].module.weight.fill_(1e38)  # positive inputs: every sum overflows to +inf (not NaN)
    batches = lambda: [(torch.rand(8, 3, 32, 32) + 1, torch.arange(8))]  # noqa: E731
    with torch.no_grad():
        assert torch.isposinf(layers[0].module(batches()[0][0])).all()
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        collect_statistics(net, layers[:1], batches, 10, bins=4)  # only the layer whose maps are +inf


@pytest.mark.parametrize("overrides", [["logger=many"], ["debug=default"], ["debug=fdr"], ["debug=limit"],
                                       ["debug=overfit"], ["trainer=gpu"], ["trainer=ddp"], ["trainer=ddp_cpu"]])
def test_documented_config_groups_compose(overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("train", "prune"):
        cfg = compose_config(name, overrides, tmp_path / name)
        group, option = overrides[0].split("=")
        if group == "logger":
            loggers = instantiate_group(cfg.logger)
            assert sorted(type(logger).__name__ for logger in loggers) == ["MLFlowLogger", "ResumableCSVLogger",
                                                                           "TensorBoardLogger", "WandbLogger"]
        elif group == "debug":
            assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu" and cfg.trainer.detect_anomaly
            expected = {"default": ("max_epochs", 1), "fdr": ("fast_dev_run", True),
                        "limit": ("limit_train_batches", 0.05), "overfit": ("overfit_batches", 3)}[option]
            assert cfg.trainer[expected[0]] == expected[1] and not cfg.logger
        else:
            expected = {"gpu": ("gpu", 1, None), "ddp": ("gpu", -1, "ddp"), "ddp_cpu": ("cpu", 2, "ddp")}[option]
            assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.get("strategy")) == expected


def test_job_threads_share_the_cores_among_parallel_jobs(monkeypatch):
    from infoprune import threads

    monkeypatch.setattr(threads, "parallel_jobs", lambda: 1)
    assert threads.job_threads("auto", cores=8) is None and threads.job_threads(3, cores=8) == 3
    monkeypatch.setattr(threads, "parallel_jobs", lambda: 2)
    assert threads.job_threads("auto", cores=8) == 4 and threads.job_threads("auto", cores=1) == 1


def test_the_configuration_reference_is_generated_from_conf():
    from infoprune.config_reference import OUTPUT, generate
    assert OUTPUT.read_text() == generate(), (
        "docs/config_reference.md is stale: regenerate it with `python -m infoprune.config_reference`")
