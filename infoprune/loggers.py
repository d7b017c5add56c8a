"""Experiment loggers that never block a run."""
from __future__ import annotations

import netrc
import os
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger


def wandb_api_key_available() -> bool:
    """True when W&B credentials exist (``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def sweep_group() -> str | None:
    """The multirun's sweep-directory name when running inside a Hydra multirun (so W&B groups a sweep's jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        config = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(config.sweep.dir).name if config.mode == RunMode.MULTIRUN else None


def wandb_logger(offline: bool | None = None, group: str | None = None, **kwargs) -> WandbLogger:
    """A ``WandbLogger`` that logs offline (``wandb sync`` uploads later) when ``offline`` is true, or when it is
    None and no API key is available, so a missing key or network never stalls a run. Jobs of one Hydra multirun
    share a ``group`` (the sweep directory's name) unless one is given."""
    kwargs["group"] = group or sweep_group()
    if offline is None:
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_api_key_available()
    os.makedirs(kwargs.get("save_dir") or ".", exist_ok=True)
    return WandbLogger(offline=offline, **kwargs)
