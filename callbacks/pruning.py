"""Channel pruning as a Lightning callback for any LightningModule and DataModule, on a schedule of epochs.

``ChannelPruning`` scores channel groups (through ``ChannelScoring``), keeps removed channels at zero with masks
while training goes on, and physically slims the network (mid-fit, with the optimizer and the DDP wrapper rebuilt,
or at the end of fit), then saves a network that reloads without knowing its widths. ``prune.py`` selects and slims
through the same object. (Connection pruning: ``callbacks.cep.ConnectionPruning``.)"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from infoprune.callbacks.channel_scores import ChannelScoring
from infoprune.callbacks.distillation import frozen_copy
from infoprune.callbacks.masking import ChannelMasking
from infoprune.callbacks.scheduled import ScheduledPruning
from infoprune.io import atomic_save
from infoprune.pruning.allocation import allocate_widths, read_table
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.distributed import broadcast_from_first, is_first_process
from infoprune.pruning.latency import (
    LatencyCost,
    LatencySettings,
    LatencyTable,
    batch_of,
    memory_format,
    relative_latency,
    select_by_latency,
)
from infoprune.pruning.layers import PrunableLayer, find_prunable_layers
from infoprune.pruning.masks import removed_channels
from infoprune.pruning.metrics import GROUP_REDUCTIONS, ChannelScorer
from infoprune.pruning.optim_state import carry_optimizer, surviving_indices
from infoprune.pruning.selection import (
    LAYERWISE_MODES,
    keep_top_channels,
    select_global,
    select_layerwise,
)
from infoprune.pruning.slim import slim, slim_to_widths

log = logging.getLogger(__name__)

SCOPES = ("layerwise", "global", "sensitivity")
RESOURCES = ("params", "flops", "latency")


class ChannelPruning(ScheduledPruning):
    """Prune the channel groups of a LightningModule's network while it trains.

    Nothing is required of the module: the network is the whole LightningModule (or the submodule named by
    ``network``), the example input is ``example_input_array`` or the first calibration image, and calibration
    images come from the datamodule's ``calibration_batches`` when it has one (un-augmented, as infoprune's
    datamodules), else from ``calibration_dataloader`` or the trainer's training dataloader: a seeded subset of its
    dataset, split across processes without repeats, moved to the device through the module's and datamodule's
    batch-transfer hooks.

    Args:
        metric: a ``ChannelScorer`` (``pruning.metrics``; e.g. ``InputL1()``, ``MutualInformation()``).
        amount: fraction of the original network removed by the last step: of every group's parameters
            (``layerwise``; ``mode=channels``: of its channels) or of the network's ``resource`` (``global``,
            ``sensitivity``).
        scope, mode, resource, normalization, min_channels: as in ``pruning.selection``; ``sensitivity``: per-group
            widths chosen from the sensitivity table ``sensitivity`` (a CSV of ``python -m
            infoprune.sensitivity``; ``pruning.allocation.allocate_widths``), one-shot schedules only.
        schedule: ``oneshot`` at ``start_epoch``; ``equal`` or ``agp`` steps from ``start_epoch`` to
            ``end_epoch`` (default: ``start_epoch``), ``steps`` of them.
        slim_epoch: physically slim the network at the start of this epoch (training goes on with the smaller
            network, the optimizer and its state carried over); None: at the end of fit.
        network: attribute name of the submodule to prune (e.g. ``"net"``); None: the whole LightningModule.
        stats: ``StatisticsSettings`` fields for data-driven metrics (``num_images``, ``batch_size``, ``bins`` ...).
        group_reduction: how a channel group's member scores combine (``mean``, ``sum``, ``max``).
        calibration_dataloader: where calibration images come from when the datamodule has no
            ``calibration_batches``.
        save_path: where the slimmed network is saved at the end of fit (``load_slimmed`` reloads it).
            An interrupted fit resumes from its Lightning checkpoint (``trainer.fit(..., ckpt_path=...)`` with a
            fresh module and callback): see :meth:`ScheduledPruning.setup`.
        round_to, overrides, exclude: layer-wise widths rounded up to a multiple; per-group amounts; groups left
            as they are (``exclude`` also for ``global``).
        latency: ``pruning.latency.LatencySettings`` (or its fields as a dict) for ``resource="latency"``
            (``global`` scope): ``amount`` of the network's latency measured on its device is removed
            (:meth:`select_by_latency`); the result is in ``latency_record``.
    """

    def __init__(self, metric: ChannelScorer, amount: float = 0.5, scope: str = "layerwise", mode: str = "params",
                 resource: str = "params", normalization: str = "max", min_channels: int = 1,
                 schedule: str = "oneshot", start_epoch: int = 0, end_epoch: int | None = None, steps: int = 1,
                 slim_epoch: int | None = None, network: str | None = None, stats: dict | None = None,
                 group_reduction: str = "mean", calibration_dataloader: DataLoader | None = None,
                 save_path: str | None = None, round_to: int = 1, overrides: dict[str, float] | None = None,
                 exclude: list[str] | None = None, sensitivity: str | None = None,
                 latency: dict | LatencySettings | None = None) -> None:
        super().__init__(amount, schedule, start_epoch, end_epoch, steps, network, stats, calibration_dataloader)
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
        if scope == "sensitivity" and (schedule != "oneshot" or not sensitivity):
            raise ValueError("the sensitivity scope needs a sensitivity table (sensitivity=<csv>) and the oneshot "
                             "schedule (the table is measured on the unpruned network)")
        if mode not in LAYERWISE_MODES:
            raise ValueError(f"unknown layer-wise mode {mode!r}; choose one of {LAYERWISE_MODES}")
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; choose one of {RESOURCES}")
        if resource == "latency" and scope != "global":
            raise ValueError("a latency budget needs the global scope (one ranking across groups, measured)")
        if group_reduction not in GROUP_REDUCTIONS:
            raise ValueError(f"unknown group reduction {group_reduction!r}; choose one of {GROUP_REDUCTIONS}")
        self.metric, self.scope, self.mode, self.resource = metric, scope, mode, resource
        self.normalization, self.min_channels, self.group_reduction = normalization, min_channels, group_reduction
        self.slim_epoch, self.save_path = slim_epoch, save_path
        self.round_to, self.overrides, self.exclude = round_to, dict(overrides or {}), list(exclude or [])
        self.sensitivity = sensitivity
        self.scoring = ChannelScoring(metric, stats, group_reduction=group_reduction, network=network,
                                      calibration_dataloader=calibration_dataloader)
        self.latency = latency if isinstance(latency, LatencySettings) else LatencySettings(**(latency or {}))
        #: the latency selection's target, measured ratio and rounds (resource ``latency``)
        self.latency_record: dict | None = None
        self.allocated: dict[str, int] | None = None  # per-group widths the sensitivity scope chose
        self.keep: dict[str, torch.Tensor] | None = None
        self.masking: ChannelMasking | None = None  # holds the last step's masks until slimming
        self.scores: dict[str, torch.Tensor] | None = None
        self.structure: dict[str, int] | None = None

    def layers(self, pl_module: pl.LightningModule) -> list[PrunableLayer]:
        return find_prunable_layers(self.net(pl_module), self.example(pl_module))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        last = max(epoch for epoch, _ in self.steps)
        if self.slim_epoch is not None and not last < self.slim_epoch:
            raise ValueError(f"slim_epoch {self.slim_epoch} must come after the last pruning step (epoch {last})")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The network has channel groups (the training data is there now, for an example input); a fit resumed
        between a pruning step and slimming masks the same channels again."""
        layers = self.layers(pl_module)
        if not layers:
            raise ValueError(f"{type(self.net(pl_module)).__name__} has no prunable channel group")
        if self.keep is not None and self.structure is None:
            self.masking = ChannelMasking(self.keep, self.network, layers)
            self.masking.apply(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.slim_epoch == trainer.current_epoch and self.structure is None:
            self.slim_now(trainer, pl_module)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.masking is not None and self.structure is None:
            self.masking.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.keep is not None and self.structure is None:
            self.slim_now(trainer, pl_module)
        if self.save_path and self.structure is not None and trainer.is_global_zero:
            atomic_save({"state_dict": pl_module.state_dict(), "structure": self.structure,
                         "network": self.network}, Path(self.save_path))

    # -- one step -------------------------------------------------------------------------------------------------
    def prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, amount: float) -> None:
        """Score every channel group, select to ``amount`` of the original network (channels removed by earlier
        steps stay removed) and mask."""
        net = self.net(pl_module)
        layers = self.layers(pl_module)
        self.scores = self.scoring.compute(trainer, pl_module)
        removed = {layer.name: removed_channels(layer, self.keep[layer.name]) for layer in layers} if self.keep else {}
        self.keep = self.select(net, layers, self.scores, amount, self.example(pl_module), removed=removed)
        self.masking = ChannelMasking(self.keep, self.network, layers)
        self.masking.apply(pl_module)
        log.info("ChannelPruning: epoch %d, %.1f%% pruned (%s)", trainer.current_epoch, 100 * amount,
                 {name: len(k) for name, k in self.keep.items()})

    def select(self, net: nn.Module, layers: list[PrunableLayer], scores: dict[str, torch.Tensor], amount: float,
               example: torch.Tensor, only: list[str] | None = None,
               removed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Channels kept when ``amount`` of ``net`` as it is now is removed (``layerwise``: of every group, only the
        groups in ``only`` when given; ``global``: of the network's resource); channels in ``removed`` (masked by
        earlier steps) go first."""
        removed = removed or {}
        exclude = list(self.exclude) + [layer.name for layer in layers if only is not None and layer.name not in only]
        if self.scope == "sensitivity":
            self.allocated = allocate_widths(read_table(self.sensitivity), layers, scores,
                                             PruningCost(net, layers, example), amount, self.resource, self.mode,
                                             self.min_channels, self.round_to, exclude)
            return {layer.name: keep_top_channels(layer, scores[layer.name], self.allocated[layer.name])
                    for layer in layers}
        if self.scope == "layerwise":
            scores = {name: s.clone().index_fill_(0, removed[name], float("-inf")) if name in removed else s
                      for name, s in scores.items()}
            return select_layerwise(scores, layers, amount, mode=self.mode, min_channels=self.min_channels,
                                    round_to=self.round_to, overrides=self.overrides, exclude=exclude)
        if self.resource == "latency":
            return self.select_by_latency(net, layers, scores, 1.0 - amount, example, exclude, removed)
        return select_global(scores, layers, PruningCost(net, layers, example), 1.0 - amount,
                             resource=self.resource, normalization=self.normalization,
                             min_channels=self.min_channels, exclude=exclude, already_removed=removed)

    def select_by_latency(self, net: nn.Module, layers: list[PrunableLayer], scores: dict[str, torch.Tensor],
                          target: float, example: torch.Tensor, exclude: list[str],
                          removed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The global selection under a measured latency budget (``pruning.latency.select_by_latency``): at most
        ``target`` of ``net``'s latency on this device, its table measured (or read from the cache) first. Under
        DDP the first process measures and selects and the others take its choice, so every process keeps the same
        network."""
        settings = self.latency
        if not is_first_process():
            return broadcast_from_first(None)
        table = LatencyTable.measure(net, example, settings)
        batch = batch_of(example, settings.batch_size, memory_format(net))

        def select(goal: float) -> dict[str, torch.Tensor]:
            return select_global(scores, layers, LatencyCost(net, layers, example, table), goal, resource="latency",
                                 normalization=self.normalization, min_channels=self.min_channels, exclude=exclude,
                                 already_removed=removed)

        def measure(keep: dict[str, torch.Tensor]) -> float:
            slimmed = frozen_copy(net).requires_grad_(True)  # the dependency graph is traced through autograd
            slim(slimmed, find_prunable_layers(slimmed, example), keep, example)
            return relative_latency(net, slimmed, batch, settings.repeats)

        keep, measured, rounds = select_by_latency(select, measure, target, settings.tolerance, settings.rounds)
        self.latency_record = {"latency_target": target, "latency_remaining": measured, "latency_rounds": rounds,
                               "latency_device": table.device}
        log.info("ChannelPruning: latency %.4f of the dense network's for a target of %.4f (%d selections)",
                 measured, target, len(rounds))
        return broadcast_from_first(keep)

    # -- slimming -------------------------------------------------------------------------------------------------
    def slim_now(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule,
                 keep: dict[str, torch.Tensor] | None = None) -> None:
        """Remove the channels not in ``keep`` (default: the masks of the last step) for real; while fitting, carry
        the optimizer (and its per-entry state) over to the new parameters and wrap the module in a fresh DDP
        wrapper (``trainer`` None: outside a fit)."""
        keep = self.keep if keep is None else keep
        if keep is None:
            raise RuntimeError("ChannelPruning: nothing to slim before the first pruning step")
        net, example = self.net(pl_module), self.example(pl_module)
        optimizers = trainer.optimizers if trainer is not None else []
        before = dict(net.named_parameters())
        if optimizers:
            kept = surviving_indices(net, lambda copy: slim(copy, find_prunable_layers(copy, example), keep, example))
        layers = find_prunable_layers(net, example)
        slim(net, layers, keep, example)
        self.structure = {layer.name: layer.num_channels for layer in layers}
        if "structure" in getattr(pl_module, "hparams", {}):
            pl_module.hparams["structure"] = dict(self.structure)  # ImageClassifier rebuilds from its hparams
        after = dict(net.named_parameters())
        for optimizer in optimizers:
            carry_optimizer(optimizer, before, after, kept)
        strategy = trainer.strategy if trainer is not None else None
        if strategy is not None and isinstance(strategy.model, DistributedDataParallel):
            strategy.model = strategy.model.module
            strategy.configure_ddp()

    def state_dict(self) -> dict:
        return {"structure": self.structure, "settings": asdict(self.settings),
                "keep": {name: k.cpu() for name, k in self.keep.items()} if self.keep is not None else None,
                "example_shape": list(self._example.shape) if self._example is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.structure = state_dict.get("structure")
        keep = state_dict.get("keep")
        self.keep = {name: torch.as_tensor(k) for name, k in keep.items()} if keep is not None else None

    def restore_form(self, pl_module: pl.LightningModule, checkpoint: dict, saved: dict) -> None:
        """Slim the network to the checkpoint's widths (its weights then load into it)."""
        if not saved.get("structure"):
            return
        shape = saved.get("example_shape")  # absent from checkpoints of older versions: the module's own example
        example = torch.zeros(shape, device=pl_module.device) if shape else self.example(pl_module)
        slim_to_widths(self.net(pl_module), saved["structure"], example)
        self.structure = dict(saved["structure"])
        if "structure" in getattr(pl_module, "hparams", {}):
            pl_module.hparams["structure"] = dict(self.structure)




def load_slimmed(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a network saved by ``ChannelPruning(save_path=...)`` into ``module``, a freshly built dense copy of the
    pruned LightningModule (or network): slim it to the recorded widths, then load the weights."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net = module if saved.get("network") is None else getattr(module, saved["network"])
    example = getattr(module, "example_input_array", None)
    if not isinstance(example, torch.Tensor):
        raise ValueError("load_slimmed needs module.example_input_array (one input of the network's shape)")
    slim_to_widths(net, saved["structure"], example)
    module.load_state_dict(saved["state_dict"])
    return module
