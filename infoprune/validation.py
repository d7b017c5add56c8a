"""Check a whole run's config before any work: every setting a later phase reads is validated, and the cheap
objects (datamodule with its files, network on its example input, prunable layers, metric, a dry selection) are
built once, so a typo fails in seconds with an error naming the setting instead of after the baseline's epochs.
Nothing is written to the run directory."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig

from infoprune.builders import build_datamodule, build_model, first_line, source_checkpoint
from infoprune.callbacks.pruning import RESOURCES, SCOPES
from infoprune.datamodules.base import ImageDataModule
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.allocation import allocate_widths, read_table
from infoprune.pruning.cep import THRESHOLDS, ConnectionCriterion, prunable_weights
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.latency import LatencyCost, LatencySettings, LatencyTable
from infoprune.pruning.layers import TAP_POINTS, find_prunable_layers
from infoprune.pruning.metrics import GROUP_REDUCTIONS, ChannelScorer
from infoprune.pruning.schedule import SCHEDULES
from infoprune.pruning.selection import LAYERWISE_MODES, NORMALIZATIONS, select_global
from infoprune.pruning.stats import BINNINGS
from infoprune.search import CONSTRAINTS, OBJECTIVES


class ConfigError(ValueError):
    """A setting that cannot work; the message starts with its config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class CheckedRun:
    """What validation built and a run reuses: the datamodule (files checked, splits loaded), the metric and the
    contents of the checkpoint the run starts from (``init_from`` / ``ckpt_path``; None without one), read once.
    The network itself is built again by the run, after seeding, so that its initial weights follow the seed."""

    datamodule: ImageDataModule
    metric: ChannelScorer | ConnectionCriterion | None
    checkpoint: dict | None = None


def setting(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """The value at dotted ``key`` of ``cfg`` (``default`` when absent)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return default
        node = node[part]
    return node


def check_int(cfg: DictConfig, key: str, minimum: int, maximum: int | None = None) -> int:
    """``cfg[key]`` as an integer in ``[minimum, maximum]``."""
    value = setting(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(key, f"must be {bound}, got {value}")
    return value


def check_fraction(value: Any, key: str) -> float:
    """``value`` as a float in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(key, f"must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(cfg: DictConfig, key: str, choices: Iterable[str]) -> str:
    value, choices = setting(cfg, key), tuple(choices)
    if value not in choices:
        raise ConfigError(key, f"unknown value {value!r}; choose one of {choices}")
    return value


def check_names(names: Iterable[str], valid: list[str], key: str) -> None:
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ConfigError(key, f"names unknown layer(s) {unknown}; the prunable layers are {valid}")


def check_search(cfg: DictConfig) -> None:
    """``search.objective`` names a figure a search may maximise; every ``search.constraints`` entry bounds a
    figure that can be bounded by a positive number (infoprune/search.py)."""
    check_choice(cfg, "search.objective", OBJECTIVES)
    for key, bound in (setting(cfg, "search.constraints", {}) or {}).items():
        if key not in CONSTRAINTS:
            raise ConfigError("search.constraints", f"cannot bound {key!r}; choose among {CONSTRAINTS}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (math.isfinite(bound) and bound > 0):
            raise ConfigError(f"search.constraints.{key}", f"must be a positive number, got {bound!r}")


def check_targets(group: DictConfig | None, key: str) -> None:
    """Every ``_target_`` of a config group (callbacks, loggers) names an importable object."""
    for name, entry in (group or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            try:
                get_object(entry._target_)
            except Exception as error:  # noqa: BLE001 - any import failure is the same user error
                raise ConfigError(f"{key}.{name}._target_", f"cannot import {entry._target_!r} ({error})") from None


def check_scheduler(cfg: DictConfig, key: str) -> None:
    """The LR-scheduler config at ``key`` (a partial called with the optimizer, or null) builds one."""
    config = setting(cfg, key)
    if config is None:
        return
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        instantiate(config)(optimizer=optimizer)
    except Exception as error:  # noqa: BLE001 - a missing milestone, a bad target: the same user error
        raise ConfigError(key, f"does not build a learning-rate scheduler ({error})") from None


def check_trainer(cfg: DictConfig) -> None:
    """A GPU trainer on a machine where no GPU is visible is named before Lightning's own error."""
    accelerator = str(setting(cfg, "trainer.accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"{accelerator!r} asks for a GPU but no GPU is visible here; use "
                          "trainer=cpu (one process) or trainer=ddp_cpu (DDP with two CPU processes)")


def check_stats(cfg: DictConfig, datamodule: ImageDataModule) -> None:
    """The statistics settings (``pruning.stats``) that scoring reads; calibration images are at least one batch
    and at most the training split."""
    check_choice(cfg, "pruning.stats.tap", TAP_POINTS)
    bins = check_int(cfg, "pruning.stats.bins", 2)
    check_choice(cfg, "pruning.stats.binning", BINNINGS)
    check_int(cfg, "pruning.stats.fine_bins", bins)
    if setting(cfg, "pruning.stats.buffer_images") is not None:
        check_int(cfg, "pruning.stats.buffer_images", 0)
    batch = check_int(cfg, "pruning.stats.batch_size", 1)
    check_calibration_images(cfg, "pruning.stats.num_images", datamodule, minimum=batch,
                             hint="(at least pruning.stats.batch_size)")


def check_calibration_images(cfg: DictConfig, key: str, datamodule: ImageDataModule, minimum: int,
                             hint: str = "") -> int:
    """``cfg[key]`` images drawn from the training split: between ``minimum`` and the split's size."""
    datamodule.setup("fit")
    available = len(datamodule.calibration_dataset())
    value = setting(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= available:
        raise ConfigError(key, f"must be an integer in [{minimum}, {available}] {hint}(the training split of "
                          f"{datamodule.name} holds {available} images), got {value!r}")
    return value


def build_metric(cfg: DictConfig, target: float) -> ChannelScorer | ConnectionCriterion:
    """The configured criterion; its settings are checked by name first."""
    metric_cfg = cfg.pruning.metric
    if "threshold" in metric_cfg:
        check_choice(cfg, "pruning.metric.threshold", THRESHOLDS)
    if "hcep_fraction" in metric_cfg:
        fraction = check_fraction(metric_cfg.hcep_fraction, "pruning.metric.hcep_fraction")
        if fraction >= 1.0 - target:
            raise ConfigError("pruning.metric.hcep_fraction", f"HCEP keeps {fraction:.0%} of every group, more than "
                              f"the target density {1.0 - target:.0%}: lower it or pruning.target")
    if "order" in metric_cfg and metric_cfg.order not in (1, 2):
        raise ConfigError("pruning.metric.order", f"must be 1 or 2, got {metric_cfg.order!r}")
    try:
        metric = instantiate(metric_cfg)
    except InstantiationException as error:
        raise ConfigError("pruning.metric", str(error.__cause__ or error)) from None
    if not isinstance(metric, (ChannelScorer, ConnectionCriterion)):
        raise ConfigError("pruning.metric._target_", f"{metric_cfg._target_} is neither a channel scorer nor a "
                          "connection criterion")
    return metric


def check_schedule(cfg: DictConfig, connection: bool) -> None:
    schedule = check_choice(cfg, "pruning.schedule.name", SCHEDULES)
    if schedule == "iterative":
        check_int(cfg, "pruning.schedule.steps", 1)
    if schedule != "oneshot":
        check_int(cfg, "pruning.schedule.finetune_epochs", 0)
    if schedule == "layer_by_layer" and (connection or cfg.pruning.scope.name != "layerwise"):
        raise ConfigError("pruning.schedule", "layer_by_layer prunes one conv layer at a time: it needs channel "
                          "pruning with the layerwise scope")


def check_channel_scope(cfg: DictConfig, model: ImageClassifier, target: float) -> None:
    """The scope's settings, its layer names against the network's prunable layers, and (global) a dry selection
    that the target is reachable."""
    scope = check_choice(cfg, "pruning.scope.name", SCOPES)
    example = model.example_input_array
    layers = find_prunable_layers(model.net, example)
    if not layers:
        raise ConfigError("model.net", f"{cfg.model.net._target_} has no prunable convolution")
    names = [layer.name for layer in layers]
    min_channels = check_int(cfg, "pruning.scope.min_channels", 1)
    check_names(setting(cfg, "pruning.scope.exclude", []), names, "pruning.scope.exclude")
    if scope == "layerwise":
        check_choice(cfg, "pruning.scope.mode", LAYERWISE_MODES)
        check_int(cfg, "pruning.scope.round_to", 1)
        overrides = setting(cfg, "pruning.scope.overrides", {})
        check_names(overrides, names, "pruning.scope.overrides")
        for name, amount in overrides.items():
            check_fraction(amount, f"pruning.scope.overrides.{name}")
        return
    resource = check_choice(cfg, "pruning.scope.resource", RESOURCES)
    if scope == "sensitivity":
        if resource == "latency":
            raise ConfigError("pruning.scope.resource", "a latency budget needs the global scope "
                              "(pruning/scope=global pruning.scope.resource=latency)")
        check_sensitivity_scope(cfg, model, layers, target, resource, min_channels)
        return
    check_choice(cfg, "pruning.scope.normalization", ("auto",) + NORMALIZATIONS)
    cost = latency_cost(cfg, model, layers) if resource == "latency" else PruningCost(model.net, layers, example)
    zeros = {layer.name: torch.zeros(layer.num_channels) for layer in layers}
    try:
        select_global(zeros, layers, cost, 1.0 - target, resource=resource,
                      min_channels=min_channels, exclude=list(setting(cfg, "pruning.scope.exclude", [])))
    except ValueError as error:
        raise ConfigError("pruning.target", str(error)) from None


def latency_settings(cfg: DictConfig) -> LatencySettings:
    """``pruning.scope.latency`` with the table cache ``latency_cache``."""
    try:
        return LatencySettings(**(setting(cfg, "pruning.scope.latency", {}) or {}),
                               cache_dir=setting(cfg, "latency_cache"))
    except (TypeError, ValueError) as error:
        raise ConfigError("pruning.scope.latency", str(error)) from None


def latency_cost(cfg: DictConfig, model: ImageClassifier, layers: list) -> LatencyCost:
    """A latency budget's predicted cost: only with one-shot pruning (the pipeline's steps measure their budget
    against the network as it is, which a latency table of the dense network does not describe); the table is
    measured here, on the job's device, and kept in ``latency_cache`` for the job."""
    if setting(cfg, "pruning.schedule.name") != "oneshot":
        raise ConfigError("pruning.schedule", "a latency budget prunes in one shot: use pruning/schedule=oneshot")
    example = model.example_input_array
    table = LatencyTable.measure(model.net, example, latency_settings(cfg))
    return LatencyCost(model.net, layers, example, table)


def check_sensitivity_scope(cfg: DictConfig, model: ImageClassifier, layers: list, target: float, resource: str,
                            min_channels: int) -> None:
    """The sensitivity table loads and names only prunable layers, the schedule is one-shot, and (a dry
    allocation) its ratios can reach the target."""
    mode = check_choice(cfg, "pruning.scope.mode", LAYERWISE_MODES)
    round_to = check_int(cfg, "pruning.scope.round_to", 1)
    if setting(cfg, "pruning.schedule.name") != "oneshot":
        raise ConfigError("pruning.schedule", "the sensitivity scope prunes in one shot (its table is measured on "
                          "the unpruned network): use pruning/schedule=oneshot")
    path = setting(cfg, "pruning.scope.table")
    if not path:
        raise ConfigError("pruning.scope.table", "name the sensitivity CSV written by python -m infoprune.sensitivity")
    try:
        table = read_table(path)
    except (OSError, ValueError) as error:
        raise ConfigError("pruning.scope.table", str(error)) from None
    check_names(list(table.curves), [layer.name for layer in layers], "pruning.scope.table")
    zeros = {layer.name: torch.zeros(layer.num_channels) for layer in layers}
    try:
        allocate_widths(table, layers, zeros, PruningCost(model.net, layers, model.example_input_array), target,
                         resource, mode, min_channels, round_to, list(setting(cfg, "pruning.scope.exclude", [])))
    except ValueError as error:
        raise ConfigError("pruning.target", str(error)) from None


def check_example_forward(model: ImageClassifier, cfg: DictConfig) -> None:
    """The network runs on one image of the datamodule's shape and gives one finite logit per class."""
    try:
        with torch.no_grad():
            logits = model.eval()(model.example_input_array)
    except Exception as error:  # noqa: BLE001 - any failure here means the network does not fit the data
        raise ConfigError("model.net", f"{cfg.model.net._target_} fails on an input of shape "
                          f"{tuple(model.example_input_array.shape)}: {error}") from None
    finally:
        model.train()
    if logits.shape != (1, model.num_classes):
        raise ConfigError("model.net", f"gives outputs of shape {tuple(logits.shape)} for one image, expected "
                          f"(1, {model.num_classes})")


def check_output_dir(cfg: DictConfig) -> None:
    """``paths.output_dir`` is a folder this process can write in, or one it can create (nothing is created here:
    a temporary file in the nearest existing folder on its path is written and removed)."""
    out = Path(str(setting(cfg, "paths.output_dir")))
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir():
        raise ConfigError("paths.output_dir", f"{out} is not a folder this job can write in: {existing} is a file; "
                          f"choose another (hydra.run.dir=...)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError("paths.output_dir", f"{out} is not a folder this job can write in "
                          f"({first_line(error)}); choose another (hydra.run.dir=...)") from None


def check_common(cfg: DictConfig) -> tuple[ImageDataModule, ImageClassifier, dict | None]:
    """Threads, trainer, callbacks, loggers, data and network: what train.py and prune.py share. Returns the
    datamodule, the network and the contents of the checkpoint it was loaded from (None without one)."""
    check_output_dir(cfg)
    if setting(cfg, "threads", "auto") != "auto":
        check_int(cfg, "threads", 1)
    check_trainer(cfg)
    check_scheduler(cfg, "model.scheduler")
    check_targets(cfg.get("callbacks"), "callbacks")
    check_targets(cfg.get("logger"), "logger")
    datamodule = build_datamodule(cfg)
    checkpoint = source_checkpoint(cfg)
    model = build_model(cfg, datamodule, checkpoint)
    check_example_forward(model, cfg)
    return datamodule, model, checkpoint


def validate_training(cfg: DictConfig) -> CheckedRun:
    """Everything ``train.py`` reads; channel-scoring settings too when a ChannelScoring callback is configured."""
    datamodule, _, checkpoint = check_common(cfg)
    if cfg.get("train", True):
        check_int(cfg, "trainer.max_epochs", 1)
    metric = None
    scoring = [c for c in (cfg.get("callbacks") or {}).values()
               if isinstance(c, DictConfig) and str(c.get("_target_", "")).endswith("ChannelScoring")]
    if scoring:
        metric = build_metric(cfg, 0.0)
        check_stats(cfg, datamodule)
    return CheckedRun(datamodule, metric, checkpoint)


def validate_pruning(cfg: DictConfig) -> CheckedRun:
    """Everything ``prune.py`` reads, in the order a user would fix it."""
    target = check_fraction(setting(cfg, "pruning.target"), "pruning.target")
    check_search(cfg)
    metric = build_metric(cfg, target)
    connection = isinstance(metric, ConnectionCriterion)
    check_schedule(cfg, connection)
    check_int(cfg, "finetune.max_epochs", 0)
    lr = setting(cfg, "finetune.lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ConfigError("finetune.lr", f"must be a positive number, got {lr!r}")
    check_scheduler(cfg, "finetune.scheduler")
    if not cfg.get("ckpt_path"):
        check_int(cfg, "trainer.max_epochs", 1)
    datamodule, model, checkpoint = check_common(cfg)
    if connection:
        exclude = setting(cfg, "pruning.exclude_layers", []) or []
        if not isinstance(exclude, (list, ListConfig)):
            raise ConfigError("pruning.exclude_layers", f"must be a list of layer names, got {exclude!r}")
        try:
            if not prunable_weights(model.net, exclude):
                raise ConfigError("pruning.exclude_layers", "excludes every conv and linear layer")
        except KeyError as error:
            raise ConfigError("pruning.exclude_layers", str(error.args[0])) from None
        if metric.needs_data:
            check_int(cfg, "pruning.stats.batch_size", 1)
            check_calibration_images(cfg, "pruning.stats.num_images", datamodule, 1)
    else:
        check_channel_scope(cfg, model, target)
        check_choice(cfg, "pruning.group_reduction", GROUP_REDUCTIONS)
        if metric.needs_data:
            check_stats(cfg, datamodule)
        if setting(cfg, "pruning.recalibrate_bn_images", 0):
            check_int(cfg, "pruning.stats.batch_size", 1)
            check_calibration_images(cfg, "pruning.recalibrate_bn_images", datamodule, 1)
    return CheckedRun(datamodule, metric, checkpoint)
