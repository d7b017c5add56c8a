"""Lightning glue for connection pruning: per-connection errors on calibration images (sharded over processes),
masks through ``torch.nn.utils.prune`` (kept through retraining, made permanent at the end), and the
``ConnectionPruning`` callback that schedules them inside a fit."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader

from infoprune.callbacks.calibration import CalibratedCallback
from infoprune.callbacks.scheduled import ScheduledPruning
from infoprune.io import atomic_save
from infoprune.pruning.cep import ConnectionCriterion, connection_masks, prunable_weights

log = logging.getLogger(__name__)


class ConnectionScoring(CalibratedCallback):
    """Computes ``criterion``'s error of every connection of the network's conv and linear layers (less
    ``exclude_layers``) when a ``trainer.validate`` run starts (what ``prune.py`` uses) or when :meth:`compute` is
    called (what ``ConnectionPruning`` does), on calibration images found as
    :class:`~infoprune.callbacks.calibration.CalibratedCallback` says (each process its shard; sums reduced across
    processes). The result stays available as ``self.errors``."""

    def __init__(self, criterion: ConnectionCriterion, exclude_layers: list[str] | None = None,
                 stats: dict | None = None, network: str | None = None,
                 calibration_dataloader: DataLoader | None = None) -> None:
        super().__init__(network, stats, calibration_dataloader)
        self.criterion, self.exclude_layers = criterion, list(exclude_layers or [])
        self.errors: dict[str, torch.Tensor] | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self.compute(trainer, pl_module)

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """The error of every connection, per layer (on the CPU)."""
        net = self.net(pl_module)
        batches = self.calibration(trainer, pl_module) if self.criterion.needs_data else None
        with torch.inference_mode(False):
            errors = self.criterion.errors(net, prunable_weights(net, self.exclude_layers), batches)
        self.errors = {n: e.cpu() for n, e in errors.items()}
        return self.errors


def apply_connection_masks(layers: dict[str, nn.Module], masks: Mapping[str, torch.Tensor]) -> None:
    """Mask every layer's weight with ``masks`` through ``torch.nn.utils.prune`` (replacing an earlier mask)."""
    for name, module in layers.items():
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
        torch_prune.custom_from_mask(module, "weight", masks[name].to(module.weight.device))
        weight_first(module)


def make_permanent(layers: dict[str, nn.Module]) -> None:
    """Fold the masks into the weights (pruned connections become stored zeros) and drop the reparametrisation."""
    for module in layers.values():
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
            weight_first(module)


def weight_first(module: nn.Module) -> None:
    """Put the weight (``weight`` or the masked ``weight_orig``) back first among the module's parameters, where
    ``torch.nn.utils.prune`` moved it to the end: the parameter order, and so an optimizer built from it, is then
    the same masked or not (a fit resumed with masks loads the optimizer state the unmasked fit saved)."""
    params = module._parameters
    first = [k for k in ("weight", "weight_orig") if k in params]
    ordered = [(k, params[k]) for k in first + [k for k in params if k not in first]]
    params.clear()
    params.update(ordered)


class ConnectionPruning(ScheduledPruning):
    """Prune single connections (weights) of a LightningModule's conv and linear layers while it trains.

    Each step computes ``criterion``'s error of every connection (CEP and HCEP on calibration images, found as for
    ``ChannelPruning``; magnitude without data) and masks the connections to the step's density (``1 - amount``
    of all connections, removed ones staying removed) through ``torch.nn.utils.prune``, whose forward hook keeps
    them at zero while training goes on (the parameters stay the same objects: the optimizer and DDP need nothing).
    At the end of fit the masks are folded into the weights and ``save_path`` gets the network's state dict.

    Args:
        criterion: a ``pruning.cep.ConnectionCriterion`` (``cep``, ``magnitude``, ``lamp``, ``snip``;
            ``hcep_fraction`` > 0: HCEP).
        amount, schedule, start_epoch, end_epoch, steps, network, stats, calibration_dataloader: as for
            ``ChannelPruning``.
        exclude_layers: conv/linear layers (by name in the network) left dense.
    """

    def __init__(self, criterion: ConnectionCriterion, amount: float = 0.5, schedule: str = "oneshot",
                 start_epoch: int = 0, end_epoch: int | None = None, steps: int = 1, network: str | None = None,
                 stats: dict | None = None, exclude_layers: list[str] | None = None,
                 calibration_dataloader: DataLoader | None = None, save_path: str | None = None) -> None:
        super().__init__(amount, schedule, start_epoch, end_epoch, steps, network, stats, calibration_dataloader)
        self.criterion, self.exclude_layers, self.save_path = criterion, list(exclude_layers or []), save_path
        self.scoring = ConnectionScoring(criterion, exclude_layers, stats, network, calibration_dataloader)
        self.masks: dict[str, torch.Tensor] | None = None
        self._layers: dict[str, nn.Module] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._layers = prunable_weights(self.net(pl_module), self.exclude_layers)

    def state_dict(self) -> dict:
        return {"masked": self.masks is not None}

    def restore_form(self, pl_module: pl.LightningModule, checkpoint: dict, saved: dict) -> None:
        """Mask the connections that the checkpoint's masks (``<layer>.weight_mask``) remove, so its masked
        weights load, and later steps keep them removed."""
        prefix = f"{self.network}." if self.network else ""
        layers = prunable_weights(self.net(pl_module), self.exclude_layers)
        masks = {n: checkpoint["state_dict"].get(f"{prefix}{n}.weight_mask") for n in layers}
        if saved.get("masked") and all(mask is not None for mask in masks.values()):
            self.masks = {n: mask.bool() for n, mask in masks.items()}
            apply_connection_masks(layers, self.masks)

    def prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, amount: float) -> None:
        self.mask(self._layers, self.scoring.compute(trainer, pl_module), 1.0 - amount)
        log.info("ConnectionPruning: epoch %d, %.1f%% of the connections removed", trainer.current_epoch,
                 100 * amount)

    def mask(self, layers: dict[str, nn.Module], errors: dict[str, torch.Tensor],
             density: float) -> dict[str, torch.Tensor]:
        """Mask the connections of ``layers`` to ``density`` of all connections by their ``errors`` (lowest removed
        first; those masked by earlier steps stay removed) and return the masks."""
        self.masks = connection_masks(errors, density, self.criterion.hcep_fraction, previous=self.masks,
                                      threshold=self.criterion.threshold)
        apply_connection_masks(layers, self.masks)
        return self.masks

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks is None:
            return
        make_permanent(self._layers)
        if self.save_path and trainer.is_global_zero:
            atomic_save({"state_dict": pl_module.state_dict(), "network": self.network}, Path(self.save_path))

