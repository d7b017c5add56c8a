"""Lightning checkpoints written atomically: Lightning's own writer streams the bytes into the final path, so a job
killed mid-write (preemption, SIGKILL, a full disk) leaves a truncated ``last.ckpt`` that its rerun cannot resume
from. This writer goes through :func:`infoprune.io.write_atomically`: the earlier checkpoint stays whole until the
new one is complete."""
from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from infoprune.io import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` writes a temporary file and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))
