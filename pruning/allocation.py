"""Per-group widths for a network-wide budget from a sensitivity table: the accuracy of the network with one
channel group pruned at a time (measured by ``python -m infoprune.sensitivity``).

A sensitivity table (``sensitivity.csv``, written by ``python -m infoprune.sensitivity``) has one row per group
and amount: ``layer, ratio, channels, channels_kept, params_removed, flops_removed, acc, baseline_acc, metric``
(``ratio``: the amount as the layer-wise scope reads it; ``*_removed``: fractions of the whole network removed by
that row alone; ``acc``: validation accuracy without fine-tuning).

``allocate_widths`` turns a table into per-group widths for a network-wide target: starting from nothing
pruned, it repeatedly takes the one step (a group from its current amount to its next measured amount) with the
smallest accuracy loss per unit of resource removed, ``(loss(next) - loss(now)) / resource removed by the step``
with ``loss = baseline_acc - acc``, until at most ``1 - target`` of the resource remains; the last step stops at
the channel that reaches the target. Channels go in the criterion's order (lowest score first). The resource is
counted exactly on the network as pruned so far (``PruningCost``); the losses are the one-group-at-a-time
measurements, so interactions between groups are not modelled.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from infoprune.io import write_atomically
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.layers import PrunableLayer
from infoprune.pruning.selection import check_amount, layer_keep_count

COLUMNS = ("layer", "ratio", "channels", "channels_kept", "params_removed", "flops_removed", "acc", "baseline_acc",
           "metric")


@dataclass
class SensitivityTable:
    """Accuracy without fine-tuning when each group alone is pruned by each ratio: ``curves[layer] = [(ratio,
    acc), ...]`` in increasing ratio; ``baseline_acc`` of the unpruned network; the criterion that chose the
    channels."""

    curves: dict[str, list[tuple[float, float]]]
    baseline_acc: float
    metric: str


def write_table(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows (``COLUMNS``) to ``path`` atomically (:func:`infoprune.io.write_atomically`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({key: row[key] for key in COLUMNS} for row in rows)

    return write_atomically(path, write)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a sensitivity CSV (numbers as floats), or a ``ValueError`` saying what is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no sensitivity table at {path} (python -m infoprune.sensitivity writes one)")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} is not a sensitivity table: columns {sorted(missing)} are missing")
        numeric = set(COLUMNS) - {"layer", "metric"}
        return [{k: (float(v) if k in numeric else v) for k, v in row.items() if k in COLUMNS} for row in reader]


def read_table(path: str | os.PathLike) -> SensitivityTable:
    """A sensitivity CSV as a ``SensitivityTable`` (one baseline and one criterion per table)."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    baselines, metrics = {row["baseline_acc"] for row in rows}, {row["metric"] for row in rows}
    if len(baselines) > 1 or len(metrics) > 1:
        raise ValueError(f"{path} mixes runs: baselines {sorted(baselines)}, metrics {sorted(metrics)}")
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        curves.setdefault(row["layer"], []).append((row["ratio"], row["acc"]))
    return SensitivityTable({layer: sorted(points) for layer, points in curves.items()}, baselines.pop(),
                            metrics.pop())


def removal_order(layer: PrunableLayer, scores: torch.Tensor) -> list[list[int]]:
    """The layer's channels in the order the layer-wise selection gives them up, lowest score first
    (``keep_top`` keeps the first ``n`` of the reverse): one channel at a time, or, where grouped convolutions
    split them into blocks, one position of every block at a time."""
    units = torch.sort(-layer.unit_scores(scores).double(), stable=True).indices.flip(0)
    return [layer.unit_channels(unit[None]).tolist() for unit in units]


def allocate_widths(table: SensitivityTable, layers: list[PrunableLayer], scores: dict[str, torch.Tensor],
                    cost: PruningCost, target: float, resource: str = "params", mode: str = "params",
                    min_channels: int = 1, round_to: int = 1, exclude: list[str] | tuple = ()) -> dict[str, int]:
    """Channels every group keeps so that at least ``target`` of the network's ``resource`` is removed, cheapest
    accuracy loss per unit removed first (see the module docstring). Groups missing from the table or in
    ``exclude`` keep every channel; a table naming groups the network lacks is an error."""
    check_amount(target, "pruning target")
    names = {layer.name for layer in layers}
    unknown = sorted(set(table.curves) - names)
    if unknown:
        raise KeyError(f"the sensitivity table names layer(s) {unknown} that the network does not have; its "
                       f"prunable layers are {sorted(names)}")
    index = {"params": 0, "flops": 1}[resource]
    state = {layer.name: (0.0, 0.0) for layer in layers}  # amount reached, its accuracy loss
    kept = {layer.name: layer.num_channels for layer in layers}
    order = {layer.name: removal_order(layer, scores[layer.name]) for layer in layers}
    candidates = [layer for layer in layers if layer.name in table.curves and layer.name not in exclude]

    def reached() -> bool:
        return cost.remaining(resource) <= 1.0 - target + 1e-12

    while not reached():
        best = None
        for layer in candidates:
            ratio, loss = state[layer.name]
            for next_ratio, acc in table.curves[layer.name]:
                n = layer_keep_count(layer, next_ratio, mode, min_channels, round_to)
                if next_ratio > ratio and n < kept[layer.name]:
                    units = order[layer.name][: (kept[layer.name] - n) // layer.unit_size]
                    removed = sum(cost.removal_cost(layer.name, c)[index] for unit in units for c in unit)
                    next_loss = table.baseline_acc - acc
                    key = ((next_loss - loss) / max(removed, 1), next_loss - loss)
                    if best is None or key < best[0]:
                        best = (key, layer.name, next_ratio, next_loss, units)
                    break
        if best is None:
            raise ValueError(f"target {target} of {resource} is out of reach with the sensitivity table's ratios "
                             f"(at most {max(r for c in table.curves.values() for r, _ in c)} of every layer): "
                             f"{cost.remaining(resource):.4f} remains")
        _, name, next_ratio, next_loss, units = best
        for unit in units:
            if reached():
                break
            for channel in unit:
                cost.remove(name, channel)
            order[name].remove(unit)
            kept[name] -= len(unit)
        state[name] = (next_ratio, next_loss)
    return kept
