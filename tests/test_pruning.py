"""Selection, masks, slimming, checkpoints and export: masked == slimmed on every network, the layer-wise and global
budgets, bad input, masks through fine-tuning, slimmed checkpoints through train.py (also DDP), export."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from infoprune.callbacks.masking import ChannelMasking, save_weights_checkpoint
from infoprune.export import export_network
from infoprune.models import VGG16BN, AlexNet, CifarResNet, LeNet5, SimpleNet
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.cost import PruningCost, count_flops, count_parameters
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.masks import apply_channel_masks, masked_channels_are_zero
from infoprune.pruning.metrics import InputL1, RandomScore
from infoprune.pruning.selection import keep_count, select_global, select_layerwise
from infoprune.pruning.slim import slim
from infoprune.training import train
from tests.conftest import FAST, ROOT, slim_classifier

NETWORKS = {"lenet5": (lambda: LeNet5(), (1, 28)), "simplenet": (lambda: SimpleNet(width=0.25), (3, 32)),
            "alexnet": (lambda: AlexNet(num_classes=10, width=0.25), (3, 224)),
            "vgg16_bn": (lambda: VGG16BN(width=0.25), (3, 32)), "resnet56": (lambda: CifarResNet(), (3, 32)),
            "resnet56_b": (lambda: CifarResNet(shortcut="B"), (3, 32))}


def randomized(net: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and biases, so a wrong slimming shows in the outputs."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.bias, -0.5, 0.5), nn.init.uniform_(m.weight, 0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_slimmed_network_equals_masked_network(network):
    build, (channels, size) = NETWORKS[network]
    net = randomized(build())
    x = torch.randn(4, channels, size, size)
    layers = find_prunable_layers(net, x)
    keep = select_layerwise({l.name: RandomScore(1)(l) for l in layers}, layers, 0.6, mode="channels")
    apply_channel_masks(layers, keep)
    assert masked_channels_are_zero(layers, keep)
    with torch.no_grad():
        masked = net(x)
        widths = slim(net, layers, keep, x)
        slimmed = net(x)
    assert widths == [len(keep[l.name]) for l in layers]
    assert (slimmed - masked).abs().max().item() <= 1e-4


def conv_params(net: nn.Module) -> list[int]:
    return [m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_layerwise_70_percent_of_parameters_removes_70_percent_of_every_conv_layer():
    net = SimpleNet(width=0.5)
    x = torch.zeros(1, 3, 32, 32)
    before = conv_params(net)
    layers = find_prunable_layers(net, x)
    keep = select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.7, mode="params")
    slim(net, layers, keep, x)
    after, k = conv_params(net), math.sqrt(0.3)
    widths = [(l.module.in_channels, l.module.out_channels) for l in layers]
    originals = SimpleNet(width=0.5).widths
    for i, (b, a) in enumerate(zip(before, after)):
        c_out = originals[i]
        assert 0 <= widths[i][1] - k * c_out < 1  # kept channels: sqrt(0.3) of the layer, rounded up
        if i == 0:  # the image input is not pruned: only the output side shrinks
            assert abs(a / b - k) <= 1 / c_out
        else:  # input and output both shrink: 30% of the parameters remain, within one channel either side
            c_in = originals[i - 1]
            assert abs(a / b - 0.3) <= k / c_out + k / c_in + 1 / (c_out * c_in), (i, a / b)


def test_channel_mode_and_rounding():
    assert keep_count(64, 0.5, "channels", 1, 1) == 32
    assert keep_count(64, 0.7, "params", 1, 1) == math.ceil(math.sqrt(0.3) * 64) == 36
    assert keep_count(64, 0.7, "params", 1, 8) == 40
    assert keep_count(10, 0.99, "channels", 3, 1) == 3
    assert keep_count(6, 0.5, "channels", 1, 8) == 6
    assert keep_count(10, 0.7, "channels", 1, 1) == 3  # 0.3 * 10 is 3.0000000000000004 in floating point


def test_odd_widths_round_up_alike_and_the_rule_is_monotone():
    # half of 5 and half of 7 both round up (round-half-to-even kept 3 of 5 but 3 of 7)
    assert [keep_count(c, 0.5, "channels", 1, 1) for c in (3, 5, 7, 9)] == [2, 3, 4, 5]
    amounts = [i / 100 for i in range(100)]
    for mode in ("channels", "params"):
        fraction = (lambda a: 1 - a) if mode == "channels" else (lambda a: math.sqrt(1 - a))
        for c in range(1, 70):
            kept = [keep_count(c, a, mode, 1, 1) for a in amounts]
            assert kept == sorted(kept, reverse=True), (mode, c)  # more pruning never keeps more
            assert all(fraction(a) * c - 1e-9 <= n < fraction(a) * c + 1 for a, n in zip(amounts, kept)), (mode, c)
            assert all(keep_count(c, a, mode, 1, 1) <= keep_count(c + 1, a, mode, 1, 1) for a in amounts)


@pytest.mark.parametrize("resource,target", [("params", 0.4), ("flops", 0.5)])
def test_global_pruning_reaches_its_target_within_one_channel(resource, target):
    net = randomized(SimpleNet(width=0.25))
    x = torch.zeros(1, 3, 32, 32)
    layers = find_prunable_layers(net, x)
    scores = {l.name: RandomScore(2)(l) for l in layers}
    cost = PruningCost(net, layers, x)
    dense = cost.dense_params if resource == "params" else cost.dense_flops
    largest = max(cost.removal_cost(l.name, 0)[resource == "flops"] for l in layers)
    keep = select_global(scores, layers, cost, target, resource=resource)
    slim(net, layers, keep, x)
    actual = count_parameters(net) if resource == "params" else count_flops(net, x)
    assert target - largest / dense <= actual / dense <= target
    assert all(len(k) >= 1 for k in keep.values())


def test_global_ranking_removes_lowest_normalised_scores_first():
    net = SimpleNet(width=0.125)
    x = torch.zeros(1, 3, 32, 32)
    layers = find_prunable_layers(net, x)
    scores = {l.name: torch.arange(l.num_channels, dtype=torch.float64) + (100.0 if i else 0.0)
              for i, l in enumerate(layers)}
    keep = select_global(scores, layers, PruningCost(net, layers, x), 0.99, normalization="none")
    pruned = {name: l.num_channels - len(keep[name]) for name, l in zip(keep, layers)}
    assert pruned[layers[0].name] > 0 and sum(pruned.values()) == pruned[layers[0].name]
    assert keep[layers[0].name][0] > 0  # channel 0 (lowest score) went first


def test_bad_pruning_input_is_rejected_before_any_work():
    net = SimpleNet(width=0.125)
    x = torch.zeros(1, 3, 32, 32)
    layers = find_prunable_layers(net, x)
    scores = {l.name: InputL1()(l) for l in layers}
    untouched = {k: v.clone() for k, v in net.state_dict().items()}
    for amount in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            select_layerwise(scores, layers, amount)
    with pytest.raises(KeyError, match="features.99.conv"):
        select_layerwise(scores, layers, 0.5, overrides={"features.99.conv": 0.2})
    with pytest.raises(KeyError, match="prunable layers are"):
        select_global(scores, layers, PruningCost(net, layers, x), 0.5, exclude=["classifier"])
    with pytest.raises(ValueError, match="never emptied"):
        select_layerwise(scores, layers, 0.5, min_channels=0)
    with pytest.raises(ValueError, match="out of reach"):
        select_global(scores, layers, PruningCost(net, layers, x), 0.001, min_channels=1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        select_layerwise(scores, layers, 0.5, overrides={layers[0].name: 1.0})
    assert all(torch.equal(v, untouched[k]) for k, v in net.state_dict().items())  # nothing was touched


def test_overrides_and_exclusions():
    net = SimpleNet(width=0.25)
    layers = find_prunable_layers(net, torch.zeros(1, 3, 32, 32))
    scores = {l.name: InputL1()(l) for l in layers}
    keep = select_layerwise(scores, layers, 0.5, mode="channels", overrides={layers[1].name: 0.25},
                            exclude=[layers[2].name])
    assert len(keep[layers[0].name]) == 8 and len(keep[layers[1].name]) == 24 and len(keep[layers[2].name]) == 32


# --- Lightning: masks through fine-tuning, slimmed checkpoints, DDP fine-tune, export ----------------------------

@pytest.fixture
def trained_digits(digits_baseline) -> Path:
    """``last.ckpt`` of a digits SimpleNet trained for 3 epochs (shared by every test of the run, only read)."""
    return digits_baseline


def test_masks_stay_zero_through_fine_tuning_and_slimmed_checkpoint_round_trips(trained_digits, make_cfg, tmp_path):
    last = trained_digits
    module = ImageClassifier.load_from_checkpoint(last)
    layers = find_prunable_layers(module.net, module.example_input_array)
    keep = select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.5)
    import pytorch_lightning as pl

    from infoprune.datamodules import DigitsDataModule
    dm = DigitsDataModule()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[ChannelMasking(keep, network="net")])
    trainer.fit(module, datamodule=dm)
    assert masked_channels_are_zero(layers, keep)
    masked_acc = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    params_before = count_parameters(module.net)
    slim_classifier(module, keep)
    assert 0.45 < count_parameters(module.net) / params_before < 0.55
    slim_acc = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    assert slim_acc == pytest.approx(masked_acc, abs=1e-6)
    path = save_weights_checkpoint(module, tmp_path / "slim.ckpt")
    reloaded = ImageClassifier.load_from_checkpoint(path)
    widths = {l.name: len(k) for l, k in zip(layers, keep.values())}
    assert module.hparams.structure == widths and reloaded.hparams.structure == widths
    assert [c.weight.shape for c in reloaded.net.modules() if isinstance(c, torch.nn.Conv2d)] == [
        c.weight.shape for c in module.net.modules() if isinstance(c, torch.nn.Conv2d)]
    assert trainer.test(reloaded, datamodule=dm, verbose=False)[0]["test/acc"] == pytest.approx(slim_acc, abs=1e-6)
    # train.py on the slimmed checkpoint without giving any width: test only, then a fresh fine-tune
    tested = train(make_cfg(FAST + [f"init_from={path}", "train=false", "trainer.accelerator=cpu"]))
    assert tested["test/acc"] == pytest.approx(slim_acc, abs=1e-6)
    tuned = train(make_cfg(FAST + [f"init_from={path}", "trainer.max_epochs=1", "trainer.accelerator=cpu"]))
    assert math.isfinite(tuned["test/loss"])
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["hyper_parameters"]["structure"] == widths and resumed["epoch"] == 0
    start = torch.load(path, weights_only=False)["state_dict"]
    assert resumed["state_dict"].keys() == start.keys()  # the slimmed network was fine-tuned, not a fresh one
    assert any(not torch.equal(resumed["state_dict"][k], v) for k, v in start.items() if v.is_floating_point())


def test_checkpoint_that_does_not_fit_the_config_fails_before_any_work(trained_digits, make_cfg, tmp_path):
    last = trained_digits
    with pytest.raises(ValueError, match="does not fit the model config"):
        train(make_cfg(FAST + [f"init_from={last}", "model=lenet5", "model.net.input_size=8", "model.net.padding=2"]))
    with pytest.raises(ValueError, match="does not fit the model config"):
        train(make_cfg(FAST + [f"ckpt_path={last}", "model.net.width=0.5"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(make_cfg(FAST + [f"init_from={tmp_path / 'nope.ckpt'}"]))


def test_export_torchscript_and_onnx(trained_digits, tmp_path):
    last = trained_digits
    module = ImageClassifier.load_from_checkpoint(last)
    layers = find_prunable_layers(module.net, module.example_input_array)
    slim_classifier(module, select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.5))
    x = torch.randn(3, 1, 8, 8)
    expected = module.net.eval()(x)
    scripted = torch.jit.load(str(export_network(module, tmp_path / "net.pt", "torchscript", bake=False)))
    torch.testing.assert_close(scripted(x), expected)
    import onnx
    model = onnx.load(str(export_network(module, tmp_path / "net.onnx", "onnx", bake=False)))
    onnx.checker.check_model(model)
    conv_shapes = [tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 4]
    assert conv_shapes[0][0] == module.hparams.structure[layers[0].name]
    from onnx.reference import ReferenceEvaluator
    (outputs,) = ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(outputs), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown export format"):
        export_network(module, tmp_path / "net.x", "tflite")


@pytest.mark.slow  # 20 s; init_from of a slimmed checkpoint (one process) and train.py under DDP have fast tests
def test_ddp_fine_tune_of_a_slimmed_checkpoint_runs_and_saves(trained_digits, tmp_path):
    last = trained_digits
    module = ImageClassifier.load_from_checkpoint(last)
    layers = find_prunable_layers(module.net, module.example_input_array)
    slim_classifier(module, select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.7))
    path = save_weights_checkpoint(module, tmp_path / "slim.ckpt")
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer=ddp_cpu", "trainer.max_epochs=1", "logger=none",
           "callbacks.rich_progress_bar=null", f"init_from={path}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["hyper_parameters"]["structure"] == module.hparams.structure


def test_batchnorm_recalibration_matches_the_statistics_of_the_data():
    from infoprune.pruning.batchnorm import recalibrate_batchnorm
    torch.manual_seed(0)
    net = randomized(SimpleNet(width=0.125))
    images = torch.randn(96, 3, 32, 32) * 2 + 1
    assert recalibrate_batchnorm(net, lambda: [(b, None) for b in images.split(32)]) == 3
    bn = net.features[0].bn
    with torch.no_grad():
        conv_out = net.features[0].conv(images)
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not net.training and bn.momentum == 0.1  # modes and momentum restored


def test_masked_fine_tune_under_ddp_keeps_masks_and_slimmed_checkpoint_tests_by_path(ddp_pair):
    import pytorch_lightning as pl

    from infoprune.datamodules import DigitsDataModule
    run = ddp_pair / "masked_fine_tune"
    masked = json.loads((run / "masked.json").read_text())
    assert masked["masks_zero"]  # every masked channel of rank 0's network is still zero after the DDP fit
    dm = DigitsDataModule()
    dm.setup()
    # two processes, each half of the training images (the sampler pads an odd count) in whole batches
    assert masked["global_step"] == math.ceil(len(dm.train_set) / 2) // dm.batch_size
    path = run / "slim.ckpt"
    reloaded = ImageClassifier.load_from_checkpoint(path)
    in_memory = torch.load(run / "slim_test_logits.pt")  # the slimmed network as rank 0 held it
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(dm.transform_batch(dm.test_set.images, train=False)), in_memory,
                                   rtol=0, atol=1e-6)
    single = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    by_path = single.test(reloaded, datamodule=DigitsDataModule(), ckpt_path=str(path), weights_only=False)
    expected = (in_memory.argmax(1) == dm.test_set.labels).double().mean().item()
    assert by_path[0]["test/acc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow  # 7-11 s; the masked DDP fine-tune of the externally launched pair is in the default run (above)
def test_masked_fine_tune_under_ddp_spawn_hands_back_masked_weights(trained_digits, tmp_path):
    import pytorch_lightning as pl

    from infoprune.datamodules import DigitsDataModule
    module = ImageClassifier.load_from_checkpoint(trained_digits)
    layers = find_prunable_layers(module.net, module.example_input_array)
    keep = select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[ChannelMasking(keep, network="net")])
    trainer.fit(module, datamodule=DigitsDataModule())
    assert masked_channels_are_zero(layers, keep)  # the weights ddp_spawn hands back are still masked
    slim_classifier(module, keep)
    path = save_weights_checkpoint(module, tmp_path / "slim.ckpt")
    single = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    reloaded = ImageClassifier.load_from_checkpoint(path)
    by_path = single.test(reloaded, datamodule=DigitsDataModule(), ckpt_path=str(path), weights_only=False)
    direct = single.test(module, datamodule=DigitsDataModule())
    assert by_path[0]["test/acc"] == pytest.approx(direct[0]["test/acc"], abs=1e-6)
