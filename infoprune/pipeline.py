"""Prune a network end to end (the body of ``prune.py``): baseline -> per step (statistics -> scores -> selection ->
slimming -> short fine-tune) -> fine-tune -> test, with accuracy at three points (baseline, right after pruning,
after fine-tuning). Every phase gets a fresh Trainer (and so a fresh optimizer and DDP wrapper around the slimmed
network); every process computes the same statistics (reduced across ranks) and so chooses the same channels."""
from __future__ import annotations

import copy
import fcntl
import hashlib
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
from rich.console import Console
from rich.table import Table

from infoprune.builders import build_model, check_checkpoint_fits, read_checkpoint
from infoprune.callbacks.cep import ConnectionScoring, apply_connection_masks, make_permanent
from infoprune.callbacks.channel_scores import ChannelScoring
from infoprune.callbacks.distillation import KnowledgeDistillation, frozen_copy
from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.callbacks.pruning import ChannelPruning
from infoprune.config import flatten, instantiate_group, print_config_tree, resolved
from infoprune.console import announce_phase, quiet_terminal
from infoprune.io import atomic_save, atomic_write_text
from infoprune.loggers import log_channel_table, log_results_record, log_score_histograms
from infoprune.models.classifier import ImageClassifier, count_flops, count_parameters
from infoprune.pruning.batchnorm import recalibrate_batchnorm
from infoprune.pruning.cep import ConnectionCriterion, connection_masks, density_schedule, prunable_weights
from infoprune.pruning.cost import output_positions
from infoprune.pruning.distributed import barrier, rank_and_world_size
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import Entropy, MutualInformation
from infoprune.pruning.schedule import PruningStep, plan_schedule
from infoprune.pruning.sparse import save_sparse
from infoprune.pruning.storage import load_channel_scores
from infoprune.pruning.summary import PruningSummary
from infoprune.threads import apply_job_threads
from infoprune.training import ValidationCurve, best_checkpoint, random_state, set_random_state
from infoprune.validation import CheckedRun, latency_settings, validate_pruning

log = logging.getLogger(__name__)


#: settings added after runs were recorded (by their path in the config), each with the value that does what those
#: runs did: at that value a setting is left out of :func:`resume_key`, so that their records still match the
#: settings that reproduce them
SETTINGS_ADDED = {("pruning", "recalibrate_bn_augment"): False,
                  ("finetune", "distill"): {"alpha": 0.0, "temperature": 4.0},
                  ("pruning", "stats", "buffer_images"): 2048,  # speed and memory only: the statistics are the same
                  ("pruning", "scope", "latency"): {"batch_size": 64, "repeats": 15,
                                                    "fractions": [0.125, 0.25, 0.5, 0.75, 1.0], "tolerance": 0.03,
                                                    "rounds": 5}}

#: datamodule settings that say where the data lives (and whether to fetch it), not what it is: left out of every
#: key, so that a run, a record or a cached baseline is recognised on a machine that keeps the data elsewhere
DATA_LOCATION = ("data_dir", "cache_dir", "download")


def data_identity(datamodule: dict) -> dict:
    """The resolved datamodule settings less :data:`DATA_LOCATION`: the data and how it is split, batched and
    augmented."""
    return {name: value for name, value in datamodule.items() if name not in DATA_LOCATION}


def network_digest(model: torch.nn.Module) -> str:
    """md5 of every tensor of ``model``'s state dict (names, shapes and bytes): equal exactly when the networks are."""
    digest = hashlib.md5()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resume_key(cfg: DictConfig) -> dict:
    """The settings a resumed run must share with the interrupted one (and a finished run with its rerun), less
    the data's location (:func:`data_identity`) and those of :data:`SETTINGS_ADDED` at their earlier behaviour's
    value."""
    full = resolved(cfg)
    key = {name: full.get(name) for name in ("model", "pruning", "finetune", "ckpt_path", "seed")}
    key["datamodule"] = data_identity(full["datamodule"])
    key = copy.deepcopy(key)
    for (*sections, name), earlier in SETTINGS_ADDED.items():
        parent = key
        for section in sections:
            parent = parent.get(section) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and name in parent and parent[name] == earlier:
            del parent[name]
    return key


def settings_digest(cfg: DictConfig) -> str:
    """A short hash of :func:`resume_key`, stored in ``results.json`` to recognise a finished run."""
    return hashlib.sha1(json.dumps(resume_key(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def baseline_cache_file(cfg: DictConfig) -> Path | None:
    """``<baseline_cache>/<hash>.ckpt`` for the settings that determine a trained baseline (model, optimizer and
    scheduler, data (:func:`data_identity`), training epochs, seed), or None when ``baseline_cache`` is unset."""
    if not cfg.get("baseline_cache"):
        return None
    full = resolved(cfg)
    key = {"model": full["model"], "datamodule": data_identity(full["datamodule"]),
           "epochs": full["trainer"]["max_epochs"], "seed": full.get("seed")}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.baseline_cache) / f"baseline-{digest}.ckpt"


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


class PruningRun:
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
        self.channel_pruning = None if isinstance(self.metric, ConnectionCriterion) else self.channel_callback()

    def channel_callback(self) -> ChannelPruning:
        """The drop-in callback configured as this run's scope: ``prune.py`` selects and slims through it, the way
        a user's Trainer would."""
        scope = self.cfg.pruning.scope
        normalization = scope.get("normalization", "max")
        if normalization == "auto":
            normalization = "none" if isinstance(self.metric, (MutualInformation, Entropy)) else "max"
        return ChannelPruning(self.metric, float(self.cfg.pruning.target), scope=scope.name,
                              mode=scope.get("mode", "params"), resource=scope.get("resource", "params"),
                              normalization=normalization, min_channels=scope.min_channels,
                              network="net", stats=resolved(self.cfg.pruning.stats),
                              group_reduction=self.cfg.pruning.get("group_reduction", "mean"),
                              round_to=scope.get("round_to", 1), overrides=dict(scope.get("overrides") or {}),
                              exclude=list(scope.exclude), sensitivity=scope.get("table"),
                              latency=latency_settings(self.cfg) if scope.get("resource") == "latency" else None)

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

    def scores(self, model: ImageClassifier, step_dir: str) -> dict[str, torch.Tensor]:
        """Scores of every prunable channel (statistics collected inside a validate run, sharded over ranks). A
        rerun of an interrupted job reads them back from ``<step_dir>/channel_scores.pt`` when they were computed
        with these settings on this very network (``scores_key.json``: settings digest, md5 of the weights)."""
        key = {"settings_digest": settings_digest(self.cfg), "network_md5": network_digest(model)}
        saved, key_file = self.out / step_dir / "channel_scores.pt", self.out / step_dir / "scores_key.json"
        rng = self.random_state_file(saved)
        if saved.exists() and key_file.exists() and rng.exists() and json.loads(key_file.read_text()) == key:
            log.info("scores of %s from %s (computed before the interruption)", step_dir, saved)
            set_random_state(torch.load(rng, weights_only=True))  # as if the statistics pass had run here
            return {name: layer["scores"] for name, layer in load_channel_scores(saved)["layers"].items()}
        scoring = ChannelScoring(self.metric, stats=resolved(self.cfg.pruning.stats), save_dir=str(self.out / step_dir),
                                 stage="validate", group_reduction=self.cfg.pruning.get("group_reduction", "mean"))
        self.collect(step_dir, scoring, model)
        atomic_save(random_state(), rng)
        barrier()  # every process's random state is saved before the key says the scores can be reused
        if self.is_global_zero():
            atomic_write_text(key_file, json.dumps(key))
            for logger in self.loggers:
                log_score_histograms(logger, step_dir, scoring.scores)
        return scoring.scores

    def select(self, model: ImageClassifier, scores: dict[str, torch.Tensor], step: PruningStep,
               dense: dict[str, int]) -> dict[str, torch.Tensor]:
        """Channels to keep after ``step`` (``dense``: params and FLOPs of the unpruned network), chosen by the
        channel-pruning callback on the network as it is now (slimmed by the earlier steps)."""
        example = model.example_input_array.to(model.device)
        layers = find_prunable_layers(model.net, example)
        pruning = self.channel_pruning
        amount = step.amount
        if pruning.scope == "global" and pruning.resource != "latency":  # latency: one-shot only
            current = count_parameters(model.net) if pruning.resource == "params" else count_flops(model.net, example)
            amount = 1.0 - min(1.0, step.remaining * dense[pruning.resource] / current)
        return pruning.select(model.net, layers, scores, amount, example, only=step.layers)

    def recalibrate(self, model: ImageClassifier) -> None:
        """Re-estimate BatchNorm statistics on ``pruning.recalibrate_bn_images`` training images (0: off), augmented
        as in training when ``pruning.recalibrate_bn_augment``; the same images and augmentation on every process so
        every rank keeps the same network."""
        images = int(self.cfg.pruning.get("recalibrate_bn_images") or 0)
        if images > 0:
            stats = self.cfg.pruning.stats
            batches = self.datamodule.calibration_batches(images, stats.batch_size, stats.seed, model.device,
                                                          augment=bool(self.cfg.pruning.get("recalibrate_bn_augment")))
            with self.timed("recalibration"):
                recalibrate_batchnorm(model.net, batches)

    def finetune_settings(self, model: ImageClassifier, epochs: int) -> None:
        """Fine-tuning runs at ``finetune.lr`` with ``finetune.scheduler`` (null: the baseline's own scheduler), its
        ``T_max`` (a cosine's length) set to the fine-tuning's own ``epochs``."""
        model.hparams.optimizer["lr"] = float(self.cfg.finetune.lr)
        if self.cfg.finetune.get("scheduler") is not None:
            model.hparams.scheduler = OmegaConf.to_container(self.cfg.finetune.scheduler, resolve=True)
        if model.hparams.scheduler and "T_max" in model.hparams.scheduler:
            model.hparams.scheduler["T_max"] = max(1, int(epochs))

    def step_finetune_epochs(self) -> int:
        """Fine-tuning epochs after every step but the last (0 for one-shot pruning)."""
        schedule = self.cfg.pruning.schedule
        return 0 if schedule.name == "oneshot" else int(schedule.get("finetune_epochs", 0) or 0)

    def save_state(self, state: dict[str, Any]) -> None:
        state["phases"] = dict(self.phases)
        if self.is_global_zero():
            atomic_write_text(self.out / "state.json", json.dumps(state, indent=2))

    def run(self) -> dict[str, Any]:
        """The whole pipeline; a rerun in the same output directory resumes an interrupted job: its baseline
        (:meth:`baseline`), its scores (:meth:`scores`) and its fine-tune are taken up where they were left."""
        if isinstance(self.metric, ConnectionCriterion):
            return self.run_connections()
        state_file, last = self.out / "state.json", self.out / "finetune" / "checkpoints" / "last.ckpt"
        if state_file.exists() and last.exists():
            state = json.loads(state_file.read_text())
            if state.get("settings") != resume_key(self.cfg):
                raise ValueError(f"{self.out} holds an interrupted run with other settings; rerun with those "
                                 f"settings to resume it, or choose another output directory")
            log.info("resuming the fine-tune from %s", last)
            if self.distills():
                self.baseline()  # its teacher
            self.phases.update(state.get("phases", {}))
            self.carried_s += sum(self.phases.values())
            model = ImageClassifier.load_from_checkpoint(self.out / "pruned.ckpt", weights_only=True)
            resume = str(last)
        else:
            model, state = self.prune_channels()
            resume = None
        state["finetuned"] = self.final_finetune(model, state, resume)
        return self.finish(model, state)

    def prune_channels(self) -> tuple[ImageClassifier, dict[str, Any]]:
        """Baseline, then every step of the schedule; saves ``pruned.ckpt`` and ``state.json`` (what a resumed run
        starts from)."""
        state: dict[str, Any] = {"settings": resume_key(self.cfg)}
        model = self.baseline()
        state["baseline"] = self.evaluate(model, "baseline_test")
        state["baseline_curve"] = self.baseline_curve
        example = model.example_input_array.to(model.device)
        layers = find_prunable_layers(model.net, example)
        dense = {"params": count_parameters(model.net), "flops": count_flops(model.net, example)}
        schedule = self.cfg.pruning.schedule
        plan = plan_schedule(schedule.name, self.cfg.pruning.target, self.cfg.pruning.scope.name,
                             [layer.name for layer in layers], schedule.get("steps", 1),
                             schedule.get("finetune_epochs", 0))
        channels_before = {layer.name: layer.num_channels for layer in layers}
        for i, step in enumerate(plan):
            scores = self.scores(model, f"step_{i}")
            with self.timed(f"step_{i}/selection_slimming"):
                self.channel_pruning.slim_now(None, model, self.select(model, scores, step, dense))
            if step.finetune_epochs:
                self.finetune_settings(model, step.finetune_epochs)
                self.fit(model, f"step_{i}_finetune", step.finetune_epochs)
        self.recalibrate(model)
        after = {layer.name: layer.num_channels for layer in find_prunable_layers(model.net, example)}
        summary = PruningSummary(channels_before, after, dense["params"], count_parameters(model.net),
                                 dense["flops"], count_flops(model.net, example))
        state["pruned"] = self.evaluate(model, "pruned_test")
        state["summary"] = {**summary.metrics(prefix=""), **(self.channel_pruning.latency_record or {})}
        state["channels_before"], state["channels_after"] = channels_before, after
        state["groups"] = {layer.name: layer.member_names for layer in layers if len(layer.members) > 1}
        if self.is_global_zero():
            save_weights_checkpoint(model, self.out / "pruned.ckpt")
        self.save_state(state)
        return model, state

    def final_finetune(self, model: ImageClassifier, state: dict[str, Any], resume: str | None = None) -> dict:
        """The long fine-tune after the last step, and its test (without fine-tuning: the pruned accuracy)."""
        epochs = self.cfg.finetune.max_epochs
        if epochs <= 0:
            return state["pruned"]
        self.finetune_settings(model, epochs)
        self.fit(model, "finetune", epochs, ckpt_path=resume)
        return self.evaluate(model, "finetuned_test")

    def connection_errors(self, model: ImageClassifier, layers: dict, step_dir: str) -> dict[str, torch.Tensor]:
        stats = self.cfg.pruning.stats
        scoring = ConnectionScoring(self.metric, layers, stats.num_images, stats.batch_size, stats.seed)
        self.collect(step_dir, scoring, model)
        return scoring.errors

    def run_connections(self) -> dict[str, Any]:
        """Connection pruning (CEP, HCEP, magnitude, LAMP, SNIP): per step, errors -> masks to the step's density ->
        retrain; then the final retraining with masks, masks made permanent, the sparse file written and measured."""
        model = self.baseline()
        state: dict[str, Any] = {"baseline": self.evaluate(model, "baseline_test"), "baseline_curve": self.baseline_curve}
        layers = prunable_weights(model.net, self.cfg.pruning.get("exclude_layers") or [])
        schedule = self.cfg.pruning.schedule
        if schedule.name == "layer_by_layer":
            raise ValueError("connection pruning supports the oneshot and iterative schedules")
        steps = schedule.get("steps", 1) if schedule.name == "iterative" else 1
        masks = None
        for i, density in enumerate(density_schedule(1.0 - float(self.cfg.pruning.target), steps)):
            errors = self.connection_errors(model, layers, f"step_{i}")
            with self.timed(f"step_{i}/selection_masking"):
                masks = connection_masks(errors, density, self.metric.hcep_fraction, previous=masks,
                                         threshold=self.metric.threshold)
                apply_connection_masks(layers, masks)
            if i < steps - 1 and schedule.get("finetune_epochs", 0):
                self.finetune_settings(model, schedule.finetune_epochs)
                self.fit(model, f"step_{i}_finetune", schedule.finetune_epochs)
        state["pruned"] = self.evaluate(model, "pruned_test")
        state["finetuned"] = self.final_finetune(model, state)
        make_permanent(layers)
        state["summary"] = self.storage_summary(model, layers, masks)
        names = list(layers)
        state["channels_before"] = {n: int(masks[n].numel()) for n in names}
        state["channels_after"] = {n: int(masks[n].sum()) for n in names}
        return self.finish(model, state)

    def storage_summary(self, model: ImageClassifier, layers: dict, masks: dict) -> dict[str, float]:
        """Parameters, FLOPs (multiply-adds with a nonzero weight) and bytes on disk, dense vs sparse."""
        example = model.example_input_array.to(model.device)
        positions = output_positions(model.net, example)
        dense_flops = count_flops(model.net, example)
        saved_flops = sum(2 * int((~masks[n]).sum()) * positions[m] for n, m in layers.items())
        params = count_parameters(model.net)
        removed = sum(int((~mask).sum()) for mask in masks.values())
        connections = sum(mask.numel() for mask in masks.values())
        summary = {"params_before": params, "params_after": params - removed,
                   "params_remaining": (params - removed) / params, "flops_before": dense_flops,
                   "flops_after": dense_flops - saved_flops, "flops_remaining": (dense_flops - saved_flops) / dense_flops,
                   "flops_reduction": dense_flops / max(dense_flops - saved_flops, 1),
                   "density": (connections - removed) / connections}
        if self.is_global_zero():
            state_dict = model.net.state_dict()
            sparse_keys = [f"{n}.weight" for n in layers]
            atomic_save(state_dict, self.out / "dense_weights.pt")
            for encoding in ("absolute", "relative8"):
                save_sparse(state_dict, sparse_keys, self.out / f"sparse_{encoding}.pt", indices=encoding)
                summary[f"bytes_sparse_{encoding}"] = (self.out / f"sparse_{encoding}.pt").stat().st_size
            summary["bytes_dense"] = (self.out / "dense_weights.pt").stat().st_size
            summary["storage_reduction"] = summary["bytes_dense"] / summary["bytes_sparse_relative8"]
        return summary

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


def print_results(results: dict[str, Any]) -> None:
    """The per-layer table and the accuracy/size table of a finished run."""
    connection = str(results["scope"]).startswith("connection")
    summary = PruningSummary(results["channels_before"], results["channels_after"], int(results["params_before"]),
                             int(results["params_after"]), int(results["flops_before"]), int(results["flops_after"]),
                             results.get("groups", {}), unit="weights" if connection else "channels")
    console = Console()
    summary.print(console)
    table = Table(title=f"{results['metric']} / {results['scope']} / {results['schedule']} / target {results['target']}")
    for column in ("", "test accuracy", "params", "FLOPs"):
        table.add_column(column, justify="right")
    table.add_row("baseline", f"{results['acc_baseline']:.2%}", f"{int(results['params_before']):,}",
                  f"{int(results['flops_before']):,}")
    table.add_row(pruned_row_label(results), f"{results['acc_pruned']:.2%}", f"{int(results['params_after']):,}",
                  f"{int(results['flops_after']):,}")
    table.add_row("pruned + fine-tuned", f"{results['acc_finetuned']:.2%}",
                  f"{results['params_remaining']:.1%} left", f"{results['flops_reduction']:.2f}x fewer")
    console.print(table)


def pruned_row_label(results: dict[str, Any]) -> str:
    """What "right after pruning" includes: the short fine-tunes between steps, where the schedule has them."""
    between = int(results.get("step_finetune_epochs", 0) or 0)
    if not between:
        return "pruned, no fine-tune"
    per = "per-layer" if results["schedule"] == "layer_by_layer" else "per-step"
    return f"pruned, {per} fine-tunes only"


def finished_results(cfg: DictConfig) -> dict[str, Any] | None:
    """``results.json`` of a finished run with these settings in ``cfg``'s output directory, else None; a finished
    run with other settings there is an error (it would be overwritten)."""
    path = Path(cfg.paths.output_dir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if results.get("settings_digest") != settings_digest(cfg):
        raise ValueError(f"{path.parent} holds a finished run with other settings; choose another output directory "
                         f"(hydra.run.dir=...) to keep both")
    return results


def prune(cfg: DictConfig) -> dict[str, Any]:
    """Run the pruning pipeline of ``cfg``, returning ``results.json``'s content. The whole config is checked
    first; a finished run with the same settings in the output directory is returned without touching a file of
    it (rerunning a sweep fills in only its missing jobs)."""
    quiet_terminal(bool(cfg.get("verbose", False)))
    checked = validate_pruning(cfg)
    finished = finished_results(cfg)
    if finished is not None:
        print(f"{cfg.paths.output_dir} already holds this run's results; nothing to do")
        return finished
    apply_job_threads(cfg.get("threads", "auto"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    return PruningRun(cfg, checked).run()
