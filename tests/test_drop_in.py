"""ChannelPruning in a stranger's training script: a LightningModule with no ``net``, no ``example_input_array``,
a DataModule with no ``calibration_batches``; one shot and AGP; slimming mid-fit with the optimizer carried over
(checked by hand); the saved network reloads; bad settings fail before any training step; DDP equals one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from infoprune.callbacks.cep import ConnectionPruning
from infoprune.callbacks.pruning import ChannelPruning, load_slimmed
from infoprune.pruning.cep import ConnectionCriterion
from infoprune.pruning.metrics import InputL1, MutualInformation
from infoprune.pruning.schedule import schedule_steps
from infoprune.pruning.selection import keep_count
from tests.conftest import ROOT, RecordEpochs
from tests.test_prune import CrashAtEpochTwo


class Tiny(pl.LightningModule):
    """A plain module: two conv blocks, global pooling, a linear head; SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.conv2, self.bn2 = nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Shapes(pl.LightningDataModule):
    """Generated images whose label is the brightest colour channel (learnable, no files)."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(192, 3, 8, 8, generator=g)
        labels = images.mean(dim=(2, 3)).argmax(1)
        return DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True)


def fit(pruning: ChannelPruning, epochs: int = 3, extra: list | None = None,
        after: list | None = None) -> tuple[pl.Trainer, Tiny]:
    """Fit ``Tiny`` on ``Shapes`` with ``extra`` callbacks before the pruning callback and ``after`` ones after it."""
    torch.manual_seed(0)
    module = Tiny()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=[*(extra or []), pruning, *(after or [])],
                         logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=Shapes())
    return trainer, module


def test_one_shot_in_a_foreign_module_slims_at_the_end_and_reloads(tmp_path):
    path = tmp_path / "slim.pt"
    pruning = ChannelPruning(InputL1(), amount=0.5, mode="channels", save_path=str(path),
                             stats={"num_images": 64, "batch_size": 16})
    _, module = fit(pruning, epochs=2)
    assert pruning.structure == {"conv1": 6, "conv2": 8}
    assert (module.conv1.out_channels, module.conv2.in_channels, module.fc.in_features) == (6, 6, 8)
    fresh = Tiny()
    fresh.example_input_array = torch.zeros(1, 3, 8, 8)
    load_slimmed(fresh, path)
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), module.eval()(x), rtol=0, atol=0)


class RecordWidths(pl.Callback):
    """Channels kept (masked filters count as removed) at the end of every epoch."""

    def __init__(self, pruning: ChannelPruning) -> None:
        self.pruning, self.kept = pruning, []

    def on_train_epoch_end(self, trainer, pl_module):
        zero = lambda w: int((w.flatten(1).abs().sum(1) != 0).sum())  # noqa: E731
        self.kept.append((zero(pl_module.conv1.weight), zero(pl_module.conv2.weight)))


def test_agp_with_a_data_driven_metric_reaches_its_target_step_by_step():
    steps = schedule_steps("agp", 0.75, 0, 2, 3)
    assert [e for e, _ in steps] == [0, 1, 2] and steps[-1][1] == pytest.approx(0.75)
    assert steps[0][1] == pytest.approx(0.75 * (1 - (2 / 3) ** 3))
    pruning = ChannelPruning(MutualInformation(), amount=0.75, mode="channels", schedule="agp", start_epoch=0,
                             end_epoch=2, steps=3, stats={"num_images": 96, "batch_size": 32, "bins": 8})
    record = RecordWidths(pruning)
    fit(pruning, epochs=4, extra=[record])
    expected = [(keep_count(12, a, "channels", 1, 1), keep_count(16, a, "channels", 1, 1)) for _, a in steps]
    assert record.kept[:3] == expected  # masks hold the removed channels at zero through training
    assert pruning.structure == {"conv1": expected[-1][0], "conv2": expected[-1][1]}


class OptimizerProbe(pl.Callback):
    """The optimizer's momentum by parameter name at the start of ``epoch`` (before or after the pruning callback
    runs, by its place in the callback list)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.momentum, self.params = epoch, None, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            optimizer = trainer.optimizers[0]
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self.params = [p for g in optimizer.param_groups for p in g["params"]]
            self.momentum = {names[id(p)]: optimizer.state[p]["momentum_buffer"].clone() for p in self.params
                             if id(p) in names}


def test_slimming_mid_fit_carries_the_optimizer_and_its_momentum():
    pruning = ChannelPruning(InputL1(), amount=0.5, mode="channels", slim_epoch=1)
    before, after = OptimizerProbe(1), OptimizerProbe(1)
    trainer, module = fit(pruning, epochs=3, extra=[before], after=[after])
    k1, k2 = pruning.keep["conv1"], pruning.keep["conv2"]
    m = before.momentum
    by_hand = {"conv1.weight": m["conv1.weight"][k1], "conv1.bias": m["conv1.bias"][k1],
               "bn1.weight": m["bn1.weight"][k1], "bn1.bias": m["bn1.bias"][k1],
               "conv2.weight": m["conv2.weight"][k2][:, k1], "conv2.bias": m["conv2.bias"][k2],
               "bn2.weight": m["bn2.weight"][k2], "bn2.bias": m["bn2.bias"][k2],
               "fc.weight": m["fc.weight"][:, k2], "fc.bias": m["fc.bias"]}
    assert set(map(id, after.params)) == set(map(id, module.parameters()))  # exactly the new parameters
    assert after.momentum.keys() == by_hand.keys()
    for name, expected in by_hand.items():
        torch.testing.assert_close(after.momentum[name], expected, rtol=0, atol=0)
    final = trainer.optimizers[0].state[module.conv2.weight]["momentum_buffer"]
    assert final.shape == module.conv2.weight.shape and not torch.equal(final, by_hand["conv2.weight"])  # trained on


class RecordDensity(pl.Callback):
    """Fraction of nonzero weights of the conv and linear layers at the end of every epoch."""

    def __init__(self) -> None:
        self.density = []

    def on_train_epoch_end(self, trainer, pl_module):
        weights = [m.weight for m in pl_module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.density.append(sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights))


@pytest.mark.parametrize("schedule", ["oneshot", "agp"])
def test_cep_in_a_foreign_module_reaches_its_density_and_saves_permanent_zeros(tmp_path, schedule):
    path = tmp_path / "sparse.pt"
    pruning = ConnectionPruning(ConnectionCriterion("cep"), amount=0.8, schedule=schedule, start_epoch=0,
                                end_epoch=2, steps=3, stats={"num_images": 64, "batch_size": 32}, save_path=str(path))
    record = RecordDensity()
    _, module = fit(pruning, epochs=3, extra=[record])
    if schedule == "agp":
        expected = [1 - a for _, a in schedule_steps("agp", 0.8, 0, 2, 3)]
        assert record.density == pytest.approx(expected, abs=2e-3) and record.density[0] > record.density[1]
    assert record.density[-1] == pytest.approx(0.2, abs=2e-3)  # masked weights stay zero through training
    assert not any(name.endswith("_orig") for name, _ in module.named_parameters())  # masks folded in
    fresh = Tiny()
    fresh.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    x = torch.rand(5, 3, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), module.eval()(x), rtol=0, atol=0)


def fit_interrupted_then_resumed(tmp_path, make_pruning, epochs: int = 4) -> tuple[pl.Callback, Tiny, list[int]]:
    """Fit ``Tiny`` with ``make_pruning()`` checkpointing every epoch, crash at the start of epoch 2, then resume
    from ``last.ckpt`` with a fresh module and a fresh callback, the way a rerun script would. Returns the second
    callback, module, and the epochs the second fit trained."""
    def run(extra: list, ckpt_path=None) -> tuple[pl.Callback, Tiny]:
        torch.manual_seed(0)
        module, pruning = Tiny(), make_pruning()
        last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None, enable_version_counter=False)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=[pruning, last, *extra], logger=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, datamodule=Shapes(), ckpt_path=ckpt_path)
        return pruning, module

    with pytest.raises(RuntimeError, match="simulated crash"):
        run([CrashAtEpochTwo()])
    RecordEpochs.epochs.clear()
    pruning, module = run([RecordEpochs()], ckpt_path=tmp_path / "last.ckpt")
    return pruning, module, list(RecordEpochs.epochs)


@pytest.mark.parametrize("slim_epoch", [1, 3])  # resumed after slimming; between the pruning step and slimming
def test_an_interrupted_fit_with_channel_pruning_resumes_from_its_checkpoint(tmp_path, slim_epoch):
    pruning, module, epochs = fit_interrupted_then_resumed(
        tmp_path, lambda: ChannelPruning(InputL1(), amount=0.5, mode="channels", slim_epoch=slim_epoch))
    assert epochs == [2, 3]  # resumed, not restarted
    assert pruning.structure == {"conv1": 6, "conv2": 8}
    assert (module.conv1.out_channels, module.conv2.in_channels, module.fc.in_features) == (6, 6, 8)


def test_an_interrupted_fit_with_connection_pruning_resumes_with_its_masks(tmp_path):
    record = RecordDensity()
    pruning, module, epochs = fit_interrupted_then_resumed(
        tmp_path, lambda: ConnectionPruning(ConnectionCriterion("magnitude"), amount=0.8, schedule="equal",
                                            start_epoch=0, end_epoch=3, steps=2))
    assert epochs == [2, 3]
    record.on_train_epoch_end(None, module)
    assert record.density == pytest.approx([0.2], abs=2e-3)  # the step at epoch 3 built on the restored masks
    assert not any(name.endswith("_orig") for name, _ in module.named_parameters())


class NoStep(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise AssertionError("a training step ran")


@pytest.mark.parametrize("settings, message", [
    ({"network": "backbone"}, "has no submodule of that name"),
    ({"schedule": "agp", "start_epoch": 0, "end_epoch": 5, "steps": 3}, "max_epochs=3"),
])
def test_bad_settings_fail_at_fit_start_before_any_step(settings, message):
    with pytest.raises((AttributeError, ValueError), match=message):
        fit(ChannelPruning(InputL1(), **settings), epochs=3, extra=[NoStep()])


def test_a_schedule_without_steps_fails_at_construction():
    with pytest.raises(ValueError, match="at least one step"):
        ChannelPruning(InputL1(), schedule="equal", steps=0)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        ChannelPruning(InputL1(), amount=1.0)


def test_the_worked_example_under_ddp_equals_one_process_and_trains_on_after_slimming(tmp_path, monkeypatch,
                                                                                      ddp_pair):
    import runpy

    from tests.ddp_pair import EXAMPLE, example_args
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *example_args(tmp_path / "report.json", 1)])
    for seeded in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by the example's seed_everything(0): restored after
        monkeypatch.setenv(seeded, "0")
    runpy.run_path(str(EXAMPLE), run_name="__main__")  # one process, in this one
    single = json.loads((tmp_path / "report.json").read_text())
    ddp = json.loads((ddp_pair / "worked_example" / "report.json").read_text())
    assert ddp["structure"] == single["structure"] and ddp["structure"]["conv1"] < 64
    for name, scores in single["scores"].items():
        torch.testing.assert_close(torch.tensor(ddp["scores"][name]), torch.tensor(scores), rtol=0, atol=1e-12)
    assert ddp["global_step"] * 2 == single["global_step"] == 16  # every epoch ran, on half the batches per process
    assert ddp["optimizer_holds_the_parameters"] and single["optimizer_holds_the_parameters"]


@pytest.mark.slow  # 17 s; the example in an externally launched pair is in the default run (above)
def test_the_worked_example_from_the_command_line_under_ddp_equals_one_process(tmp_path, monkeypatch):
    import runpy

    from tests.ddp_pair import EXAMPLE, example_args
    result = subprocess.run([sys.executable, str(EXAMPLE), *example_args(tmp_path / "report2.json", 2)],
                            capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *example_args(tmp_path / "report1.json", 1)])
    for seeded in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # set by the example's seed_everything(0): restored after
        monkeypatch.setenv(seeded, "0")
    runpy.run_path(str(EXAMPLE), run_name="__main__")  # one process, in this one
    single, ddp = (json.loads((tmp_path / f"report{n}.json").read_text()) for n in (1, 2))
    assert ddp["structure"] == single["structure"] and ddp["structure"]["conv1"] < 64
    for name, scores in single["scores"].items():
        torch.testing.assert_close(torch.tensor(ddp["scores"][name]), torch.tensor(scores), rtol=0, atol=1e-12)
    assert ddp["global_step"] * 2 == single["global_step"] == 16  # every epoch ran, on half the batches per process
