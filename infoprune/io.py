"""File writing that never leaves a half-written file in place of a good one (plain torch: usable from pruning/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed over it: an interrupted or failed write
    leaves any earlier file at ``path`` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    tmp.replace(path)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))
