"""Lightning glue for connection pruning: per-connection errors inside a validate run (sharded over processes),
masks through ``torch.nn.utils.prune`` (kept through retraining, made permanent at the end)."""
from __future__ import annotations

from typing import Mapping

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from infoprune.pruning.cep import ConnectionCriterion


class ConnectionScoring(pl.Callback):
    """Computes ``criterion``'s error of every connection of ``layers`` when a ``trainer.validate`` run starts, on
    the datamodule's calibration images (each process its shard; sums reduced across processes)."""

    def __init__(self, criterion: ConnectionCriterion, layers: dict[str, nn.Module], num_images: int,
                 batch_size: int, seed: int) -> None:
        self.criterion, self.layers = criterion, layers
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.errors: dict[str, torch.Tensor] | None = None

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn != "validate":
            return
        batches = None
        if self.criterion.needs_data:
            batches = trainer.datamodule.calibration_batches(self.num_images, self.batch_size, self.seed,
                                                             pl_module.device, trainer.global_rank, trainer.world_size)
        with torch.inference_mode(False):
            self.errors = {n: e.cpu() for n, e in self.criterion.errors(pl_module.net, self.layers, batches).items()}


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
