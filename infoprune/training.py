"""Train (and test) one model from a composed config: the body of ``train.py``."""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from infoprune.builders import build_model
from infoprune.config import flatten, instantiate_group, print_config_tree, resolved
from infoprune.console import quiet_terminal
from infoprune.threads import apply_job_threads
from infoprune.validation import validate_training

log = logging.getLogger(__name__)
# TF32 matrix multiplies on GPUs that have them (no effect on the CPU)
torch.set_float32_matmul_precision("high")


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks and loggers of their groups; the flattened resolved
    config goes to every logger, so dashboards can group and filter by any setting."""
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers,
                          **overrides)
    for logger in loggers:
        logger.log_hyperparams(flatten(resolved(cfg)))
    return trainer


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """Path of the best checkpoint the run saved, or None (then the current weights are tested)."""
    callback = trainer.checkpoint_callback
    return getattr(callback, "best_model_path", None) or None


class ValidationCurve(pl.Callback):
    """``monitor`` (``val/acc`` by default) after every validation epoch of a fit, sanity check excluded: the
    training curve, kept in the Trainer's checkpoints so that a resumed fit continues it."""

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor, self.values = monitor, []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.monitor in trainer.callback_metrics:
            self.values.append(float(trainer.callback_metrics[self.monitor]))

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "values": list(self.values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.values = list(state_dict["values"])


def random_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU generator and, when CUDA is in use,
    its generators; tensors and plain values only, so that a checkpoint holding it loads with ``weights_only``."""
    _, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Put back the generators' states of :func:`random_state`."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # as many devices as both machines have
        for device, device_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


class RandomStateCheckpoint(pl.Callback):
    """The random generators' states (:func:`random_state`) kept in every checkpoint and put back when a fit resumes
    from one, so that the resumed fit shuffles, augments and drops out as the uninterrupted fit would have; without
    it, the resumed process starts from the seed again and replays the first epoch's random draws. (Lightning runs
    the sanity check inside ``isolate_rng``, so it does not move the restored generators.) Under DDP every rank gets
    rank 0's states (the ranks' generators agree when they were seeded alike). DataLoader workers that outlive an
    epoch (``persistent_workers``) keep generators of their own, which this does not reach."""

    def state_dict(self) -> dict[str, Any]:
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_state(state_dict)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.model`` on ``cfg.datamodule`` (resuming from ``cfg.ckpt_path`` if set), then test the best
    checkpoint. Returns every logged metric (``val/...`` of the last epoch, ``test/...`` of the best checkpoint).
    With ``train=false`` the checkpoint is evaluated: ``val/...`` and ``test/...`` of its weights."""
    quiet_terminal(bool(cfg.get("verbose", False)))
    checked = validate_training(cfg)
    datamodule = checked.datamodule
    apply_job_threads(cfg.get("threads", "auto"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    model = build_model(cfg, datamodule, checked.checkpoint)
    trainer = build_trainer(cfg)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    else:
        trainer.validate(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        ckpt = best_checkpoint(trainer) if cfg.get("train", True) else None
        log.info("testing %s", ckpt or "the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return metrics


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The metric Hydra sweepers optimise; a clear error when the run did not log it."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]

