"""FLOPs of one call of a module, as ``torch.utils.flop_counter`` counts them."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def call_flops(module: nn.Module, *args, **kwargs) -> int:
    """FLOPs of ``module(*args, **kwargs)`` in its current mode (a multiply-add counts 2), without autograd: the
    parameters stop requiring gradients for the call (the counter's module tracker cannot hook a parameter that
    reaches a submodule unchanged, as CaiT's class token), and ``nn.MultiheadAttention`` runs its composite path
    (its fused inference kernel is invisible to the counter)."""
    requires = {p: p.requires_grad for p in module.parameters()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for p in requires:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*args, **kwargs)
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()
