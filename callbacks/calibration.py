"""What every callback that reads a LightningModule's network and calibration images shares: which network (the
whole module or one submodule), its example input, this process's share of the calibration images, and the number
of classes. Nothing is required of the module or the datamodule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.utils.data import DataLoader


@dataclass
class StatisticsSettings:
    """How feature-map statistics are gathered (see ``pruning.stats.collect_statistics``)."""

    tap: str = "act"
    bins: int = 32
    binning: str = "width"
    num_images: int = 1280
    batch_size: int = 256
    seed: int = 0
    fine_bins: int = 2048
    buffer_images: int = 2048


class CalibratedCallback(pl.Callback):
    """The network is the whole LightningModule or its submodule ``network``; the example input is the module's
    ``example_input_array`` or the first calibration image; calibration images come from the datamodule's
    ``calibration_batches`` when it has one (un-augmented, as infoprune's datamodules), else from
    ``calibration_dataloader`` or the trainer's training dataloader: a seeded subset of its dataset
    (``stats.num_images`` images, ``stats.seed``), split across processes without repeats, moved to the device
    through the module's and datamodule's batch-transfer hooks."""

    def __init__(self, network: str | None = None, stats: dict | None = None,
                 calibration_dataloader: DataLoader | None = None) -> None:
        self.network = network
        self.settings = StatisticsSettings(**(stats or {}))
        self.calibration_dataloader = calibration_dataloader
        self._example: torch.Tensor | None = None

    def net(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.network is None:
            return pl_module
        net = getattr(pl_module, self.network, None)
        if not isinstance(net, nn.Module):
            raise AttributeError(f"{type(self).__name__}(network={self.network!r}): {type(pl_module).__name__} has no "
                                 f"submodule of that name; its children are {[n for n, _ in pl_module.named_children()]}")
        return net

    def example(self, pl_module: pl.LightningModule) -> torch.Tensor:
        if self._example is None:
            given = getattr(pl_module, "example_input_array", None)
            if not isinstance(given, torch.Tensor):
                given = next(iter(self.calibration(pl_module.trainer, pl_module)()))[0][:1]
            self._example = given
        return self._example.to(pl_module.device)

    def calibration(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        """``batches()`` yielding ``(images, labels)`` on the module's device, this process's share."""
        datamodule = getattr(trainer, "datamodule", None)
        s = self.settings
        if self.calibration_dataloader is None and hasattr(datamodule, "calibration_batches"):
            return datamodule.calibration_batches(s.num_images, s.batch_size, s.seed, pl_module.device,
                                                  trainer.global_rank, trainer.world_size)
        loader = self.calibration_dataloader or trainer.train_dataloader
        if loader is None:
            raise ValueError(f"{type(self).__name__} found no calibration images: give calibration_dataloader")
        dataset = loader.dataset
        count = min(s.num_images, len(dataset))
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(s.seed))[:count]
        share = order[trainer.global_rank::trainer.world_size].tolist()

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            subset = DataLoader(dataset, batch_size=s.batch_size, sampler=share, collate_fn=loader.collate_fn)
            for batch in subset:
                images, labels = trainer.strategy.batch_to_device(batch)[:2]
                yield images, labels

        return batches

    def num_classes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """The datamodule's or the module's ``num_classes``, else the width of the network's output."""
        for source in (getattr(trainer, "datamodule", None), pl_module):
            if getattr(source, "num_classes", None):
                return int(source.num_classes)
        with torch.no_grad():
            return int(self.net(pl_module).eval()(self.example(pl_module)).shape[-1])
