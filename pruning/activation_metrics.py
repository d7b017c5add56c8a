"""Feature-map criteria: scores from per-channel averages of a statistic of each calibration image's feature map
(``pruning.feature_stats``), read at the statistics tap point (``pruning.stats.tap``; ``act``, after the
activation, is where HRank, CHIP and APoZ read them)."""
from __future__ import annotations

from infoprune.pruning.feature_stats import channel_independence, feature_map_rank, zero_fraction
from infoprune.pruning.metrics import ChannelScorer


class HRank(ChannelScorer):
    """HRank (Lin et al. 2020): ``mean_n rank(F_n[c])``, the average rank of the channel's H x W feature maps
    (the paper averages over 640 images: ``pruning.stats.num_images``)."""

    name = "hrank"
    feature_statistic = staticmethod(feature_map_rank)

    def score(self, layer, stats):
        return stats.mean


class ChannelIndependence(ChannelScorer):
    """CHIP (Sui et al. 2021): ``mean_n (||A_n||_* - ||A_n with row c zeroed||_*)``, how much the nuclear norm of
    the layer's feature maps (a C x HW matrix per image) drops without channel ``c``; a channel that other
    channels can reproduce drops it little."""

    name = "chip"
    feature_statistic = staticmethod(channel_independence)

    def score(self, layer, stats):
        return stats.mean


class APoZ(ChannelScorer):
    """APoZ (Hu et al. 2016) as a score: ``1 - mean_n #{F_n[c] = 0} / (H W)``, one minus the average percentage of
    zeros after the activation, so a channel that is mostly zero scores low."""

    name = "apoz"
    feature_statistic = staticmethod(zero_fraction)

    def score(self, layer, stats):
        return 1.0 - stats.mean
