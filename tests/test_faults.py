"""Corrupt and hostile inputs get a one-line error naming the file and what is wrong, before any training; a failed
write keeps what was saved before it. docs/testing.md lists every fault tried and what it gets."""
from __future__ import annotations

import errno
import json
import pathlib
import shutil

import pytest
import torch

from infoprune.builders import read_checkpoint
from infoprune.datamodules import CIFAR10JPEGDataModule, DataCorruptError, MNISTDataModule
from infoprune.io import atomic_write_text
from infoprune.pipeline import prune
from infoprune.training import train
from infoprune.validation import ConfigError
from tests import data_writers
from tests.conftest import FAST, compose_config, digits_test_accuracy
from tests.test_prune import QUICK


def altered_checkpoint(source: pathlib.Path, out: pathlib.Path, change) -> pathlib.Path:
    """A copy of checkpoint ``source`` at ``out`` after ``change(contents)``."""
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, out)
    return out


def nan_first_weight(checkpoint: dict) -> None:
    next(iter(checkpoint["state_dict"].values()))[0] = float("nan")


def unknown_group(checkpoint: dict) -> None:
    checkpoint["hyper_parameters"]["structure"] = {"features.99.conv": 3}


def fails_before_any_work(tmp_path, overrides: list[str], error, match: str) -> None:
    """``prune.py`` with ``overrides`` raises ``error`` matching ``match`` and leaves nothing in its output folder
    but the folder itself."""
    with pytest.raises(error, match=match):
        prune(compose_config("prune", QUICK + overrides, tmp_path / "run"))
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file()]


def test_a_truncated_checkpoint_is_named_before_any_work(tmp_path, digits_baseline):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(digits_baseline.read_bytes()[:5000])
    fails_before_any_work(tmp_path, [f"ckpt_path={truncated}"], ValueError,
                          f"checkpoint {truncated} cannot be read: the file is truncated or not a PyTorch checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        train(compose_config("train", FAST + [f"init_from={truncated}", "train=false"], tmp_path / "train"))


@pytest.mark.parametrize("change, match", [
    (nan_first_weight, r"has NaN or Inf weights in 1 tensor\(s\), e.g. net.features.0.conv.weight"),
    (unknown_group, r": the structure record names channel group\(s\) \['features.99.conv'\] this network does not "
                    r"have"),
], ids=["nan-weights", "unknown-group"])
def test_a_checkpoint_with_bad_contents_is_named_before_any_work(tmp_path, digits_baseline, change, match):
    bad = altered_checkpoint(digits_baseline, tmp_path / "bad.ckpt", change)
    fails_before_any_work(tmp_path, [f"ckpt_path={bad}"], ValueError, f"checkpoint {bad}.*{match}")


def test_a_checkpoint_holding_arbitrary_objects_is_not_unpickled(tmp_path):
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": pathlib.PurePosixPath("/")}, hostile)  # any non-tensor object
    with pytest.raises(ValueError, match=f"checkpoint {hostile} holds objects other than tensors and plain values"):
        read_checkpoint(str(hostile))
    torch.save({"epoch": 3}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        read_checkpoint(str(tmp_path / "plain.ckpt"))


def test_a_broken_jpeg_is_named_before_any_training(tmp_path):
    data_writers.write_image_folder(tmp_path / "cifar10-jpeg", {"train": 3, "test": 2}, classes=10)
    broken = sorted((tmp_path / "cifar10-jpeg" / "train").rglob("*.jpg"))[4]
    broken.write_bytes(broken.read_bytes()[:40])  # the header and nothing after it
    dm = CIFAR10JPEGDataModule(data_dir=tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.0)
    with pytest.raises(DataCorruptError, match=f"{broken} is not a readable image"):
        dm.setup()
    overrides = FAST + ["datamodule=cifar10_jpeg", f"datamodule.data_dir={tmp_path}", "model=simplenet",
                        "model.net.width=0.125", "trainer.accelerator=cpu", "datamodule.val_fraction=0.0",
                        f"datamodule.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(DataCorruptError, match=f"{broken} is not a readable image"):
        train(compose_config("train", overrides, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step ran
    assert not list((tmp_path / "cache").glob("*"))  # and no half-decoded cache is left to be trusted later


def test_a_broken_imagenet_file_is_named_when_the_loader_reaches_it(tmp_path):
    from infoprune.datamodules import ImageNetDataModule

    data_writers.write_image_folder(tmp_path / "imagenet", {"train": 4, "val": 2}, classes=3, size=72)
    broken = sorted((tmp_path / "imagenet" / "val").rglob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:60])
    dm = ImageNetDataModule(data_dir=tmp_path, num_classes=3, image_size=64, num_workers=0, batch_size=2)
    dm.setup()  # decoded lazily: the files are opened as the loader reaches them
    with pytest.raises(DataCorruptError, match=f"{broken} is not a readable image"):
        for _ in dm.test_dataloader():
            pass


def test_a_truncated_mnist_file_is_named_before_any_work(tmp_path):
    data_writers.write_mnist(tmp_path)
    images = tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    MNISTDataModule(data_dir=tmp_path).check_files()  # whole files pass
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataCorruptError, match=f"{images} has .* bytes where its header \\(100 x 28 x 28\\) needs "
                                               f"78416: the file is truncated"):
        MNISTDataModule(data_dir=tmp_path).check_files()
    images.write_bytes(b"not an idx file")
    with pytest.raises(DataCorruptError, match="is not an IDX file"):
        train(compose_config("train", FAST + ["datamodule=mnist", f"datamodule.data_dir={tmp_path}", "model=lenet5"],
                             tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_output_dir_that_cannot_be_written_is_named_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    cfg = compose_config("prune", QUICK, tmp_path / "unused")
    cfg.paths.output_dir = str(tmp_path / "a_file" / "run")  # under a file: no process can create it, root or not
    with pytest.raises(ConfigError, match="paths.output_dir: .*a_file/run is not a folder this job can write in"):
        prune(cfg)


def test_a_failed_write_keeps_the_earlier_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"done": true}')

    def full_disk(self, text):  # a few bytes reach the disk, then it is full
        with open(self, "w") as handle:
            handle.write(text[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    with pytest.raises(OSError, match=f"could not write {target}: no space left on the device; any earlier file"):
        atomic_write_text(target, '{"done": false}')
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"done": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_full_disk_at_the_end_of_a_job_loses_nothing_and_the_rerun_finishes_it(tmp_path, digits_baseline,
                                                                                  monkeypatch):
    overrides = [f"ckpt_path={digits_baseline}", "pruning/metric=l1_in", "pruning.target=0.5"]
    save = torch.save

    def disk_full_for_the_final_checkpoint(obj, f, *args, **kwargs):
        if "final.ckpt" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_for_the_final_checkpoint)
    with pytest.raises(OSError, match="final.ckpt: no space left on the device"):
        prune(compose_config("prune", QUICK + overrides, tmp_path / "run"))
    monkeypatch.undo()
    run = tmp_path / "run"
    kept = {p.name for p in run.iterdir()}
    assert {"pruned.ckpt", "state.json"} <= kept and not {"final.ckpt", "results.json"} & kept
    assert not list(run.rglob(".*.tmp*"))  # no temporary file left behind
    read_checkpoint(str(run / "pruned.ckpt"))  # what was saved before the failure is whole
    last = run / "finetune" / "checkpoints" / "last.ckpt"
    finished_epochs = read_checkpoint(str(last))["epoch"]
    results = prune(compose_config("prune", QUICK + overrides, run))  # space freed: the same command again
    assert read_checkpoint(str(last))["epoch"] == finished_epochs  # the fine-tune was not run again
    assert results["acc_finetuned"] == pytest.approx(digits_test_accuracy(run / "final.ckpt"), abs=1 / 359)
    shutil.rmtree(run)


def test_lightning_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from infoprune.checkpoint_io import AtomicCheckpointIO
    from infoprune.training import build_trainer

    trainer = build_trainer(compose_config("train", FAST + ["trainer.accelerator=cpu"], tmp_path / "run"))
    writer = trainer.strategy.checkpoint_io
    assert isinstance(writer, AtomicCheckpointIO)  # what every configured Trainer writes checkpoints with
    last = tmp_path / "last.ckpt"
    writer.save_checkpoint({"epoch": 1}, last)
    save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK")  # the first bytes of a zip archive, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint({"epoch": 2}, last)
    monkeypatch.setattr(torch, "save", save)
    assert torch.load(last, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["last.ckpt"]
