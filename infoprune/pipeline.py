"""Prune a network's channels end to end (the body of ``prune.py``): baseline -> per step (statistics -> scores ->
selection -> slimming -> short fine-tune) -> BatchNorm re-estimation -> fine-tune -> test, with accuracy at three
points (baseline, right after pruning, after fine-tuning). Statistics and scores come from the ``ChannelScoring``
callback inside a validate run (the way every process of a DDP job reaches it), selection and slimming from the
``ChannelPruning`` callback configured as the run's scope: the callbacks a user adds to their own Trainer. Every
process computes the same statistics (reduced across ranks) and so chooses the same channels. Connection pruning:
``connection_run.ConnectionRun``."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from infoprune.callbacks.channel_scores import ChannelScoring
from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.callbacks.pruning import ChannelPruning
from infoprune.config import print_config_tree, resolved
from infoprune.connection_run import ConnectionRun
from infoprune.console import quiet_terminal
from infoprune.io import atomic_save, atomic_write_text
from infoprune.job import Job
from infoprune.loggers import log_score_histograms
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.batchnorm import recalibrate_batchnorm
from infoprune.pruning.cep import ConnectionCriterion
from infoprune.pruning.cost import count_flops, count_parameters
from infoprune.pruning.distributed import barrier
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import Entropy, MutualInformation
from infoprune.pruning.schedule import PruningStep, plan_schedule
from infoprune.pruning.storage import load_channel_scores
from infoprune.pruning.summary import PruningSummary
from infoprune.run_identity import finished_results, network_digest, resume_key, settings_digest
from infoprune.threads import apply_job_threads
from infoprune.training import random_state, set_random_state
from infoprune.validation import CheckedRun, latency_settings, validate_pruning

log = logging.getLogger(__name__)


class PruningRun(Job):
    """A channel-pruning job: :meth:`run` prunes, fine-tunes and records; a rerun resumes where it was left."""

    def __init__(self, cfg: DictConfig, checked: CheckedRun) -> None:
        super().__init__(cfg, checked)
        self.channel_pruning = self.channel_callback()

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

    def run(self) -> dict[str, Any]:
        """The whole pipeline; a rerun in the same output directory resumes an interrupted job: its baseline
        (:meth:`baseline`), its scores (:meth:`scores`) and its fine-tune are taken up where they were left."""
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
                                 stage="validate", group_reduction=self.cfg.pruning.get("group_reduction", "mean"),
                                 network="net")
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

    def save_state(self, state: dict[str, Any]) -> None:
        state["phases"] = dict(self.phases)
        if self.is_global_zero():
            atomic_write_text(self.out / "state.json", json.dumps(state, indent=2))


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
    job = ConnectionRun if isinstance(checked.metric, ConnectionCriterion) else PruningRun
    return job(cfg, checked).run()
