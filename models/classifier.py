"""The one LightningModule for image classification; any network of ``models`` plugs into it."""
from __future__ import annotations

import functools
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from infoprune.models.network import build_network
from infoprune.pruning.cost import count_flops, count_parameters
from infoprune.pruning.slim import slim_to_widths


@functools.cache
def cpu_has_avx2() -> bool:
    """Whether PyTorch runs this CPU's kernels with AVX2 or a wider instruction set."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AVX512_BF16", "AMX")


def _plain(cfg: Any) -> Any:
    """A config as plain containers (checkpoint-, logger- and pickle-friendly)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around ``net``, with torchmetrics top-1 (and top-5 when there are more than 10
    classes) accuracy and the mean loss for train/val/test.

    Logged: ``{stage}/loss`` (mean over the epoch's images) and ``{stage}/acc`` once per epoch, exact under DDP
    (torchmetrics sums counts across processes); during training also ``train/loss_step``, the batch loss, every
    ``trainer.log_every_n_steps`` batches (it is what the progress bar and the loggers show between epochs; a
    Lightning ``self.log`` call costs about a millisecond, which logging every step makes a tenth of a small
    network's step).

    Every argument is saved as a hyperparameter, so a checkpoint alone rebuilds the model, a slimmed one included
    (``structure``).

    Args:
        net: config of the network: any ``nn.Module`` factory (``models.SimpleNet``, ``torchvision.models.resnet18``,
            a user's class); ``num_classes`` and ``in_channels`` are filled in from the datamodule by the entry
            points and passed or adapted as ``models.network.build_network`` says.
        optimizer: partial optimizer config (``_partial_: true``), called with the parameters.
        scheduler: partial LR-scheduler config called with the optimizer, or None.
        input_shape: ``(C, H, W)`` of one image, for the FLOP count and the example input.
        channels_last: run the network in the channels-last memory format (weights and every batch); ``auto``: on
            the CPU when it has AVX2 or better (measured faster there: docs/results/performance.md), off elsewhere.
        compile: train and evaluate through ``torch.compile(net)`` (compiled on the first batch; statistics and
            slimming use the plain network).
        structure: the slimmed network's channel-group widths (group name -> channels kept), written by slimming;
            the dense network is built and slimmed to them (its first channels) before weights are loaded, for any
            architecture.
        preprocessing: how the datamodule turns stored pixels into the network's input, recorded for use outside
            the framework: ``input = (pixels * scale - mean) / std`` per channel (``infoprune.export``).
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        input_shape: tuple[int, int, int] | list[int] = (3, 32, 32),
        channels_last: bool | str = False,
        compile: bool = False,
        structure: dict[str, int] | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or auto, got {channels_last!r}")
        self.save_hyperparameters({"net": _plain(net), "optimizer": _plain(optimizer),
                                   "scheduler": _plain(scheduler), "input_shape": list(input_shape),
                                   "channels_last": channels_last, "compile": bool(compile),
                                   "structure": _plain(structure), "preprocessing": _plain(preprocessing)})
        self._compiled: dict[str, Any] = {}  # torch.compile(net), kept out of the module tree and the state dict
        self.num_classes = int(self.hparams.net["num_classes"])
        self.net = build_network(self.hparams.net, self.num_classes, int(self.hparams.net.get("in_channels", 3)))
        self.example_input_array = torch.zeros(1, *input_shape)
        if structure:
            slim_to_widths(self.net, dict(self.hparams.structure), self.example_input_array)
        # micro: the fraction of images classified correctly (torchmetrics' default, macro, averages per-class recall)
        metrics = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if self.num_classes > 10:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        stages = ("train", "val", "test")
        self.metrics = torch.nn.ModuleDict({f"{s}_metrics": collection.clone(prefix=f"{s}/") for s in stages})
        self.mean_loss = torch.nn.ModuleDict({f"{s}_loss": MeanMetric() for s in stages})

    def uses_channels_last(self) -> bool:
        """Whether batches and weights go channels-last on the module's current device."""
        setting = self.hparams.get("channels_last", False)
        if setting == "auto":
            return self.device.type == "cpu" and cpu_has_avx2()
        return bool(setting)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_channels_last() and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.hparams.get("compile"):
            if self._compiled.get("net") is None or self._compiled["net"]._orig_mod is not self.net:
                self._compiled["net"] = torch.compile(self.net)
            return self._compiled["net"](x)
        return self.net(x)

    def setup(self, stage: str) -> None:
        """Weights in the configured memory format before a fit, validation or test (a slimmed network's new
        weights are converted here too)."""
        if self.uses_channels_last():
            self.net.to(memory_format=torch.channels_last)

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
        self.metrics[f"{stage}_metrics"].update(logits, y)
        self.mean_loss[f"{stage}_loss"].update(loss.detach(), weight=len(y))
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's mean loss and accuracies (computed across processes) and start the next epoch afresh."""
        metrics = self.metrics[f"{stage}_metrics"]
        values = {f"{stage}/loss": self.mean_loss[f"{stage}_loss"].compute(), **metrics.compute()}
        self.log_dict(values, prog_bar=True)
        with torch.inference_mode(False):  # fresh states must stay updatable by a later run outside inference mode
            self.mean_loss[f"{stage}_loss"].reset()
            metrics.reset()

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
