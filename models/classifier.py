"""The one LightningModule for image classification; any network of ``models`` plugs into it."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: torch.nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass on ``example_input`` (``torch.utils.flop_counter``; a multiply-add counts 2)."""
    was_training = module.training
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example_input)
    module.train(was_training)
    return counter.get_total_flops()


def _plain(cfg: Any) -> Any:
    """A config as plain containers (checkpoint-, logger- and pickle-friendly)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around ``net``, with torchmetrics top-1 (and top-5 when there are more than 10
    classes) accuracy for train/val/test.

    Every argument is a config (dict with ``_target_``), saved as hyperparameters, so a checkpoint alone rebuilds
    the model, slimmed widths included (``net.channels``).

    Args:
        net: config of the network (``models.SimpleNet`` ...); ``num_classes`` and ``in_channels`` are filled in
            from the datamodule by the entry points.
        optimizer: partial optimizer config (``_partial_: true``), called with the parameters.
        scheduler: partial LR-scheduler config called with the optimizer, or None.
        input_shape: ``(C, H, W)`` of one image, for the FLOP count and the example input.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        input_shape: tuple[int, int, int] | list[int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"net": _plain(net), "optimizer": _plain(optimizer),
                                   "scheduler": _plain(scheduler), "input_shape": list(input_shape)})
        self.net = instantiate(self.hparams.net)
        self.num_classes = int(self.hparams.net["num_classes"])
        self.example_input_array = torch.zeros(1, *input_shape)
        # micro: the fraction of images classified correctly (torchmetrics' default, macro, averages per-class recall)
        metrics = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if self.num_classes > 10:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.metrics = torch.nn.ModuleDict({f"{s}_metrics": collection.clone(prefix=f"{s}/") for s in ("train", "val", "test")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        sizes = {"model/params": count_parameters(self.net),
                 "model/flops": count_flops(self.net, self.example_input_array.to(self.device))}
        for logger in self.loggers:
            logger.log_metrics(sizes, step=0)
        self.print(f"model: {sizes['model/params']:,} parameters, {sizes['model/flops']:,} FLOPs per image")

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
