"""Sensitivity analysis: prune one channel group at a time at each of ``sensitivity.ratios`` with the configured
criterion, measure validation accuracy without fine-tuning (BatchNorm re-estimated on
``sensitivity.recalibrate_bn_images`` training images, augmented as in training when
``sensitivity.recalibrate_bn_augment``; 0 images: off), and write ``sensitivity.csv`` with two plots
(accuracy against ratio, one line per group; a heat map of the accuracy lost).

    DATA_DIR=../shared/datasets python -m infoprune.sensitivity experiment=cpu/layerwise_cifar10_jpeg \\
        pruning/metric=l1_in
    # the groups split over parallel jobs; the shards are merged into <sweep dir>/sensitivity.csv at the end:
    python -m infoprune.sensitivity -m sensitivity.num_shards=2 sensitivity.shard=0,1 hydra/launcher=local_parallel

The table feeds ``pruning/scope=sensitivity`` (per-group amounts for a network-wide target). The baseline comes
from ``ckpt_path``, the baseline cache or is trained first, as in ``prune.py``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import matplotlib  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infoprune.builders import build_model  # noqa: E402
from infoprune.config import print_config_tree  # noqa: E402
from infoprune.console import quiet_terminal  # noqa: E402
from infoprune.io import save_figure  # noqa: E402
from infoprune.pipeline import PruningRun  # noqa: E402
from infoprune.pruning.allocation import read_rows, read_table, write_table  # noqa: E402
from infoprune.pruning.batchnorm import recalibrate_batchnorm  # noqa: E402
from infoprune.pruning.cep import ConnectionCriterion  # noqa: E402
from infoprune.pruning.cost import PruningCost  # noqa: E402
from infoprune.pruning.layers import find_prunable_layers  # noqa: E402
from infoprune.pruning.masks import apply_channel_masks, removed_channels  # noqa: E402
from infoprune.pruning.selection import keep_top_channels, layer_keep_count  # noqa: E402
from infoprune.threads import apply_job_threads  # noqa: E402
from infoprune.validation import (  # noqa: E402
    ConfigError,
    check_calibration_images,
    check_choice,
    check_int,
    check_names,
    setting,
    validate_pruning,
)

log = logging.getLogger(__name__)


def check_ratios(ratios: list[float]) -> list[float]:
    """Sorted, distinct ratios, each in (0, 1), or a ``ValueError`` naming the bad one."""
    if not ratios:
        raise ValueError("sensitivity.ratios is empty")
    for ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"sensitivity ratios must be in (0, 1), got {ratio!r}")
    return sorted({float(r) for r in ratios})


def check_sensitivity(cfg: DictConfig) -> tuple[Any, list[float], list[str] | None]:
    """Everything the job reads, before any training: the pruning settings (a channel criterion), the ratios,
    the groups to measure, the shard, the BatchNorm images. Returns the checked run, the ratios and the groups."""
    checked = validate_pruning(cfg)
    if "ddp" in str(setting(cfg, "trainer.strategy", "auto")) or setting(cfg, "trainer.devices", 1) not in (1, "1"):
        raise ConfigError("trainer", "a sensitivity job runs in one process; split the groups over parallel jobs "
                          "with a multirun over sensitivity.shard instead")
    if isinstance(checked.metric, ConnectionCriterion):
        raise ConfigError("pruning.metric", "sensitivity analysis prunes channel groups: choose a channel criterion")
    try:
        ratios = check_ratios(list(setting(cfg, "sensitivity.ratios")))
    except (TypeError, ValueError) as error:
        raise ConfigError("sensitivity.ratios", str(error)) from None
    check_choice(cfg, "sensitivity.mode", ("params", "channels"))
    shards = check_int(cfg, "sensitivity.num_shards", 1)
    shard = check_int(cfg, "sensitivity.shard", 0)
    if shard >= shards:
        raise ConfigError("sensitivity.shard", f"must be below sensitivity.num_shards ({shards}), got {shard}")
    if setting(cfg, "sensitivity.recalibrate_bn_images", 0):
        check_calibration_images(cfg, "sensitivity.recalibrate_bn_images", checked.datamodule, 1)
    model = build_model(cfg, checked.datamodule, checked.checkpoint)
    names = [layer.name for layer in find_prunable_layers(model.net, model.example_input_array)]
    layers = setting(cfg, "sensitivity.layers", None)
    if layers is not None:
        check_names(list(layers), names, "sensitivity.layers")
    return checked, ratios, list(layers) if layers is not None else None


class SensitivityRun(PruningRun):
    """One sensitivity job: the baseline, its scores, then every (group, ratio) of this shard."""

    def evaluator(self) -> pl.Trainer:
        """One quiet single-process Trainer for all the validation passes (the job shows one progress bar)."""
        return instantiate(self.cfg.trainer, devices=1, strategy="auto", num_nodes=1, callbacks=[], logger=False,
                           enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           default_root_dir=str(self.out / "sensitivity"))

    def measure(self, ratios: list[float], only: list[str] | None) -> list[dict]:
        """One row per (group of this shard, ratio): validation accuracy with that group alone pruned by the ratio
        (its lowest-scored channels masked, BatchNorm re-estimated when set), and the network's parameters and
        FLOPs that removes. ``baseline_acc`` is the unpruned network's, after the same BatchNorm re-estimation."""
        cfg = self.cfg
        model = self.baseline()
        example = model.example_input_array.to(model.device)
        layers = find_prunable_layers(model.net, example)
        chosen = [layer for layer in layers if only is None or layer.name in only]
        chosen = chosen[int(cfg.sensitivity.shard)::int(cfg.sensitivity.num_shards)]
        trainer = self.evaluator()
        scores = self.scores(model, "scores")
        images, stats = int(cfg.sensitivity.get("recalibrate_bn_images") or 0), cfg.pruning.stats
        augment = bool(cfg.sensitivity.get("recalibrate_bn_augment"))
        original = {k: v.clone() for k, v in model.state_dict().items()}

        def accuracy() -> float:
            """Validation accuracy of the network as it is now (BatchNorm re-estimated first, when set); the
            network is restored afterwards."""
            if images > 0:
                recalibrate_batchnorm(model.net, self.datamodule.calibration_batches(
                    images, stats.batch_size, stats.seed, model.device, augment=augment))
            acc = float(trainer.validate(model, datamodule=self.datamodule, verbose=False)[0]["val/acc"])
            model.load_state_dict(original)
            return acc

        baseline_acc = accuracy()
        rows = []
        pairs = [(layer, ratio) for layer in chosen for ratio in ratios]
        for layer, ratio in tqdm(pairs, desc="sensitivity", unit="point", disable=not self.is_global_zero()):
            kept = keep_top_channels(layer, scores[layer.name],
                                     layer_keep_count(layer, ratio, cfg.sensitivity.mode,
                                                      int(cfg.pruning.scope.min_channels), 1))
            cost = PruningCost(model.net, layers, example)
            for channel in removed_channels(layer, kept).tolist():
                cost.remove(layer.name, channel)
            apply_channel_masks([layer], {layer.name: kept})
            rows.append({"layer": layer.name, "ratio": ratio, "channels": layer.num_channels,
                         "channels_kept": len(kept), "params_removed": 1.0 - cost.remaining("params"),
                         "flops_removed": 1.0 - cost.remaining("flops"), "acc": accuracy(),
                         "baseline_acc": baseline_acc, "metric": self.metric.name})
        return rows


def plot_sensitivity(rows: list[dict], out_dir: Path) -> list[Path]:
    """``sensitivity.png`` (accuracy against ratio, one line per group, the baseline dashed) and
    ``sensitivity_heatmap.png`` (accuracy lost, groups x ratios)."""
    table = {}
    for row in rows:
        table.setdefault(row["layer"], {})[row["ratio"]] = row["acc"]
    layers, ratios = list(table), sorted({row["ratio"] for row in rows})
    baseline, metric = rows[0]["baseline_acc"], rows[0]["metric"]
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = (plt.cm.tab20(range(len(layers))) if len(layers) <= 20  # distinct colours while there are enough
              else plt.cm.viridis([i / (len(layers) - 1) for i in range(len(layers))]))
    for color, layer in zip(colors, layers):
        points = sorted(table[layer].items())
        ax.plot([0.0] + [r for r, _ in points], [100 * baseline] + [100 * a for _, a in points], marker="o",
                markersize=3, color=color, label=layer)
    ax.axhline(100 * baseline, color="black", linestyle="--", linewidth=1, label="baseline")
    ax.set(xlabel="fraction of the group pruned (alone)", ylabel="validation accuracy, no fine-tuning (%)",
           title=f"Sensitivity of each channel group ({metric})")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    lines = out_dir / "sensitivity.png"
    save_figure(fig, lines)
    plt.close(fig)
    drop = [[100 * (baseline - table[layer].get(r, float("nan"))) for r in ratios] for layer in layers]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(ratios), 1.0 + 0.35 * len(layers)))
    image = ax.imshow(drop, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    for i, values in enumerate(drop):
        for j, value in enumerate(values):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="grey")
    ax.set(xlabel="fraction of the group pruned", title=f"Accuracy lost, points ({metric})")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    heat = out_dir / "sensitivity_heatmap.png"
    save_figure(fig, heat)
    plt.close(fig)
    return [lines, heat]


def save_sensitivity(rows: list[dict], out_dir: Path) -> Path:
    """The CSV and its plots in ``out_dir``; the CSV is checked to load as one table."""
    path = write_table(rows, out_dir / "sensitivity.csv")
    read_table(path)
    plot_sensitivity(rows, out_dir)
    return path


def shard_index(path: Path) -> tuple[int, int]:
    """``(sensitivity.shard, job number)`` of the job that wrote ``path``, from its ``config_resolved.yaml`` (the job
    number alone where that file is missing)."""
    job = int(path.parent.name) if path.parent.name.isdigit() else 0
    config = path.with_name("config_resolved.yaml")
    shard = OmegaConf.select(OmegaConf.load(config), "sensitivity.shard", default=None) if config.exists() else None
    return (job if shard is None else int(shard)), job


def network_order(shards: list[list[dict]]) -> list[dict]:
    """The rows of round-robin shards, listed by shard number, in the network's order of groups: shard ``k`` of
    ``n`` measured groups ``k, k + n, k + 2n, ...``, so group ``i * n + k`` is shard ``k``'s ``i``-th."""
    per_shard = []
    for rows in shards:
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["layer"], []).append(row)
        per_shard.append(list(groups.values()))
    depth = max((len(groups) for groups in per_shard), default=0)
    return [row for i in range(depth) for groups in per_shard if i < len(groups) for row in groups[i]]


class MergeSensitivity(Callback):
    """At the end of a multirun, the shards' tables are joined into ``<sweep dir>/sensitivity.csv`` (with its
    plots), groups in the network's order; a (group, ratio) measured twice or shards with different baselines are
    an error."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        shards = sorted(sweep.glob("*/sensitivity.csv"), key=shard_index)
        if not shards:
            return
        rows = network_order([read_rows(path) for path in shards])
        seen = [(row["layer"], row["ratio"]) for row in rows]
        repeated = sorted({point for point in seen if seen.count(point) > 1})
        if repeated:
            raise ValueError(f"the shards under {sweep} measure {repeated[:3]} more than once; give each job its "
                             f"own sensitivity.shard")
        path = save_sensitivity(rows, sweep)
        print(f"sensitivity of {len({r['layer'] for r in rows})} groups merged into {path}")


def sensitivity(cfg: DictConfig) -> list[dict]:
    """Check everything, then measure this job's groups and write ``sensitivity.csv`` and its plots in the output
    directory (an existing table there is replaced only when the new one is complete)."""
    quiet_terminal(bool(cfg.get("verbose", False)))
    checked, ratios, layers = check_sensitivity(cfg)
    apply_job_threads(cfg.get("threads", "auto"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    print_config_tree(cfg, save_dir=cfg.paths.output_dir)
    run = SensitivityRun(cfg, checked)
    rows = run.measure(ratios, layers)
    if run.is_global_zero():
        path = save_sensitivity(rows, Path(cfg.paths.output_dir))
        print(f"sensitivity table: {path}")
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    sensitivity(cfg)


if __name__ == "__main__":
    main()
