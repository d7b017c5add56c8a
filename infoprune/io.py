"""File writing that never leaves a half-written file in place of a good one (plain torch: usable from pruning/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to a temporary file beside ``path``, then renamed over it: an interrupted or failed
    write leaves any earlier file at ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path
