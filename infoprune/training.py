"""Train (and test) one model from a composed config: the body of ``train.py``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.base import ImageDataModule
from infoprune.config import flatten, instantiate_group, print_config_tree, resolved
from models.classifier import ImageClassifier

log = logging.getLogger(__name__)
# TF32 matrix multiplies on GPUs that have them (no effect on the CPU)
torch.set_float32_matmul_precision("high")


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """The datamodule of ``cfg``, with its files checked (a clear error, before any work, when data is missing)."""
    datamodule = instantiate(cfg.datamodule)
    if not datamodule.download:
        datamodule.check_files()
    return datamodule


def read_checkpoint(path: str) -> dict:
    """A checkpoint's contents (on the CPU), or a clear error when the file is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_checkpoint_fits(model: ImageClassifier, checkpoint: dict, path: str) -> None:
    """Raise ``ValueError`` naming the differences when ``checkpoint``'s weights do not fit ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    problems = [f"{k}: checkpoint {found.get(k)}, config {expected.get(k)}"
                for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]
    if problems:
        net = checkpoint.get(ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY, {}).get("net", {})
        raise ValueError(f"checkpoint {path} does not fit the model config ({len(problems)} mismatched tensors, e.g. "
                         f"{'; '.join(problems[:3])}). The checkpoint holds {net.get('_target_')} with "
                         f"{ {k: v for k, v in net.items() if k != '_target_'} }.")


def build_model(cfg: DictConfig, datamodule: ImageDataModule) -> ImageClassifier:
    """The classifier of ``cfg.model``, sized for ``datamodule`` (classes, input channels, input shape).

    With ``init_from`` (start a new fit from these weights) or ``ckpt_path`` (resume), the widths come from the
    checkpoint (a slimmed network rebuilds without the user knowing them), and a checkpoint that does not fit the
    config is an error before any work. The checkpoint's weights are loaded (``train=false`` then tests them)."""
    net_args = {"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels}
    source = cfg.get("init_from") or cfg.get("ckpt_path")
    checkpoint = read_checkpoint(source) if source else None
    if checkpoint is not None:
        saved_net = checkpoint.get(ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY, {}).get("net", {})
        if saved_net.get("channels") is not None and saved_net.get("_target_") == cfg.model.net.get("_target_"):
            net_args["channels"] = list(saved_net["channels"])
    model = instantiate(cfg.model, net=net_args, input_shape=list(datamodule.input_shape))
    if checkpoint is not None:
        check_checkpoint_fits(model, checkpoint, source)
        model.load_state_dict(checkpoint["state_dict"])
    return model


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
    checkpoint. Returns every logged metric (``val/...`` of the last epoch, ``test/...`` of the best checkpoint).
    With ``train=false`` the checkpoint is evaluated: ``val/...`` and ``test/...`` of its weights."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    else:
        trainer.validate(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        ckpt = best_checkpoint(trainer) if cfg.get("train", True) else None
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

