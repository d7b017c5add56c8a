"""When pruning happens inside a fit: a schedule of ``(epoch, cumulative amount)`` steps, checked against the fit,
and the resumption of a fit interrupted after a step (the network given its pruned form before the checkpoint's
weights load)."""
from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from infoprune.callbacks.calibration import CalibratedCallback
from infoprune.pruning.schedule import schedule_steps
from infoprune.pruning.selection import check_amount


class ScheduledPruning(CalibratedCallback):
    """What the pruning callbacks share: the network, its example input and calibration images
    (:class:`~infoprune.callbacks.calibration.CalibratedCallback`), and a schedule of ``(epoch, cumulative amount)`` steps checked against the
    fit before any training step. Subclasses implement ``prune_step`` and ``finish``."""

    def __init__(self, amount: float, schedule: str, start_epoch: int, end_epoch: int | None, steps: int,
                 network: str | None, stats: dict | None, calibration_dataloader: DataLoader | None) -> None:
        check_amount(amount)
        self.steps = schedule_steps(schedule, amount, start_epoch,
                                    start_epoch if end_epoch is None else end_epoch, steps)
        super().__init__(network, stats, calibration_dataloader)

    # -- resuming an interrupted fit ------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Let a fit resume from a checkpoint written after pruning: Lightning calls the module's
        ``on_load_checkpoint`` just before it loads the checkpoint's weights, so that hook is wrapped to give the
        network the checkpoint's pruned form first (:meth:`restore_form`)."""
        hook = wrapped = pl_module.on_load_checkpoint
        while hasattr(wrapped, "restores_state_of"):  # wrapped before (an earlier fit of this module)
            if wrapped.restores_state_of == self.state_key:
                return
            wrapped = wrapped.__wrapped__
        if stage != "fit":
            return

        def on_load_checkpoint(checkpoint: dict) -> None:
            saved = (checkpoint.get("callbacks") or {}).get(self.state_key)
            if saved:
                self.restore_form(pl_module, checkpoint, saved)
            hook(checkpoint)

        on_load_checkpoint.restores_state_of, on_load_checkpoint.__wrapped__ = self.state_key, hook
        pl_module.on_load_checkpoint = on_load_checkpoint

    def restore_form(self, pl_module: pl.LightningModule, checkpoint: dict, saved: dict) -> None:
        """Give the network the shape (or masks) that the weights in ``checkpoint`` have; ``saved``: this
        callback's ``state_dict`` in it."""
        raise NotImplementedError

    # -- the schedule ---------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the settings against this fit before any training step."""
        self.net(pl_module)
        last = max(epoch for epoch, _ in self.steps)
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and last >= trainer.max_epochs:
            raise ValueError(f"{type(self).__name__}'s last step is at epoch {last}, but the fit stops after "
                             f"max_epochs={trainer.max_epochs} (epochs 0 .. {trainer.max_epochs - 1})")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for step_epoch, amount in self.steps:
            if step_epoch == trainer.current_epoch:
                self.prune_step(trainer, pl_module, amount)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(trainer, pl_module)

    def prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, amount: float) -> None:
        raise NotImplementedError

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

