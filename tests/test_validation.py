"""Every bad setting fails before any work: the error names the setting, comes within seconds, no Trainer ran and
nothing was written in the run directory."""
from __future__ import annotations

import time

import pytest
import pytorch_lightning as pl
import torch

from infoprune.pipeline import prune
from infoprune.training import train
from infoprune.validation import ConfigError
from tests.conftest import FAST, compose_config

CPU = FAST + ["trainer.accelerator=cpu"]

# (overrides, the setting the error must name); prune.py without ckpt_path would train a baseline first
BAD_PRUNE = [
    (["pruning.target=1.0"], "pruning.target"),
    (["pruning.target=-0.1"], "pruning.target"),
    (["pruning.stats.bins=1"], "pruning.stats.bins"),
    (["pruning.stats.bins=abc"], "pruning.stats.bins"),
    (["pruning.stats.tap=foo"], "pruning.stats.tap"),
    (["pruning.stats.binning=quantile"], "pruning.stats.binning"),
    (["pruning.stats.num_images=0"], "pruning.stats.num_images"),
    (["pruning.stats.num_images=100"], "pruning.stats.num_images"),  # fewer than one batch of 256
    (["pruning.stats.num_images=100000"], "pruning.stats.num_images"),  # more than the training split
    (["pruning.stats.batch_size=0"], "pruning.stats.batch_size"),
    (["pruning.stats.fine_bins=4"], "pruning.stats.fine_bins"),
    (["pruning.scope.min_channels=0"], "pruning.scope.min_channels"),
    (["pruning.scope.round_to=0"], "pruning.scope.round_to"),
    (["pruning.scope.mode=weights"], "pruning.scope.mode"),
    (["+pruning.scope.overrides.nolayer=0.5"], "pruning.scope.overrides"),
    (["++pruning.scope.overrides={features.0.conv:1.5}"], "pruning.scope.overrides.features.0.conv"),
    (["pruning.scope.exclude=[nolayer]"], "pruning.scope.exclude"),
    (["pruning.scope.name=sideways"], "pruning.scope.name"),
    (["pruning/scope=global", "pruning.scope.resource=energy"], "pruning.scope.resource"),
    (["pruning/scope=global", "pruning.scope.normalization=zscore"], "pruning.scope.normalization"),
    (["pruning/scope=global", "pruning.target=0.99", "pruning.scope.min_channels=8"], "pruning.target"),
    (["pruning/schedule=iterative", "pruning.schedule.steps=0"], "pruning.schedule.steps"),
    (["pruning/schedule=iterative", "pruning.schedule.finetune_epochs=-1"], "pruning.schedule.finetune_epochs"),
    (["pruning/schedule=layer_by_layer", "pruning/scope=global"], "pruning.schedule"),
    (["pruning/metric=cep", "pruning/schedule=layer_by_layer"], "pruning.schedule"),
    (["pruning/metric=hcep", "pruning.metric.hcep_fraction=0.5"], "pruning.metric.hcep_fraction"),
    (["pruning/metric=cep", "pruning.metric.threshold=median"], "pruning.metric.threshold"),
    (["pruning/metric=cep", "pruning.metric.order=3"], "pruning.metric.order"),
    (["pruning/metric=cep", "pruning.exclude_layers=[nolayer]"], "pruning.exclude_layers"),
    (["pruning/metric=cep", "pruning.stats.num_images=0"], "pruning.stats.num_images"),
    (["pruning/metric=wmi", "pruning.metric.variant=l2"], "pruning.metric"),
    (["pruning.recalibrate_bn_images=-5"], "pruning.recalibrate_bn_images"),
    (["finetune.max_epochs=-1"], "finetune.max_epochs"),
    (["finetune.lr=0"], "finetune.lr"),
    (["scheduler=multistep"], "model.scheduler"),  # milestones are mandatory
    (["finetune.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true}"], "finetune.scheduler"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["+logger.extra._target_=no.such.Logger"], "logger.extra._target_"),
    (["model.net.pool_after=[0,1,2,3,4,5,6]"], "model.net"),
    (["threads=0"], "threads"),
    (["threads=many"], "threads"),  # 8x8 digits pooled below 1x1
]
if not torch.cuda.is_available():
    BAD_PRUNE.append((["trainer=gpu"], "trainer.accelerator"))

BAD_TRAIN = [
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["callbacks=channel_scores", "pruning.stats.bins=1"], "pruning.stats.bins"),
    (["callbacks=channel_scores", "pruning.stats.tap=foo"], "pruning.stats.tap"),
    (["+callbacks.extra._target_=no.such.Callback"], "callbacks.extra._target_"),
    (["scheduler=multistep"], "model.scheduler"),
]
if not torch.cuda.is_available():
    BAD_TRAIN.append((["trainer=ddp"], "trainer.accelerator"))


@pytest.fixture
def no_trainer_runs(monkeypatch):
    """Any Trainer loop (fit, validate, test) fails the test: validation must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a Trainer loop ran before the config was checked")

    for loop in ("fit", "validate", "test"):
        monkeypatch.setattr(pl.Trainer, loop, refuse)


def base(overrides: list[str]) -> list[str]:
    """The fast CPU settings, except when the case chooses the trainer itself."""
    return (FAST if any(o.startswith("trainer=") for o in overrides) else CPU) + overrides


def assert_rejected(run, cfg, key: str, out) -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert error.value.key == key and str(error.value).startswith(f"{key}: ")
    assert time.perf_counter() - started < 30  # seconds, not a baseline's epochs (digits: well under one)
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


@pytest.mark.parametrize(("overrides", "key"), BAD_PRUNE, ids=[" ".join(o) for o, _ in BAD_PRUNE])
def test_bad_prune_setting_is_named_before_any_work(tmp_path, no_trainer_runs, overrides, key):
    out = tmp_path / "run"
    assert_rejected(prune, compose_config("prune", base(overrides), out), key, out)


@pytest.mark.parametrize(("overrides", "key"), BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_setting_is_named_before_any_work(tmp_path, no_trainer_runs, overrides, key):
    out = tmp_path / "run"
    assert_rejected(train, compose_config("train", base(overrides), out), key, out)


def test_the_default_configs_pass_validation(tmp_path, monkeypatch):
    """The checks reject only bad values: the defaults reach the first Trainer loop."""
    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(pl.Trainer, "fit", reached)
    for name in ("prune", "train"):
        with pytest.raises(Reached):
            (prune if name == "prune" else train)(compose_config(name, CPU, tmp_path / name))
