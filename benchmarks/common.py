"""Shared helpers of the benchmark scripts: timing, data choice, the closing JSON line."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from infoprune.datamodules import CIFAR10JPEGDataModule, InMemoryImageDataModule

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class SyntheticCIFAR(InMemoryImageDataModule):
    """CIFAR-shaped random uint8 images (used when the real CIFAR-10-JPEG is not under DATA_DIR)."""

    name, num_classes = "synthetic CIFAR-10", 10
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def check_files(self) -> None:
        """Nothing to read."""

    def load(self, train: bool):
        g = torch.Generator().manual_seed(int(train))
        n = 50000 if train else 10000
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,))


def cifar_datamodule(batch_size: int) -> InMemoryImageDataModule:
    """CIFAR-10-JPEG from ``$DATA_DIR`` when present, else synthetic images of the same shape."""
    data_dir = os.environ.get("DATA_DIR")
    if data_dir and (Path(data_dir) / "cifar10-jpeg.tar.gz").exists():
        dm = CIFAR10JPEGDataModule(data_dir=data_dir, batch_size=batch_size)
    else:
        dm = SyntheticCIFAR(batch_size=batch_size)
    dm.setup()
    return dm


def compose(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` (Hydra's compose API), writing under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose_config(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
    return cfg


def scratch_dir(prefix: str) -> Path:
    """A new temporary directory for a measured run's outputs, removed when the benchmark exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def print_json(figures: dict) -> None:
    """The benchmark's last line: one JSON object with its figures."""
    print(json.dumps(figures, sort_keys=True))
