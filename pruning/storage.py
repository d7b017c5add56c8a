"""The channel-statistics file: what was measured and scored, loadable without the framework (``torch.load``).

Format ``infoprune.channel-scores/1``, a dict:
  ``format``, ``metric``, ``settings`` (tap, bins, binning, num_images, ...), ``num_classes``, ``num_images``,
  ``layers``: ``{layer name: {"tap", "scores" (C, float64), and for information metrics "edges" (C x bins+1,
  float64), "counts" (C x bins x classes, int64), "abs_sum" (C x bins, float64), for feature-map metrics (hrank,
  chip, apoz) "mean" (C, float64: the per-channel average they score)}}``; a channel group appears under
  its name (its first member's statistics), and ``member_statistics`` holds the statistics of its other members
  in the same form (without scores).
Logarithms are natural (nats). See docs/statistics.md for how to recompute a criterion from the counts.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from infoprune.io import atomic_save
from infoprune.pruning.feature_stats import ChannelAverages
from infoprune.pruning.stats import LayerStatistics

FORMAT = "infoprune.channel-scores/1"


def save_channel_scores(path: str | os.PathLike, metric: str, scores: dict[str, torch.Tensor],
                        stats: dict[str, LayerStatistics | ChannelAverages] | None, settings: dict,
                        num_classes: int) -> Path:
    """Write scores and statistics to ``path`` atomically (a temporary file renamed into place)."""
    stats = stats or {}
    layers = {name: {"scores": layer_scores, **(stats[name].described() if name in stats else {})}
              for name, layer_scores in scores.items()}
    members = {name: s.described() for name, s in stats.items() if name not in scores}
    num_images = next(iter(stats.values())).num_images if stats else 0
    payload = {"format": FORMAT, "metric": metric, "settings": dict(settings), "num_classes": num_classes,
               "num_images": num_images, "layers": layers, "member_statistics": members}
    return atomic_save(payload, path)


def load_channel_scores(path: str | os.PathLike) -> dict:
    """Read a file written by ``save_channel_scores`` (checks the format tag)."""
    payload = torch.load(path, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    return payload
