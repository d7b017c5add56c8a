"""Knowledge distillation while training: the loss of every training step mixed with a teacher's soft targets."""
from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015)'s soft-target term ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged
    over the batch (the ``T^2`` keeps its gradients on the scale of the hard-label loss's)."""
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


class KnowledgeDistillation(pl.Callback):
    """Distil a teacher into the module being trained: every training step's loss ``L`` (what the module's
    ``training_step`` returns) becomes ``(1 - alpha) * L + alpha * T^2 * KL(p_teacher || p_student)`` at
    temperature ``T`` (:func:`distillation_loss`).

    The student's logits are the output of the module's forward call (the LightningModule itself, or its submodule
    ``network``) made inside the training step; the teacher gets that call's inputs, on the fly and without
    gradients, so it sees the same augmented images. Nothing is required of the module: the callback wraps its
    ``training_step`` for the fit and logs ``train/distill_loss``.

    ``teacher``: an ``nn.Module`` (kept in eval mode, never trained), or None for a frozen copy of the network as
    the fit starts, which is the unpruned network when pruning callbacks (:class:`ChannelPruning`) prune during the
    same fit. A resumed fit needs ``teacher`` given, since the network it started from is not in the checkpoint.
    Under DDP every process holds its own teacher (not a parameter of the DDP-wrapped module)."""

    def __init__(self, alpha: float = 0.9, temperature: float = 4.0, teacher: nn.Module | None = None,
                 network: str | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"KnowledgeDistillation: alpha={alpha} must lie in [0, 1]")
        if not temperature > 0:
            raise ValueError(f"KnowledgeDistillation: temperature={temperature} must be positive")
        self.alpha, self.temperature, self.teacher, self.network = float(alpha), float(temperature), teacher, network
        self._copy_teacher = teacher is None
        self._call: tuple[tuple, dict, torch.Tensor] | None = None
        self._hook = None
        self._training_step = None

    def student(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.network is None:
            return pl_module
        net = getattr(pl_module, self.network, None)
        if not isinstance(net, nn.Module):
            raise AttributeError(f"KnowledgeDistillation(network={self.network!r}): {type(pl_module).__name__} has "
                                 f"no submodule of that name; its children are "
                                 f"{[n for n, _ in pl_module.named_children()]}")
        return net

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        student = self.student(pl_module)
        if self._copy_teacher:
            if trainer.ckpt_path:
                raise ValueError("KnowledgeDistillation(teacher=None) on a resumed fit: the network the fit started "
                                 "from is not in the checkpoint; pass the teacher")
            self.teacher = frozen_copy(student)
        self.teacher.to(pl_module.device).eval().requires_grad_(False)
        self._hook = student.register_forward_hook(self._record, with_kwargs=True)
        self._training_step = pl_module.training_step
        pl_module.training_step = self._distilled_step(pl_module, self._training_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore(pl_module)

    def restore(self, pl_module: pl.LightningModule) -> None:
        """The module as it was before the fit: its own ``training_step``, no hook; a copied teacher dropped."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._training_step is not None:
            del pl_module.training_step  # the class's method again
            self._training_step = None
        if self._copy_teacher:
            self.teacher = None

    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self._call = (args, kwargs, output)

    def _distilled_step(self, pl_module: pl.LightningModule, training_step):
        def step(*args: Any, **kwargs: Any) -> Any:
            self._call = None
            output = training_step(*args, **kwargs)
            if self._call is None:
                raise RuntimeError(f"KnowledgeDistillation: the training step made no forward call of "
                                   f"{type(self.student(pl_module)).__name__}; set network= to the submodule that "
                                   f"returns the logits")
            inputs, input_kwargs, logits = self._call
            self._call = None
            with torch.no_grad():
                target = self.teacher(*inputs, **input_kwargs)
            soft = distillation_loss(logits, target, self.temperature)
            pl_module.log("train/distill_loss", soft.detach(), on_step=False, on_epoch=True)
            if isinstance(output, dict):
                return {**output, "loss": (1.0 - self.alpha) * output["loss"] + self.alpha * soft}
            return (1.0 - self.alpha) * output + self.alpha * soft
        return step


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` for inference only (a LightningModule's trainer is not copied along)."""
    trainer = getattr(module, "_trainer", None)
    if isinstance(module, pl.LightningModule):
        module._trainer = None
    try:
        return copy.deepcopy(module).eval().requires_grad_(False)
    finally:
        if isinstance(module, pl.LightningModule):
            module._trainer = trainer
