"""What every pruning job does around the pruning itself: its Trainers (a fresh one per phase, so a fresh optimizer
and DDP wrapper around a slimmed network), the trained baseline (from ``ckpt_path``, the shared baseline cache, or
trained and cached here), evaluation, fine-tuning (with distillation from the unpruned network when set), phase
timing, and the final record (``final.ckpt``, ``results.json``, the loggers' summary, the printed tables).
``pipeline.PruningRun`` (channels) and ``connection_run.ConnectionRun`` (connections) add the pruning steps."""
from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Timer

from infoprune.builders import build_model, check_checkpoint_fits, read_checkpoint
from infoprune.callbacks.distillation import KnowledgeDistillation, frozen_copy
from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.config import flatten, instantiate_group, resolved
from infoprune.console import announce_phase
from infoprune.io import atomic_save, atomic_write_text
from infoprune.loggers import log_channel_table, log_results_record
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.cep import ConnectionCriterion
from infoprune.pruning.distributed import barrier, rank_and_world_size
from infoprune.results import print_results
from infoprune.run_identity import baseline_cache_file, settings_digest
from infoprune.training import ValidationCurve, best_checkpoint, random_state, set_random_state
from infoprune.validation import CheckedRun

log = logging.getLogger(__name__)


@contextmanager
def baseline_lock(cache: Path | None, enabled: bool):
    """An exclusive file lock beside ``cache`` while a baseline is looked up or trained, so parallel sweep jobs
    wait for one training instead of each training the same baseline (not under DDP, whose ranks train together)."""
    if not enabled:
        yield
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Job:
    """One pruning job: its config, datamodule, loggers and output directory."""

    def __init__(self, cfg: DictConfig, checked: CheckedRun) -> None:
        self.cfg, self.metric = cfg, checked.metric
        self.started = time.perf_counter()
        self.carried_s = 0.0  # seconds an interrupted earlier process spent on work this run keeps (resumed)
        self.phases: dict[str, float] = {}  # wall seconds per phase, in the order they ran
        self.baseline_curve: list[float] | None = None
        self.teacher: torch.nn.Module | None = None  # the unpruned network, distilled from while fine-tuning
        self.out = Path(cfg.paths.output_dir)
        self.datamodule, self.checkpoint = checked.datamodule, checked.checkpoint
        self.loggers = instantiate_group(cfg.get("logger"))
        for logger in self.loggers:
            logger.log_hyperparams(flatten(resolved(cfg)))

    # -- trainers ----------------------------------------------------------------------------------------------
    def trainer(self, phase: str, max_epochs: int = 1, fit: bool = False, callbacks: list | None = None,
                checkpoint_dir: Path | None = None, **overrides: Any) -> pl.Trainer:
        """A fresh Trainer for ``phase``; fit phases get the configured callbacks, checkpointing into
        ``checkpoint_dir`` (default ``<output>/<phase>/checkpoints``); ``overrides`` are Trainer arguments. The
        phase's name is printed as it starts."""
        if self.is_global_zero():
            announce_phase(phase)
        group = []
        if fit and self.cfg.get("callbacks"):
            callbacks_cfg = OmegaConf.create(resolved(self.cfg.callbacks))
            for entry in callbacks_cfg.values():
                if isinstance(entry, DictConfig) and "dirpath" in entry:
                    entry.dirpath = str(checkpoint_dir or self.out / phase / "checkpoints")
            group = instantiate_group(callbacks_cfg)
        elif self.cfg.get("callbacks"):  # evaluation phases keep only the progress bar
            bars = {k: v for k, v in self.cfg.callbacks.items()
                    if isinstance(v, DictConfig) and str(v.get("_target_", "")).endswith("ProgressBar")}
            group = instantiate_group(OmegaConf.create(resolved(OmegaConf.create(bars))))
        return instantiate(self.cfg.trainer, max_epochs=max_epochs, callbacks=group + list(callbacks or []),
                           logger=self.loggers if fit else False, enable_checkpointing=fit,
                           default_root_dir=str(self.out / phase), **overrides)

    def collect(self, step_dir: str, callback: pl.Callback, model: ImageClassifier) -> None:
        """Run a statistics callback (channel scoring, connection errors) inside a validate run, the way every
        process of a DDP job reaches it; the run's own validation pass is cut to one batch (its metrics are not
        used)."""
        with self.timed(f"{step_dir}/statistics"):
            self.trainer(step_dir, callbacks=[callback], limit_val_batches=1).validate(
                model, datamodule=self.datamodule, verbose=False)

    @contextmanager
    def timed(self, phase: str):
        """Add the wall time of the body to ``self.phases[phase]`` (``results.json``'s ``phase_s``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def evaluate(self, model: ImageClassifier, phase: str, stage: str = "test") -> dict[str, float]:
        """``model``'s metrics on the test set (``stage="test"``) or the validation set (``"validate"``)."""
        with self.timed(phase):
            metrics = getattr(self.trainer(phase), stage)(model, datamodule=self.datamodule, verbose=False)[0]
        return {k.split("/", 1)[1]: float(v) for k, v in metrics.items()}

    def fit(self, model: ImageClassifier, phase: str, epochs: int, ckpt_path: str | None = None,
            **trainer_args: Any) -> None:
        """Train ``model`` for ``epochs`` in a fresh Trainer (resuming from ``ckpt_path``; ``trainer_args`` go to
        :meth:`trainer`), then load its best checkpoint's weights. A resumed fit's phase time also counts the
        training time its checkpoint carries (Lightning's ``Timer`` state: the epochs an interrupted process
        finished)."""
        if phase != "baseline" and self.teacher is not None:
            distill = self.cfg.finetune.distill
            trainer_args["callbacks"] = [*trainer_args.get("callbacks", []), KnowledgeDistillation(
                float(distill.alpha), float(distill.temperature), teacher=self.teacher)]
        with self.timed(phase):
            trainer = self.trainer(phase, max_epochs=epochs, fit=True, **trainer_args)
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
            if timer is None:
                timer = Timer()
                trainer.callbacks.append(timer)
            trainer.fit(model, datamodule=self.datamodule, ckpt_path=ckpt_path)
            best = best_checkpoint(trainer)
            if best:
                model.load_state_dict(read_checkpoint(best)["state_dict"])
        start, end = timer.start_time(), timer.end_time()
        carried = timer.time_elapsed() - (end - start if start is not None and end is not None else 0.0)
        self.phases[phase] += carried
        self.carried_s += carried

    # -- phases ------------------------------------------------------------------------------------------------
    def baseline(self) -> ImageClassifier:
        """The trained network (:meth:`trained_baseline`); with ``finetune.distill.alpha`` > 0 a frozen copy of it is
        kept as the teacher of every fine-tune."""
        model = self.trained_baseline()
        if self.distills():
            self.teacher = frozen_copy(model.net)
        return model

    def distills(self) -> bool:
        distill = self.cfg.finetune.get("distill")
        return distill is not None and float(distill.alpha) > 0

    def trained_baseline(self) -> ImageClassifier:
        """The trained network: from ``ckpt_path``; else from the baseline cache (``baseline_cache``: one baseline
        per model, data, training length and seed, shared by every job of a sweep); else trained here for
        ``trainer.max_epochs`` epochs and put in the cache; without a cache, kept as the run's own entry
        ``<output>/baseline.ckpt``, with the random state the training ended in, so that a rerun of the interrupted
        job continues from there as the uninterrupted job did. A baseline's training checkpoints into
        ``<cache entry>.partial/`` (removed once the entry is saved), so an interrupted training resumes there, in
        any job with the same settings. ``self.baseline_curve``: the validation accuracy after every epoch of the
        baseline's training (kept beside the cache entry as ``<entry>.json``), None for a ``ckpt_path``."""
        model = build_model(self.cfg, self.datamodule, self.checkpoint)
        self.checkpoint = None  # its weights are in the model now
        if self.cfg.get("ckpt_path"):
            return model
        shared = baseline_cache_file(self.cfg)
        cache = shared or self.out / "baseline.ckpt"  # without a shared cache, the run's own entry (for a rerun)
        asked = time.perf_counter()
        with baseline_lock(shared, enabled=shared is not None and "ddp" not in str(self.cfg.trainer.get("strategy"))):
            if shared is not None:  # another job of the sweep may have held the lock while it trained this baseline
                self.phases["baseline_wait"] = time.perf_counter() - asked
            if cache.exists():
                log.info("baseline from the cache: %s", cache)
                if shared is None and self.random_state_file(cache).exists():
                    set_random_state(torch.load(self.random_state_file(cache), weights_only=True))
                checkpoint = read_checkpoint(str(cache))
                check_checkpoint_fits(model, checkpoint, str(cache))
                model.load_state_dict(checkpoint["state_dict"])
                curve = cache.with_suffix(".json")
                self.baseline_curve = json.loads(curve.read_text())["val_acc"] if curve.exists() else None
                return model
            log.info("no ckpt_path: training the baseline first")
            partial = cache.with_suffix(".partial")
            resume = partial / "last.ckpt" if (partial / "last.ckpt").exists() else None
            if resume is not None:
                log.info("resuming the baseline's interrupted training from %s", resume)
            curve = ValidationCurve(monitor="val/acc")
            self.fit(model, "baseline", self.cfg.trainer.max_epochs, ckpt_path=resume and str(resume),
                     callbacks=[curve], checkpoint_dir=partial)
            if shared is None:  # a rerun continues from the random state this training ended in
                atomic_save(random_state(), self.random_state_file(cache))
            self.baseline_curve = curve.values
            barrier()  # every process has read the best checkpoint before rank 0 removes it
            if self.is_global_zero():
                save_weights_checkpoint(model, cache)
                atomic_write_text(cache.with_suffix(".json"), json.dumps({"val_acc": curve.values}))
                shutil.rmtree(partial, ignore_errors=True)
        return model

    def finetune_settings(self, model: ImageClassifier, epochs: int) -> None:
        """Fine-tuning runs at ``finetune.lr`` with ``finetune.scheduler`` (null: the baseline's own scheduler), its
        ``T_max`` (a cosine's length) set to the fine-tuning's own ``epochs``."""
        model.hparams.optimizer["lr"] = float(self.cfg.finetune.lr)
        if self.cfg.finetune.get("scheduler") is not None:
            model.hparams.scheduler = OmegaConf.to_container(self.cfg.finetune.scheduler, resolve=True)
        if model.hparams.scheduler and "T_max" in model.hparams.scheduler:
            model.hparams.scheduler["T_max"] = max(1, int(epochs))

    def final_finetune(self, model: ImageClassifier, state: dict[str, Any], resume: str | None = None) -> dict:
        """The long fine-tune after the last step, and its test (without fine-tuning: the pruned accuracy)."""
        epochs = self.cfg.finetune.max_epochs
        if epochs <= 0:
            return state["pruned"]
        self.finetune_settings(model, epochs)
        self.fit(model, "finetune", epochs, ckpt_path=resume)
        return self.evaluate(model, "finetuned_test")

    def step_finetune_epochs(self) -> int:
        """Fine-tuning epochs after every step but the last (0 for one-shot pruning)."""
        schedule = self.cfg.pruning.schedule
        return 0 if schedule.name == "oneshot" else int(schedule.get("finetune_epochs", 0) or 0)

    @staticmethod
    def random_state_file(result: Path) -> Path:
        """Where this process keeps its random state as it was when ``result`` was computed: a rerun that reads
        ``result`` back instead of computing it again restores that state, so that it draws what an uninterrupted
        run draws."""
        return result.with_name(f"{result.stem}.random_state{rank_and_world_size()[0]}.pt")

    @staticmethod
    def is_global_zero() -> bool:
        return rank_and_world_size()[0] == 0

    def wall_s(self) -> float:
        """Seconds this run took: this process's time plus what interrupted earlier processes spent on the work it
        resumed (their pruning phases and checkpointed training epochs)."""
        return time.perf_counter() - self.started + self.carried_s

    def finish(self, model: ImageClassifier, state: dict[str, Any]) -> dict[str, Any]:
        """Save the final slimmed network and ``results.json``, log the summary, print the table."""
        summary = state["summary"]
        results = {
            "metric": self.metric.name, "metric_variant": getattr(self.metric, "variant", None),
            "scope": (f"connection/{self.metric.threshold}" if isinstance(self.metric, ConnectionCriterion)
                      else self.cfg.pruning.scope.name),
            "schedule": self.cfg.pruning.schedule.name, "target": float(self.cfg.pruning.target),
            "seed": self.cfg.get("seed"), "datamodule": self.datamodule.name,
            "network": self.cfg.model.net._target_,
            "acc_baseline": state["baseline"]["acc"], "acc_pruned": state["pruned"]["acc"],
            "acc_finetuned": state["finetuned"]["acc"],
            "val_acc_finetuned": self.evaluate(model, "finetuned_val", "validate")["acc"], **summary,
            "channels_before": state["channels_before"], "channels_after": state["channels_after"],
            "groups": state.get("groups", {}), "step_finetune_epochs": self.step_finetune_epochs(),
            "finetune_epochs": int(self.cfg.finetune.max_epochs), "wall_s": self.wall_s(),
            "phase_s": {name: round(seconds, 3) for name, seconds in self.phases.items()},
            "baseline_val_acc": state.get("baseline_curve"),
            "threads": torch.get_num_threads(),
            "settings_digest": settings_digest(self.cfg),
        }
        if self.is_global_zero():
            save_weights_checkpoint(model, self.out / "final.ckpt")
            atomic_write_text(self.out / "results.json", json.dumps(results, indent=2))
            scalars = {f"summary/{k}": float(v) for k, v in results.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            for logger in self.loggers:
                logger.log_metrics(scalars)
                log_channel_table(logger, state["channels_before"], state["channels_after"])
                log_results_record(logger, results)
                logger.save()
            print_results(results)
        return results
