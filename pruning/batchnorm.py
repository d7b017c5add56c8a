"""Re-estimating BatchNorm statistics after pruning (no weight changes): removing channels shifts the inputs of
later layers, so the running statistics learnt before pruning no longer fit (Li et al. 2020, "EagleEye", call the
remedy adaptive BN). Used to compare criteria right after pruning without a fine-tune."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from infoprune.pruning.layers import preserved_modes


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> int:
    """Reset every BatchNorm's running mean and variance and re-estimate them as the plain average over the
    images of ``batches()`` (forward passes in training mode, no gradient). Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    seen = 0
    with preserved_modes(model):
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        for images, _ in batches():
            model(images)
            seen += 1
    for m, momentum in momenta.items():
        m.momentum = momentum
    return seen
