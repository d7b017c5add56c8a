"""Loss gradients over a calibration set, for criteria that read them (first-order Taylor importance)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from infoprune.pruning.distributed import all_reduce, rank_and_world_size
from infoprune.pruning.layers import preserved_modes
from infoprune.pruning.stats import Batches


@contextmanager
def calibration_gradients(model: nn.Module, batches: Batches, progress: bool = False):
    """Inside the block every parameter's ``.grad`` is ``d/dtheta (1/N) sum_n CE(model(x_n), y_n)``: the
    gradient of the mean cross-entropy over all ``N`` calibration images of ``batches()`` (evaluation mode, so
    BatchNorm uses its running statistics), summed over processes, so every rank sees the gradient of the whole
    calibration set. On exit the gradients the parameters held before are put back."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    device = params[0].device
    images = torch.zeros(1, dtype=torch.float64, device=device)
    show = progress and rank_and_world_size()[0] == 0
    try:
        for p in params:
            p.grad = None
        with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for batch, labels in tqdm(batches(), desc="gradients", unit="batch", disable=not show, leave=False):
                F.cross_entropy(model(batch), labels, reduction="sum").backward()
                images += len(labels)
        total = all_reduce(images, "sum").item()
        if total == 0:
            raise ValueError("the calibration set is empty: no image reached the gradient pass")
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad = all_reduce(p.grad, "sum") / total
        yield model
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad
