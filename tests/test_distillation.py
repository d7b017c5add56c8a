"""Knowledge distillation while fine-tuning: the soft-target term against a float64 reference, the loss a user's
module trains on under the callback, the callback's errors, and prune.py's finetune.distill (fine-tune and its
resume) and DDP (tests/ddp_pair.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy.special import log_softmax
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from infoprune.callbacks.distillation import KnowledgeDistillation, distillation_loss
from tests.test_prune import run_prune


def kd_by_hand(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """``T^2 * mean_n sum_c p_t (log p_t - log p_s)`` in float64."""
    log_s, log_t = log_softmax(student / temperature, axis=1), log_softmax(teacher / temperature, axis=1)
    return float(temperature ** 2 * (np.exp(log_t) * (log_t - log_s)).sum(1).mean())


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_term_matches_a_float64_reference(temperature):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(7, 10, generator=generator) * 3, torch.randn(7, 10, generator=generator) * 3
    expected = kd_by_hand(student.double().numpy(), teacher.double().numpy(), temperature)
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)


class UserModule(pl.LightningModule):
    """A stranger's module: the network under ``model``, a dict from ``training_step``, frozen weights (lr 0), so
    the losses it returned can be recomputed after the fit."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
        self.returned: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return {"loss": F.cross_entropy(self.model(x), y)}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.returned.append((batch[0], batch[1], float(outputs["loss"])))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def user_data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 3, 4, generator=generator), torch.randint(0, 5, (24,), generator=generator))
    return DataLoader(data, batch_size=8)


def fit(module: pl.LightningModule, callback: pl.Callback, **trainer_args) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **trainer_args)
    trainer.fit(module, train_dataloaders=user_data())
    return trainer


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_a_users_module_trains_on_the_mixed_loss_and_gets_its_training_step_back(alpha):
    module = UserModule()
    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    trainer = fit(module, KnowledgeDistillation(alpha, temperature=3.0, teacher=teacher, network="model"))
    assert len(module.returned) == 3
    for x, y, loss in module.returned:
        with torch.no_grad():
            logits, soft = module.model(x), teacher(x)
        hard = F.cross_entropy(logits, y).item()
        expected = (1 - alpha) * hard + alpha * kd_by_hand(logits.double().numpy(), soft.double().numpy(), 3.0)
        assert loss == pytest.approx(expected, rel=1e-5)
    assert "training_step" not in vars(module)  # the class's own method again
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert "train/distill_loss" in trainer.callback_metrics


def test_without_a_teacher_the_network_as_the_fit_starts_is_copied():
    module = UserModule()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    callback = KnowledgeDistillation(0.5, network="model")
    fit(module, callback)
    # teacher == student at lr 0: the soft term is zero, so the loss is half the hard loss
    for x, y, loss in module.returned:
        assert loss == pytest.approx(0.5 * F.cross_entropy(module.model(x), y).item(), rel=1e-5)
    assert callback.teacher is None  # the copy is dropped with the fit
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())


def test_bad_settings_and_a_network_the_step_never_calls_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeDistillation(1.5)
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeDistillation(0.5, temperature=0)
    with pytest.raises(AttributeError, match="no submodule"):
        fit(UserModule(), KnowledgeDistillation(0.5, network="backbone"))
    module = UserModule()
    module.spare = nn.Linear(12, 5)  # a submodule the training step never calls
    with pytest.raises(RuntimeError, match="no forward call"):
        fit(module, KnowledgeDistillation(0.5, network="spare"))
    assert "training_step" not in vars(module)


def test_a_resumed_fit_without_a_teacher_is_refused(tmp_path):
    module = UserModule()
    trainer = fit(module, KnowledgeDistillation(0.5, teacher=UserModule().model, network="model"))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="pass the teacher"):
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, callbacks=[KnowledgeDistillation(0.5, network="model")])
        trainer.fit(UserModule(), train_dataloaders=user_data(), ckpt_path=tmp_path / "last.ckpt")


def test_prune_py_distils_from_the_unpruned_baseline_and_resumes_with_it(tmp_path, digits_baseline, monkeypatch):
    baseline = digits_baseline
    from infoprune import job

    teachers = []
    original = job.KnowledgeDistillation

    def recording(*args, **kwargs):
        teachers.append(kwargs["teacher"])
        return original(*args, **kwargs)

    monkeypatch.setattr(job, "KnowledgeDistillation", recording)
    overrides = [f"ckpt_path={baseline}", "pruning/metric=l1_in", "pruning.target=0.5", "finetune.max_epochs=3",
                 "finetune.distill.alpha=0.7", "finetune.distill.temperature=2.0", "logger=csv"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prune(tmp_path, overrides + ["+callbacks.crash._target_=tests.test_prune.CrashAtEpochTwo"])
    results = run_prune(tmp_path, overrides)  # resumes the fine-tune at epoch 2, with the baseline read again
    dense = torch.load(baseline, weights_only=False)["state_dict"]
    assert len(teachers) == 2
    for teacher in teachers:  # the unpruned baseline, not the network being fine-tuned
        assert all(torch.equal(dense[f"net.{k}"], v) for k, v in teacher.state_dict().items())
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/distill_loss" in rows[0].split(",")
    assert results["params_remaining"] < 0.6


def test_distillation_off_keeps_the_settings_digest_of_runs_recorded_before_it(make_cfg):
    from omegaconf import open_dict

    from infoprune.run_identity import settings_digest

    with_setting = make_cfg([], name="prune")
    without = make_cfg([], name="prune")
    with open_dict(without):
        del without.finetune.distill
    assert settings_digest(with_setting) == settings_digest(without)
    assert settings_digest(make_cfg(["finetune.distill.alpha=0.5"], name="prune")) != settings_digest(without)


def test_distilled_fine_tune_under_ddp_trains_each_rank_on_its_mixed_loss(ddp_pair):
    record = json.loads((ddp_pair / "distilled_fine_tune" / "losses.json").read_text())
    assert record["world_size"] == 2 and len(record["ranks"]) == 2
    for rank in record["ranks"]:
        assert rank["steps"] == 2
        assert rank["returned"] == pytest.approx(rank["by_hand"], rel=1e-5)
        assert all(soft > 0 for soft in rank["soft"])
