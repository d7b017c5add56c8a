"""Lightning glue for masks and slimming: keep removed channels at zero through fine-tuning; slim a trained
LightningModule and record its structure so checkpoints rebuild it."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pytorch_lightning as pl
import torch

from infoprune.io import atomic_save
from infoprune.models.classifier import ImageClassifier, count_flops, count_parameters
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.masks import apply_channel_masks
from infoprune.pruning.slim import slim
from infoprune.pruning.summary import PruningSummary


class ChannelMasking(pl.Callback):
    """Zeroes the removed channels (``keep``: layer name -> indices kept) when fitting starts and again after every
    training batch (after the optimizer step), so a masked network fine-tunes, also under DDP, without rebuilding
    anything."""

    def __init__(self, keep: Mapping[str, torch.Tensor | list[int]]) -> None:
        self.keep = {name: torch.as_tensor(idx, dtype=torch.long) for name, idx in keep.items()}
        self.layers = None

    def _apply(self, pl_module: pl.LightningModule) -> None:
        if self.layers is None:
            layers = find_prunable_layers(pl_module.net, pl_module.example_input_array.to(pl_module.device))
            self.layers = [layer for layer in layers if layer.name in self.keep]
        apply_channel_masks(self.layers, self.keep)

    def on_fit_start(self, trainer, pl_module):
        self._apply(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._apply(pl_module)


def slim_classifier(module: ImageClassifier, keep: Mapping[str, torch.Tensor]) -> PruningSummary:
    """Remove the channels not in ``keep`` from ``module.net`` (in place, on its device) and record every channel
    group's new width in its hyperparameters (``structure``), so a checkpoint saved afterwards rebuilds the slimmed
    network, whatever its architecture."""
    example = module.example_input_array.to(module.device)
    layers = find_prunable_layers(module.net, example)
    missing = [layer.name for layer in layers if layer.name not in keep]
    if missing:
        raise KeyError(f"no channel selection for layer(s) {missing}")
    before = {layer.name: layer.num_channels for layer in layers}
    params, flops = count_parameters(module.net), count_flops(module.net, example)
    slim(module.net, layers, keep, example)
    module.hparams["structure"] = {layer.name: layer.num_channels for layer in layers}
    return PruningSummary(before, {layer.name: layer.num_channels for layer in layers}, params,
                          count_parameters(module.net), flops, count_flops(module.net, example))


def save_weights_checkpoint(module: ImageClassifier, path: str | Path) -> Path:
    """A checkpoint with the module's weights and hyperparameters only (no optimizer or loop state, which a slimmed
    network no longer fits), loadable by ``ImageClassifier.load_from_checkpoint`` and ``init_from=``."""
    payload = {"state_dict": module.state_dict(), ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
               "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}
    return atomic_save(payload, path)
