"""Lightning glue for channel scoring: when, inside a Trainer, statistics are collected and channels scored."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch

from infoprune.callbacks.calibration import CalibratedCallback, StatisticsSettings
from infoprune.pruning.feature_stats import ChannelAverages, collect_channel_averages
from infoprune.pruning.gradients import calibration_gradients
from infoprune.pruning.layers import PrunableLayer, find_prunable_layers
from infoprune.pruning.metrics import GROUP_REDUCTIONS, ChannelScorer, score_group
from infoprune.pruning.stats import Batches, LayerStatistics, collect_statistics
from infoprune.pruning.storage import save_channel_scores

log = logging.getLogger(__name__)
Statistics = LayerStatistics | ChannelAverages


def score_channels(net: torch.nn.Module, layers: list[PrunableLayer], metric: ChannelScorer, batches: Batches | None,
                   num_classes: int, settings: StatisticsSettings, group_reduction: str = "mean",
                   progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Statistics] | None]:
    """Scores of every channel group in ``layers`` by ``metric`` (members reduced by ``group_reduction``, see
    ``pruning.metrics.score_group``); data-driven metrics first gather what they read on ``batches`` (this
    process's share of the calibration images; everything is reduced across processes): histograms, per-channel
    feature-map averages or the loss gradient. What every scoring callback runs."""
    stats = None
    with torch.inference_mode(False), torch.no_grad():
        if metric.needs_statistics:
            stats = collect_statistics(net, layers, batches, num_classes, bins=settings.bins, binning=settings.binning,
                                       tap=settings.tap, fine_bins=settings.fine_bins, progress=progress,
                                       buffer_images=settings.buffer_images)
        elif metric.feature_statistic is not None:
            stats = collect_channel_averages(net, layers, batches, metric.feature_statistic, tap=settings.tap,
                                             progress=progress, desc=f"statistics: {metric.name}")
        gradients = calibration_gradients(net, batches, progress) if metric.needs_gradients else nullcontext()
        with gradients:
            return {layer.name: score_group(metric, layer, stats, group_reduction) for layer in layers}, stats


class ChannelScoring(CalibratedCallback):
    """Scores every prunable channel when fitting starts (``stage="fit"``, before the first training step) or when
    a ``trainer.validate`` run starts (``stage="validate"``, what ``prune.py`` uses), and saves the scores and
    statistics to ``save_dir/channel_scores.pt`` (format: ``pruning.storage``). The result stays available as
    ``self.scores`` / ``self.statistics``. ``group_reduction`` combines the members' scores of a channel group
    (``mean``, ``sum`` or ``max`` of layer-normalised scores). The network, its example input and the calibration
    images are found as :class:`~infoprune.callbacks.calibration.CalibratedCallback` says (``network``,
    ``stats``, ``calibration_dataloader``). ``ChannelPruning`` scores through this class too."""

    STAGES = ("fit", "validate")

    def __init__(self, metric: ChannelScorer, stats: dict | None = None, save_dir: str | None = None,
                 stage: str = "fit", group_reduction: str = "mean", network: str | None = None,
                 calibration_dataloader=None) -> None:
        if stage not in self.STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {self.STAGES}")
        if group_reduction not in GROUP_REDUCTIONS:
            raise ValueError(f"unknown group reduction {group_reduction!r}; choose one of {GROUP_REDUCTIONS}")
        super().__init__(network, stats, calibration_dataloader)
        self.metric, self.stage, self.group_reduction = metric, stage, group_reduction
        self.save_dir = Path(save_dir) if save_dir else None
        self.scores: dict[str, torch.Tensor] | None = None
        self.statistics: dict[str, Statistics] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stage == "fit":
            self.compute(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stage == "validate" and trainer.state.fn == "validate":
            self.compute(trainer, pl_module)

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """Collect, score and save (rank 0 writes the file); the scores of every channel group."""
        net = self.net(pl_module)
        layers = find_prunable_layers(net, self.example(pl_module))
        batches = self.calibration(trainer, pl_module) if self.metric.needs_data else None
        num_classes = self.num_classes(trainer, pl_module)
        self.scores, self.statistics = score_channels(net, layers, self.metric, batches, num_classes, self.settings,
                                                      self.group_reduction,
                                                      progress=trainer.progress_bar_callback is not None)
        if self.save_dir is not None and trainer.is_global_zero:
            path = save_channel_scores(self.save_dir / "channel_scores.pt", self.metric.name, self.scores,
                                       self.statistics, asdict(self.settings), num_classes)
            log.info("channel scores (%s) saved to %s", self.metric.name, path)
        return self.scores
