"""The field's criteria that Torch-Pruning ships, scored by its own importance classes on the channel group's
Torch-Pruning group (``PrunableLayer.dependency_group``: the group's convolutions' output channels, their
BatchNorm entries and every consumer's input slice), with Torch-Pruning's reduction over those layers and no
normalisation (selection normalises; ``pruning/scope``):

* ``taylor`` (Molchanov et al. 2019): ``tp.importance.TaylorImportance`` on the gradient of the mean
  cross-entropy over the calibration images (``pruning.gradients``). ``multivariable=True`` scores a filter by
  ``|sum_s w_s g_s|`` (the paper's first-order change of the loss when the whole filter goes; it ranks as the
  paper's squared form), ``False`` by ``sum_s |w_s g_s|``. The paper averages the squared term over minibatches;
  here the gradient is averaged over the calibration set first.
* ``bn_scale`` (Liu et al. 2017, network slimming): ``tp.importance.BNScaleImportance``, ``|gamma_c|`` of the
  group's BatchNorm layers.
* ``fpgm`` (He et al. 2019): ``tp.importance.FPGMImportance``, ``sum_j ||v_c - v_j||_2`` over the layer's filters
  with ``v = |w|^p`` elementwise (Torch-Pruning's form; the paper takes distances between the raw filters), for
  the output filters and for every consumer's input slices (but a grouped convolution's: Torch-Pruning 1.6's
  ``FPGMImportance`` fails on them, so they are left out of the group's score).

``group_reduction`` is Torch-Pruning's reduction over the group's layers: ``mean`` (its default), ``sum``,
``max``, ``prod``, or ``first`` (only the first convolution's output filters, the papers' per-layer form).
"""
from __future__ import annotations

import copy

import torch_pruning as tp

from infoprune.pruning.layers import convolution_groups
from infoprune.pruning.metrics import ChannelScorer

TP_REDUCTIONS = ("mean", "sum", "max", "prod", "first")


class TorchPruningScorer(ChannelScorer):
    """A criterion that delegates to a Torch-Pruning importance object (``importance()``)."""

    scores_whole_group = True

    def __init__(self, group_reduction: str = "mean") -> None:
        if group_reduction not in TP_REDUCTIONS:
            raise ValueError(f"unknown Torch-Pruning group reduction {group_reduction!r}; choose one of "
                             f"{TP_REDUCTIONS}")
        self.group_reduction = group_reduction

    def importance(self) -> tp.importance.Importance:
        raise NotImplementedError

    def scored_group(self, group: tp.Group) -> tp.Group:
        """The part of the layer's Torch-Pruning group that the importance object scores (all of it)."""
        return group

    def score(self, layer, stats):
        if layer.dependency_group is None:
            raise ValueError(f"metric {self.name!r} scores a layer through its Torch-Pruning group; {layer.name!r} "
                             f"has none (find layers with pruning.layers.find_prunable_layers)")
        scores = self.importance()(self.scored_group(layer.dependency_group))
        if scores is None:
            raise ValueError(f"metric {self.name!r} found nothing to score in the group of {layer.name!r}")
        return scores


class Taylor(TorchPruningScorer):
    """First-order Taylor importance (Molchanov et al. 2019) through ``tp.importance.TaylorImportance`` on the
    calibration set's mean-loss gradient (see the module docstring)."""

    name = "taylor"
    needs_gradients = True

    def __init__(self, group_reduction: str = "mean", multivariable: bool = True) -> None:
        super().__init__(group_reduction)
        self.multivariable = multivariable

    def importance(self):
        return tp.importance.TaylorImportance(group_reduction=self.group_reduction, normalizer=None,
                                              multivariable=self.multivariable)


class BatchNormScale(TorchPruningScorer):
    """Network slimming's ``|gamma|`` (Liu et al. 2017) through ``tp.importance.BNScaleImportance``."""

    name = "bn_scale"

    def importance(self):
        return tp.importance.BNScaleImportance(group_reduction=self.group_reduction, normalizer=None)

    def score(self, layer, stats):
        if not any("bn" in member.taps for member in layer.members):
            raise ValueError(f"metric 'bn_scale' needs a BatchNorm after layer {layer.name!r}, which has none")
        return super().score(layer, stats)


class FPGM(TorchPruningScorer):
    """Filter pruning via geometric median (He et al. 2019) through ``tp.importance.FPGMImportance``."""

    name = "fpgm"

    def __init__(self, group_reduction: str = "mean", p: int = 2) -> None:
        super().__init__(group_reduction)
        self.p = p

    def importance(self):
        return tp.importance.FPGMImportance(p=self.p, group_reduction=self.group_reduction, normalizer=None)

    def scored_group(self, group: tp.Group) -> tp.Group:
        """The group without grouped convolutions' input slices (see the module docstring)."""
        kept = copy.copy(group)
        kept._group = [item for item in group.items if not (item.dep.handler.__name__ == "prune_in_channels"
                                                            and convolution_groups(item.dep.target.module) > 1)]
        return kept
