"""Shared fixtures: configs composed with Hydra's compose API writing to isolated folders, one trained digits baseline
per worker, and the one DDP process pair of the run (tests/ddp_pair.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "datasets"

os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers share the cores: one thread each, as for sweep jobs
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``; the run writes to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.cache_dir = str(output_dir / "cache")
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(overrides, name="train")``: a composed config writing under this test's tmp_path."""

    def make(overrides: list[str] | None = None, name: str = "train") -> DictConfig:
        return compose_config(name, list(overrides or []), tmp_path / "run")

    return make


FAST = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "logger=none",
        "++trainer.enable_progress_bar=false"]
#: a digits SimpleNet trained for 3 epochs (the baseline the pruning tests start from)
BASELINE_TRAINING = FAST + ["trainer.max_epochs=3", "trainer.accelerator=cpu", "test=false"]


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory) -> Path:
    """``last.ckpt`` of :data:`BASELINE_TRAINING`, trained once per worker; the tests only read it."""
    from infoprune.training import train

    out = tmp_path_factory.mktemp("digits_baseline")
    train(compose_config("train", BASELINE_TRAINING, out))
    return out / "checkpoints" / "last.ckpt"


def ddp_pair_dir(config: pytest.Config) -> Path:
    """Where ``tests/ddp_pair.py`` writes in this pytest run: one folder every xdist worker sees."""
    base = config._tmp_path_factory.getbasetemp()  # the run's folder, or this worker's folder inside it
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ddp_pair"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start ``tests/ddp_pair.py`` in the background as soon as a selected test needs its outputs (the first
    worker to get the lock starts it, once per run), so that it runs beside the other tests; the tests that read
    it go last, by when it has finished."""
    readers = [item for item in items if "ddp_pair" in item.fixturenames]
    if not readers:
        return
    items[:] = [item for item in items if item not in readers] + readers
    from filelock import FileLock

    out = ddp_pair_dir(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):
        if not out.exists():
            out.mkdir()
            log = open(out / "pair.log", "w")  # noqa: SIM115 - the child writes to it until it ends
            subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_pair.py"), str(out)], cwd=out,
                             stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.fixture(scope="session")
def ddp_pair(request) -> Path:
    """The outputs of every scenario of ``tests/ddp_pair.py`` (``<dir>/<scenario>/``, from the baseline at
    ``<dir>/baseline/checkpoints/last.ckpt``), run once per pytest run in one pair of gloo processes."""
    import time

    out = ddp_pair_dir(request.config)
    deadline = time.monotonic() + 600
    while not (out / "exit_code").exists():
        assert time.monotonic() < deadline, f"tests/ddp_pair.py did not finish in 600 s: {out / 'pair.log'}"
        time.sleep(0.2)
    assert (out / "exit_code").read_text() == "0", (out / "pair.log").read_text()[-3000:]
    return out


def digits_test_accuracy(checkpoint: Path, split: str = "test") -> float:
    """Fraction of the digits ``split`` images (``test`` or ``val``) that ``checkpoint`` classifies correctly,
    computed by hand (argmax of the logits over the whole split in one batch; no Trainer, no torchmetrics): an
    independent reference for the accuracies the pipeline reports."""
    import torch

    from infoprune.datamodules import DigitsDataModule
    from infoprune.models.classifier import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval()
    datamodule = DigitsDataModule()
    datamodule.setup("fit" if split == "val" else "test")
    images, labels = getattr(datamodule, f"{split}_set").images, getattr(datamodule, f"{split}_set").labels
    with torch.no_grad():
        predictions = model(datamodule.transform_batch(images, train=False)).argmax(1)
    return (predictions == labels).double().mean().item()



class RecordEpochs(pl.Callback):
    """Records every training epoch this process runs (``+callbacks.record._target_=tests.conftest.RecordEpochs``),
    so a test can tell a resumed fit from one restarted from scratch. ``RecordEpochs.epochs`` is shared: clear it
    before the run under test."""

    epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        RecordEpochs.epochs.append(trainer.current_epoch)


def mi_by_hand(counts: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_{b,y} w_b p(b,y) log(p(b,y) / (p(b) p(y)))`` per channel of ``counts[c, b, y]`` (w = 1 when None)."""
    out = []
    for c, joint in enumerate(counts):
        p = joint / joint.sum()
        pb, py = p.sum(1), p.sum(0)
        w = np.ones(len(pb)) if weights is None else weights[c]
        out.append(sum(w[b] * p[b, y] * np.log(p[b, y] / (pb[b] * py[y]))
                       for b in range(p.shape[0]) for y in range(p.shape[1]) if p[b, y] > 0))
    return np.array(out)


def slim_classifier(module, keep: dict) -> None:
    """Slim ``module.net`` to the channels in ``keep`` through ``ChannelPruning``'s slimming, as ``prune.py`` does
    (the new widths recorded in the module's ``structure`` hyperparameter)."""
    from infoprune.callbacks.pruning import ChannelPruning
    from infoprune.pruning.metrics import InputL1

    ChannelPruning(InputL1(), network="net").slim_now(None, module, keep)
