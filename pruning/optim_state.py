"""Slimming a network while it trains: which entries of every parameter survive, and the optimizer carried over to
the new, smaller parameters with its state (momentum, Adam's moments) for the kept entries."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

#: dimensions channel slimming shrinks: output (0) and input (1) channels of conv and linear weights, and the one
#: dimension of biases and BatchNorm parameters
SLIMMED_DIMS = (0, 1)

Kept = dict[str, list[torch.Tensor]]


@torch.no_grad()
def surviving_indices(model: nn.Module, slim_copy: Callable[[nn.Module], None]) -> Kept:
    """For every parameter ``name``, the original indices along dimensions 0 and 1 that ``slim_copy`` keeps.

    ``slim_copy(m)`` must slim ``m`` (a deep copy of ``model``) exactly as ``model`` will be slimmed. Each copy's
    parameters are filled with their own index along one dimension, so the values that survive are the indices
    kept (exact in float32 up to 2^24 channels)."""
    kept: Kept = {name: [] for name, _ in model.named_parameters()}
    for dim in SLIMMED_DIMS:
        probe = copy.deepcopy(model)
        for p in probe.parameters():
            if p.dim() > dim:
                shape = [1] * p.dim()
                shape[dim] = p.shape[dim]
                p.copy_(torch.arange(p.shape[dim], dtype=p.dtype, device=p.device).view(shape).expand_as(p))
        slim_copy(probe)
        for name, p in probe.named_parameters():
            if p.dim() > dim:
                along = p.movedim(dim, 0).reshape(p.shape[dim], -1)[:, 0]
                kept[name].append(along.round().long().cpu())
    return kept


def _sliced(value, old_shape: torch.Size, kept: list[torch.Tensor]):
    """``value`` cut down to the kept entries when it has the parameter's shape (a per-entry state), else as is."""
    if not isinstance(value, torch.Tensor) or value.shape != old_shape:
        return value
    for dim, index in enumerate(kept):
        value = value.index_select(dim, index.to(value.device))
    return value


def carry_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter],
                    after: dict[str, nn.Parameter], kept: Kept) -> None:
    """Point ``optimizer`` at the slimmed parameters (``before``/``after``: name -> parameter) and cut every
    per-entry state tensor (momentum, moments) to the kept entries; hyperparameters, learning rates and
    schedulers attached to the optimizer stay as they are."""
    name_of = {id(p): name for name, p in before.items()}
    for group in optimizer.param_groups:
        for i, old in enumerate(group["params"]):
            name = name_of.get(id(old))
            if name is None or after[name] is old:
                continue
            new = after[name]
            group["params"][i] = new
            state = optimizer.state.pop(old, None)
            if state:
                optimizer.state[new] = {k: _sliced(v, old.shape, kept[name]) for k, v in state.items()}
