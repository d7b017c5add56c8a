"""When to prune: a schedule turns a pruning target into steps, each followed by a short fine-tune.

* ``oneshot``: one step to the target.
* ``iterative``: ``steps`` steps; step i leaves ``(1 - target)^(i / steps)`` of the original (parameters of every
  layer for the layer-wise scope, of the whole network's resource for the global scope), so each step removes the
  same fraction of what is left.
* ``layer_by_layer`` (Luo & Wu 2017, layer-wise scope only): one step per prunable layer, in forward order, each
  pruning that layer alone by the target.

The drop-in callbacks schedule in epochs of a fit instead (:func:`schedule_steps`): ``oneshot``, ``equal`` and
``agp`` steps, each a cumulative amount of the original network.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("oneshot", "iterative", "layer_by_layer")


@dataclass
class PruningStep:
    """One step: the layer-wise ``amount`` to remove from the current widths, the global ``remaining`` fraction of
    the original network's resource after it, the layers it touches (None: all) and the fine-tune epochs after it
    (0 for the last step, which the final fine-tune follows)."""

    amount: float
    remaining: float
    layers: list[str] | None
    finetune_epochs: int


def plan_schedule(kind: str, target: float, scope: str, layer_names: list[str], steps: int = 3,
                  finetune_epochs: int = 1) -> list[PruningStep]:
    """The steps of schedule ``kind`` towards removing ``target`` (in [0, 1))."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    if kind == "oneshot":
        plan = [PruningStep(target, 1.0 - target, None, 0)]
    elif kind == "iterative":
        if steps < 1:
            raise ValueError(f"an iterative schedule needs at least one step, got {steps}")
        per_step = 1.0 - (1.0 - target) ** (1.0 / steps)
        plan = [PruningStep(per_step, (1.0 - target) ** (i / steps), None, finetune_epochs)
                for i in range(1, steps + 1)]
    else:
        if scope != "layerwise":
            raise ValueError("the layer_by_layer schedule prunes one layer at a time: it needs the layerwise scope")
        plan = [PruningStep(target, 1.0 - target, [name], finetune_epochs) for name in layer_names]
    plan[-1].finetune_epochs = 0
    return plan


#: the drop-in callbacks' schedules, in epochs of a fit (``prune.py``'s steps: :data:`SCHEDULES`)
EPOCH_SCHEDULES = ("oneshot", "equal", "agp")


def schedule_steps(kind: str, amount: float, start_epoch: int, end_epoch: int, steps: int) -> list[tuple[int, float]]:
    """``(epoch, cumulative amount)`` of every pruning step, the amount a fraction of the original network.

    ``oneshot``: ``amount`` at ``start_epoch``. ``equal``: ``amount * k / n`` and ``agp`` (Zhu & Gupta 2017):
    ``amount * (1 - (1 - k / n)^3)`` for ``k = 1 .. n``, at epochs spread evenly from ``start_epoch`` to
    ``end_epoch`` (the target is reached at ``end_epoch``).
    """
    if kind not in EPOCH_SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {EPOCH_SCHEDULES}")
    if kind == "oneshot":
        return [(start_epoch, amount)]
    if steps < 1:
        raise ValueError(f"a {kind} schedule needs at least one step, got steps={steps}")
    if end_epoch < start_epoch:
        raise ValueError(f"end_epoch {end_epoch} is before start_epoch {start_epoch}")
    span = end_epoch - start_epoch
    epochs = [start_epoch + round(span * k / (steps - 1)) if steps > 1 else end_epoch for k in range(steps)]
    fraction = (lambda k: k / steps) if kind == "equal" else (lambda k: 1.0 - (1.0 - k / steps) ** 3)
    return [(epoch, amount * fraction(k + 1)) for k, epoch in enumerate(epochs)]

