"""Experiment loggers that never block a run."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import netrc
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


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


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of an ``sqlite:///<path>`` tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri and tracking_uri.startswith(prefix) else None


def mlflow_logger(tracking_uri: str | None = None, experiment_name: str = "infoprune",
                  tags: list[str] | dict | None = None, **kwargs) -> MLFlowLogger:
    """An ``MLFlowLogger`` whose run exists when it is returned. For a local SQLite store (``sqlite:///<path>``, no
    server) the folder is created and the store is opened under an exclusive lock on ``<path>.lock``: MLflow
    creates a new database's tables on first use, and parallel jobs of a sweep creating them at once corrupt its
    schema. ``tags``: MLflow tags, or a list of names (each becomes the tag ``<name>=true``, so that
    ``tags.<name> = 'true'`` finds the runs); jobs of one Hydra multirun share the tag ``sweep`` (the sweep
    directory's name)."""
    database = sqlite_path(tracking_uri)
    tags = dict(tags) if isinstance(tags, Mapping) else {str(name): "true" for name in tags or []}
    if sweep_group():
        tags["sweep"] = sweep_group()
    def opened() -> MLFlowLogger:
        logger = MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, tags=tags or None, **kwargs)
        _ = logger.run_id  # opens the store (a new database gets its tables), creates the experiment and the run
        return logger

    if database is None:
        return opened()
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return opened()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued (its columns kept, new rows
    appended) instead of deleted, so a resumed run keeps the rows logged before its interruption."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a rerun in the same directory (see
    :class:`AppendingExperimentWriter`); every argument is ``CSVLogger``'s."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def log_score_histograms(logger, step: str, scores: dict[str, torch.Tensor]) -> None:
    """One histogram of channel scores per layer (``scores/<step>/<layer>``) for W&B and TensorBoard; the scores
    file holds them for everyone else."""
    if isinstance(logger, WandbLogger):
        import wandb
        logger.experiment.log({f"scores/{step}/{name}": wandb.Histogram(values.numpy())
                               for name, values in scores.items()})
    elif isinstance(logger, TensorBoardLogger):
        for name, values in scores.items():
            logger.experiment.add_histogram(f"scores/{step}/{name}", values.double().numpy(), global_step=0)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_dict(logger.run_id, {name: values.tolist() for name, values in scores.items()},
                                   f"scores/{step}.json")


def log_channel_table(logger, before: dict[str, int], after: dict[str, int]) -> None:
    """Per-layer channels kept (``pruning/channels``): a W&B table, a markdown table in TensorBoard's text tab, a
    CSV artifact ``pruning/channels.csv`` in MLflow (other loggers get the numbers through the summary metrics)."""
    rows = [[name, before[name], after[name], after[name] / before[name]] for name in before]
    if hasattr(logger, "log_table"):
        logger.log_table(key="pruning/channels", columns=["layer", "before", "after", "kept"], data=rows)
    elif isinstance(logger, TensorBoardLogger):
        lines = ["| layer | before | after | kept |", "|---|---|---|---|"]
        lines += [f"| {name} | {b} | {a} | {kept:.1%} |" for name, b, a, kept in rows]
        logger.experiment.add_text("pruning/channels", "\n".join(lines), global_step=0)
    elif isinstance(logger, MLFlowLogger):
        table = io.StringIO()
        csv.writer(table, lineterminator="\n").writerows([["layer", "before", "after", "kept"], *rows])
        logger.experiment.log_text(logger.run_id, table.getvalue(), "pruning/channels.csv")


def log_results_record(logger, results: dict) -> None:
    """The whole results record (``results.json``) as an MLflow artifact; W&B and TensorBoard get its numbers as
    ``summary/*`` metrics."""
    if isinstance(logger, MLFlowLogger):
        logger.experiment.log_text(logger.run_id, json.dumps(results, indent=2), "results.json")
