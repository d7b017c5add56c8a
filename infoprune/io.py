"""File writing that never leaves a half-written file in place of a good one (plain torch: usable from pruning/)."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable

import torch


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, flushed to disk, then renamed over it: a process killed
    at any moment leaves either the earlier file at ``path`` or the new one, whole. A failed write (a full disk, an
    unwritable folder) removes the temporary file, leaves the earlier file intact and raises an ``OSError`` that
    names ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException as error:  # a kill at this point leaves at most a hidden temporary file
        tmp.unlink(missing_ok=True)
        if not isinstance(error, OSError):
            raise
        reason = "no space left on the device" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise OSError(error.errno, f"could not write {path}: {reason}; any earlier file there is kept") from error
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure saved at ``path`` atomically, in the format its suffix names (``.png``, ``.svg``...)."""
    return write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".")))
