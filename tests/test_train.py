"""train.py: fast_dev_run of every network, a digits run that learns, resume, W&B offline, DDP on CPU, bad input."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hydra.errors import MissingConfigException

from infoprune.datamodules import DataNotFoundError
from infoprune.training import metric_value, train
from tests import data_writers
from tests.conftest import FAST, ROOT, RecordEpochs, compose_config, digits_test_accuracy

FDR = FAST + ["++trainer.fast_dev_run=true", "trainer.accelerator=cpu"]


def test_fast_dev_run_simplenet_and_lenet5_on_digits(make_cfg):
    for model in ("model=simplenet_digits", "model=lenet5"):
        extra = ["model.net.input_size=8", "model.net.padding=2"] if model.endswith("lenet5") else []
        metrics = train(make_cfg(FDR + [model] + extra))
        assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["train/loss_step"])


@pytest.mark.parametrize("model", ["vgg16_bn", "resnet56"])
def test_fast_dev_run_cifar_networks_on_cifar10_files(make_cfg, tmp_path, model):
    data_writers.write_cifar10(tmp_path / "data")
    metrics = train(make_cfg(FDR + [f"model={model}", "datamodule=cifar10", f"datamodule.data_dir={tmp_path / 'data'}",
                                    "datamodule.batch_size=8"]))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_fast_dev_run_alexnet_on_image_folder(make_cfg, tmp_path):
    data_writers.write_image_folder(tmp_path / "data" / "imagenet", {"train": 4, "val": 2}, classes=3, size=72)
    metrics = train(make_cfg(FDR + ["model=alexnet", "datamodule=imagenet", f"datamodule.data_dir={tmp_path / 'data'}",
                                    "datamodule.num_classes=3", "datamodule.image_size=64", "datamodule.num_workers=0",
                                    "datamodule.batch_size=4", "datamodule.val_fraction=0.25"]))
    assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["train/loss_step"])


def test_digits_default_learns_and_returns_the_optimized_metric(make_cfg, tmp_path):
    cfg = make_cfg(FAST + ["trainer.max_epochs=10", "trainer.accelerator=cpu"])
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.8  # chance is 0.1; measured 0.955-0.989 (seeds 0-4, 1 and 2 threads)
    assert metric_value(metrics, cfg.optimized_metric) == metrics["val/acc"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "run" / "config_resolved.yaml").exists()
    with pytest.raises(KeyError, match="was not logged"):
        metric_value(metrics, "val/nonexistent")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_digits_learning_margin_holds_for_every_seed(make_cfg, seed):
    """The margin of the learning test above, over seeds (docs/testing.md; run with 1 and 2 threads)."""
    metrics = train(make_cfg(FAST + ["trainer.max_epochs=10", "trainer.accelerator=cpu", f"seed={seed}"]))
    assert metrics["test/acc"] > 0.8


def test_train_false_evaluates_a_checkpoint_on_val_and_test(make_cfg, tmp_path):
    trained = train(make_cfg(FAST + ["trainer.max_epochs=2", "trainer.accelerator=cpu"]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(FAST + ["trainer.accelerator=cpu", "train=false", f"ckpt_path={last}"])
    metrics = train(cfg)
    assert metric_value(metrics, cfg.optimized_metric) == pytest.approx(trained["val/acc"])  # the last epoch's val
    assert metrics["test/acc"] == pytest.approx(digits_test_accuracy(last), abs=1.5 / 359)  # by hand, one image slack


def test_resume_from_last_checkpoint_runs_only_the_remaining_epochs(make_cfg, tmp_path):
    record = ["+callbacks.record._target_=tests.conftest.RecordEpochs"]
    train(make_cfg(FAST + ["trainer.max_epochs=2", "trainer.accelerator=cpu", "test=false"]))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 1
    RecordEpochs.epochs.clear()
    train(make_cfg(FAST + record + ["trainer.max_epochs=3", "trainer.accelerator=cpu", "test=false",
                                    f"ckpt_path={last}"]))
    assert RecordEpochs.epochs == [2]  # a fit restarted from scratch would run epochs 0, 1 and 2
    resumed = torch.load(last, weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == saved["global_step"] * 3 // 2


def test_a_fit_resumed_after_a_crash_ends_with_the_uninterrupted_fits_weights(tmp_path):
    run = FAST + ["trainer.max_epochs=3", "trainer.accelerator=cpu", "test=false", "seed=0"]
    crash = ["+callbacks.crash._target_=tests.test_prune.CrashAtEpochTwo"]

    def final_weights(out) -> dict[str, torch.Tensor]:
        return torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    train(compose_config("train", run, tmp_path / "whole"))
    whole = final_weights(tmp_path / "whole")
    for kept, extra in ((True, []), (False, ["~callbacks.random_state"])):
        out = tmp_path / f"resumed_{kept}"
        with pytest.raises(RuntimeError, match="simulated crash"):  # after epochs 0 and 1 were checkpointed
            train(compose_config("train", run + extra + crash, out))
        train(compose_config("train", run + extra + [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"], out))
        resumed = final_weights(out)
        same = all(torch.equal(resumed[k], whole[k]) for k in whole)
        assert same == kept, f"random states kept: {kept}"  # without them, epoch 2 replays epoch 0's draws


def test_wandb_logger_without_api_key_logs_offline(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    overrides = [o for o in FDR if o != "logger=none"] + ["logger=wandb"]
    train(make_cfg(overrides))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_unknown_model_or_datamodule_name_is_a_clear_error(make_cfg):
    with pytest.raises(MissingConfigException, match="model"):
        make_cfg(["model=resnet1000"])
    with pytest.raises(MissingConfigException, match="datamodule"):
        make_cfg(["datamodule=nosuchdata"])


def test_missing_data_fails_before_training_and_writes_no_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(FAST + ["datamodule=mnist", f"datamodule.data_dir={tmp_path / 'empty'}"])
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_data_dir_that_is_a_file_fails_before_training(make_cfg, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        train(make_cfg(FAST + ["datamodule=mnist", f"datamodule.data_dir={tmp_path / 'afile'}"]))
    assert not (tmp_path / "run").exists()  # no checkpoint, log or config written: nothing ran


def test_ddp_on_cpu_with_two_processes_trains_and_checkpoints(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "train.py"), "trainer=ddp_cpu", "trainer.max_epochs=2", "logger=csv",
           "callbacks.rich_progress_bar=null", "++trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}",
           f"paths.log_dir={tmp_path / 'logs'}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert "test/acc" in result.stdout
