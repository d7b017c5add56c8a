"""Train/eval flags of a network kept across work that switches them."""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def preserved_modes(model: nn.Module):
    """Restore every submodule's train/eval flag on exit, whatever the body (or a library it calls) set."""
    modes = {module: module.training for module in model.modules()}
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
