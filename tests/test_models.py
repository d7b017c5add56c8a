"""Networks: parameter counts against the published figures; every model config composes and trains a step."""
from __future__ import annotations

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from infoprune.models import VGG16BN, AlexNet, CifarResNet, LeNet5, SimpleNet
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.cost import count_flops, count_parameters


def conv_weights(net: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_lenet5_has_the_caffe_parameter_count():
    assert count_parameters(LeNet5()) == 431_080


def test_simplenet_has_5_48m_conv_weights_and_13_convs():
    net = SimpleNet()
    assert conv_weights(net) == 5_482_176
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 13


def test_alexnet_matches_torchvision():
    assert count_parameters(AlexNet()) == count_parameters(torchvision.models.alexnet()) == 61_100_840


def test_vgg16_bn_cifar_has_14_98m_parameters():
    assert abs(count_parameters(VGG16BN()) - 14.98e6) / 14.98e6 < 1e-3


def test_resnet56_has_0_85m_parameters_with_option_a_shortcut():
    net = CifarResNet(depth=56)
    assert count_parameters(net) == 853_018
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 55
    assert 0.85e6 < count_parameters(CifarResNet(depth=56, shortcut="B")) < 0.86e6


def test_simplenet_runs_on_28x28_grayscale_with_any_class_count():
    net = SimpleNet(num_classes=7, in_channels=1, width=0.25)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_width_multiplier_and_explicit_channels():
    assert SimpleNet(width=0.25).widths[:3] == [16, 32, 32]
    net = SimpleNet(channels=[8] * 13, in_channels=1, num_classes=3)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="13 prunable layers"):
        SimpleNet(channels=[8] * 12)
    with pytest.raises(ValueError, match="at least one channel"):
        SimpleNet(channels=[8] * 12 + [0])


def test_flop_count_of_lenet5_matches_hand_count():
    # conv1: 24*24*20*25 MACs, conv2: 8*8*50*20*25, fc: 800*500 + 500*10; 2 FLOPs per MAC
    macs = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 20 * 25 + 800 * 500 + 500 * 10
    assert count_flops(LeNet5(), torch.zeros(1, 1, 28, 28)) == 2 * macs


MODEL_INPUTS = {"simplenet": (3, 32), "simplenet_digits": (1, 8), "lenet5": (1, 28), "alexnet": (3, 224),
                "vgg16_bn": (3, 32), "resnet56": (3, 32)}


@pytest.mark.parametrize("name", sorted(MODEL_INPUTS))
def test_every_model_config_composes_and_runs_forward_backward(make_cfg, name):
    channels, size = MODEL_INPUTS[name]
    cfg = make_cfg([f"model={name}"])
    model = instantiate(cfg.model, net={"num_classes": 10, "in_channels": channels},
                        input_shape=[channels, size, size])
    x, y = torch.randn(2, channels, size, size), torch.tensor([1, 2])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert optimizer.param_groups[0]["lr"] == cfg.model.optimizer.lr
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters())
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_top5_accuracy_is_tracked_only_beyond_ten_classes():
    from infoprune.models.classifier import ImageClassifier
    net = {"_target_": "infoprune.models.SimpleNet", "width": 0.125, "num_classes": 100, "in_channels": 3}
    many = ImageClassifier(net=net, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    few = ImageClassifier(net=dict(net, num_classes=10), optimizer={"_target_": "torch.optim.SGD", "_partial_": True,
                                                                    "lr": 0.1})
    assert set(many.metrics["test_metrics"].keys()) == {"test/acc", "test/acc_top5"}
    assert set(few.metrics["test_metrics"].keys()) == {"test/acc"}


def test_accuracy_is_the_fraction_of_images_classified_correctly_on_unbalanced_labels():
    from infoprune.models.classifier import ImageClassifier
    net = {"_target_": "infoprune.models.LeNet5", "input_size": 8, "padding": 2, "num_classes": 10}
    model = ImageClassifier(net=net, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    labels = torch.tensor([0] * 8 + [1, 2])
    logits = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 10).float()  # always predicts class 0
    accuracy = model.metrics["test_metrics"]["test/acc"]
    assert accuracy(logits, labels).item() == pytest.approx(0.8)  # 8 of 10 images; per-class recall would give 1/3


def test_channels_last_setting_changes_the_memory_format_not_the_outputs():
    from infoprune.models.classifier import cpu_has_avx2

    cfg = {"_target_": "infoprune.models.SimpleNet", "width": 0.125, "num_classes": 10, "in_channels": 3}
    optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    torch.manual_seed(0)
    plain = ImageClassifier(net=cfg, optimizer=optimizer).eval()
    fast = ImageClassifier(net=cfg, optimizer=optimizer, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    fast.setup("fit")
    conv = next(m for m in fast.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)
    assert ImageClassifier(net=cfg, optimizer=optimizer, channels_last="auto").uses_channels_last() == cpu_has_avx2()
    with pytest.raises(ValueError, match="channels_last"):
        ImageClassifier(net=cfg, optimizer=optimizer, channels_last="sometimes")
