"""Lightning glue for masks and saving: keep removed channels at zero through fine-tuning; save a (slimmed)
classifier's weights with the structure that rebuilds it."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pytorch_lightning as pl
import torch

from infoprune.io import atomic_save
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.layers import PrunableLayer, find_prunable_layers
from infoprune.pruning.masks import apply_channel_masks


class ChannelMasking(pl.Callback):
    """Zeroes the removed channels (``keep``: channel group name -> indices kept) of the network (the whole
    LightningModule or its submodule ``network``) when fitting starts and again after every training batch (after
    the optimizer step), so a masked network fine-tunes, also under DDP, without rebuilding anything.
    ``ChannelPruning`` masks through this class between a pruning step and slimming; ``layers``: the network's
    channel groups when the caller has found them already."""

    def __init__(self, keep: Mapping[str, torch.Tensor | list[int]], network: str | None = None,
                 layers: list[PrunableLayer] | None = None) -> None:
        self.keep = {name: torch.as_tensor(idx, dtype=torch.long) for name, idx in keep.items()}
        self.network = network
        self.layers = None if layers is None else [layer for layer in layers if layer.name in self.keep]

    def apply(self, pl_module: pl.LightningModule) -> None:
        if self.layers is None:
            net = pl_module if self.network is None else getattr(pl_module, self.network)
            layers = find_prunable_layers(net, pl_module.example_input_array.to(pl_module.device))
            self.layers = [layer for layer in layers if layer.name in self.keep]
        apply_channel_masks(self.layers, self.keep)

    def on_fit_start(self, trainer, pl_module):
        self.apply(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.apply(pl_module)


def save_weights_checkpoint(module: ImageClassifier, path: str | Path) -> Path:
    """A checkpoint with the module's weights and hyperparameters only (no optimizer or loop state, which a slimmed
    network no longer fits), loadable by ``ImageClassifier.load_from_checkpoint`` and ``init_from=``."""
    payload = {"state_dict": module.state_dict(), ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
               "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}
    return atomic_save(payload, path)
