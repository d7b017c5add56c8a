"""Channel importance criteria: one class each, one float64 score per output channel of a layer (higher means
more important). Information criteria read the layer's histograms (``LayerStatistics``), feature-map criteria
(``pruning.activation_metrics``) per-channel averages (``ChannelAverages``), gradient criteria
(``pruning.torch_pruning_metrics``) the parameters' ``.grad``; weight-only criteria read the weights alone."""
from __future__ import annotations

import zlib
from typing import Mapping

import torch

from infoprune.pruning.information import entropy, mutual_information, weighted_mutual_information
from infoprune.pruning.layers import PrunableLayer, convolution_groups
from infoprune.pruning.selection import normalize_scores
from infoprune.pruning.stats import LayerStatistics


class ChannelScorer:
    """Base of every criterion: ``scorer(layer, stats) -> Tensor[C]``. What must be gathered on calibration
    images first: ``needs_statistics`` (the pooled-activation histograms), ``feature_statistic`` (a function of
    each image's feature map, averaged per channel: ``pruning.feature_stats``) or ``needs_gradients`` (the loss
    gradient, in every parameter's ``.grad``: ``pruning.gradients``). ``scores_whole_group``: the criterion scores
    a channel group at once (through its Torch-Pruning group) rather than member by member."""

    name = "base"
    needs_statistics = False
    feature_statistic = None
    needs_gradients = False
    scores_whole_group = False

    @property
    def needs_data(self) -> bool:
        """Whether calibration images are needed at all."""
        return self.needs_statistics or self.needs_gradients or self.feature_statistic is not None

    def __call__(self, layer: PrunableLayer, stats: LayerStatistics | None = None) -> torch.Tensor:
        if (self.needs_statistics or self.feature_statistic is not None) and stats is None:
            raise ValueError(f"metric {self.name!r} needs feature-map statistics for layer {layer.name!r}")
        scores = self.score(layer, stats).double().cpu()
        if scores.shape != (layer.num_channels,) or not torch.isfinite(scores).all():
            raise FloatingPointError(f"metric {self.name!r} gave invalid scores for layer {layer.name!r}")
        return scores

    def score(self, layer: PrunableLayer, stats: LayerStatistics | None) -> torch.Tensor:
        raise NotImplementedError


def input_l1(layer: PrunableLayer) -> torch.Tensor:
    """``sum |W[c]|`` over the channel's own filter (Li et al. 2017); a linear layer's row ``c``."""
    return layer.module.weight.detach().abs().flatten(1).sum(dim=1)


def output_l1(layer: PrunableLayer) -> torch.Tensor:
    """``sum |W'[:, c]|`` over every weight that reads channel ``c`` in the consuming layers: the next conv's input
    slice, every input feature a flatten maps the channel to in a linear layer, and, for a channel read by several
    layers (residual additions, branches), the sum over all of them; in a grouped convolution, the filters of the
    channel's own group. In a group of attention heads (``PrunableLayer.heads_of``) only the values' rows are read
    by weights (the output projection's columns); a head's query and key dimensions ``d`` get the output L1 of its
    value dimension ``d``, so that a head is weighed by the weights that read its output."""
    total = torch.zeros(layer.num_channels, dtype=torch.float64)
    for consumer in layer.consumers:
        weight = consumer.module.weight.detach().double().abs()
        groups = convolution_groups(consumer.module)  # input i of a grouped conv: group i // (in / g)
        per_input = weight.unflatten(0, (groups, -1)).sum(dim=[1] + list(range(3, weight.dim() + 1))).flatten().cpu()
        total.index_add_(0, consumer.root_idxs, per_input[consumer.idxs])
    if layer.heads_of is not None:
        total = total.view(layer.channel_groups, -1)[-1].repeat(layer.channel_groups)
    return total


def normalized(x: torch.Tensor) -> torch.Tensor:
    """``x / max(x)`` (all zeros stay zeros)."""
    peak = x.max()
    return x / peak if peak > 0 else torch.zeros_like(x)


class Entropy(ChannelScorer):
    """Luo & Wu 2017: entropy ``H(F_c) = -sum_b p_b log p_b`` of the channel's pooled-activation histogram."""

    name, needs_statistics = "entropy", True

    def score(self, layer, stats):
        return entropy(stats.counts.sum(-1))


class MutualInformation(ChannelScorer):
    """``I(F_c; Y) = H(F_c) - H(F_c | Y)`` between the channel's discretised pooled activation and the label."""

    name, needs_statistics = "mi", True

    def score(self, layer, stats):
        return mutual_information(stats.counts)


class WeightedMutualInformation(ChannelScorer):
    """Weighted MI. The paper's formula is not public; two documented interpretations:

    * ``l1_out``: ``MI_c / max_layer(MI) * L1out_c / max_layer(L1out)``: information content times how strongly
      the next layer uses the channel, each normalised within the layer.
    * ``activation``: Guiasu-weighted ``sum_{b,y} w_{c,b} p(b,y) log(p(b,y) / (p(b) p(y)))`` with bin weight
      ``w_{c,b}`` = mean ``|a|`` of the values in bin ``b`` over the layer's mean ``|a|``, so information carried
      only by near-zero activations counts less.
    """

    VARIANTS = ("l1_out", "activation")
    needs_statistics = True

    def __init__(self, variant: str = "l1_out", name: str | None = None) -> None:
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown weighted-MI variant {variant!r}; choose one of {self.VARIANTS}")
        self.variant = variant
        self.name = name or f"wmi_{variant}"  # the config sets the name the user selected (wmi, wmi_l1, wmi_act)

    def score(self, layer, stats):
        if self.variant == "l1_out":
            return normalized(mutual_information(stats.counts)) * normalized(output_l1(layer))
        layer_mean_abs = stats.abs_sum.sum() / max(stats.num_images * layer.num_channels, 1)
        weights = stats.bin_mean_abs() / layer_mean_abs if layer_mean_abs > 0 else torch.zeros_like(stats.abs_sum)
        return weighted_mutual_information(stats.counts, weights)


class InputL1(ChannelScorer):
    """L1 norm of the channel's own filter (Li et al. 2017)."""

    name = "l1_in"

    def score(self, layer, stats):
        return input_l1(layer)


class OutputL1(ChannelScorer):
    """L1 norm of the weights that consume the channel in the next layer(s) (see ``output_l1``)."""

    name = "l1_out"

    def score(self, layer, stats):
        return output_l1(layer)


GROUP_REDUCTIONS = ("mean", "sum", "max")


def score_group(metric: ChannelScorer, layer: PrunableLayer, stats: Mapping[str, LayerStatistics] | None,
                reduction: str = "mean") -> torch.Tensor:
    """Score of every channel of a channel group (``stats``: statistics by member name, or None).

    A group of one, and any group for a criterion that scores whole groups, scores at once. A group of several
    members ``m`` (a residual stage, an expansion and its depthwise convolution) reduces their layer-normalised
    scores ``s_m[c] / max_c |s_m[c]|`` by ``mean`` (default), ``sum`` or ``max`` over the members.
    """
    if reduction not in GROUP_REDUCTIONS:
        raise ValueError(f"unknown group reduction {reduction!r}; choose one of {GROUP_REDUCTIONS}")
    if len(layer.members) == 1 or metric.scores_whole_group:
        return metric(layer, stats[layer.name] if stats else None)
    stacked = torch.stack([normalize_scores(metric(layer.member_view(m), stats[m.name] if stats else None), "max")
                           for m in layer.members])
    return {"mean": stacked.mean(0), "sum": stacked.sum(0), "max": stacked.amax(0)}[reduction]


class RandomScore(ChannelScorer):
    """Uniform random scores, seeded by ``seed`` and the layer name (identical on every process): the sanity
    baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, layer, stats):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(layer.name.encode()))
        return torch.rand(layer.num_channels, generator=generator, dtype=torch.float64)
