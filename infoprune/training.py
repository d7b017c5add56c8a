"""Train (and test) one model from a composed config: the body of ``train.py``."""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.base import ImageDataModule
from infoprune.config import flatten, instantiate_group, print_config_tree, resolved
from models.classifier import ImageClassifier

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """The datamodule of ``cfg``, with its files checked (a clear error, before any work, when data is missing)."""
    datamodule = instantiate(cfg.datamodule)
    if not datamodule.download:
        datamodule.check_files()
    return datamodule


def build_model(cfg: DictConfig, datamodule: ImageDataModule) -> ImageClassifier:
    """The classifier of ``cfg.model``, sized for ``datamodule`` (classes, input channels, input shape)."""
    return instantiate(cfg.model, net={"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels},
                       input_shape=list(datamodule.input_shape))


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


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.model`` on ``cfg.datamodule`` (resuming from ``cfg.ckpt_path`` if set), then test the best
    checkpoint. Returns every logged metric (``val/...`` of the last epoch, ``test/...`` of the best checkpoint)."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        ckpt = best_checkpoint(trainer) if cfg.get("train", True) else cfg.get("ckpt_path")
        log.info("testing %s", ckpt or "the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    return metrics


def metric_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The metric Hydra sweepers optimise; a clear error when the run did not log it."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


torch.set_float32_matmul_precision("high")
