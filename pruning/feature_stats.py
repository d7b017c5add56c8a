"""Per-channel averages over calibration images of a statistic of each image's feature map: what HRank (rank),
CHIP (channel independence) and APoZ (fraction of zeros) read.

For image ``n`` and a layer's feature map ``F_n`` (C x H x W, at the layer's tap point) a statistic gives one
value per channel, ``v[n, c]``; the collector returns ``mean_c = sum_n v[n, c] / N`` over the calibration set.
Sums and image counts are reduced over processes, so ranks that see disjoint shards of the calibration set get the
average one process would get over all of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from infoprune.pruning.distributed import all_reduce, rank_and_world_size
from infoprune.pruning.layers import PrunableLayer, preserved_modes
from infoprune.pruning.stats import Batches, FeatureTap, removing

Statistic = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ChannelAverages:
    """``mean[c]`` (float64) of a feature-map statistic over ``num_images`` images, read at ``tap``."""

    tap: str
    mean: torch.Tensor
    num_images: int

    def described(self) -> dict:
        """The averages as plain tensors (the channel-scores file's per-layer entries)."""
        return {"tap": self.tap, "mean": self.mean}


def feature_map_rank(feature_maps: torch.Tensor) -> torch.Tensor:
    """``rank(F[n, c])`` of every H x W map (N x C x H x W -> N x C), with ``torch.linalg.matrix_rank``'s default
    tolerance ``max(H, W) * eps * sigma_max`` in the maps' float32 precision (HRank, Lin et al. 2020)."""
    return torch.linalg.matrix_rank(feature_maps.float()).double()


def zero_fraction(feature_maps: torch.Tensor) -> torch.Tensor:
    """``#{(h, w): F[n, c, h, w] = 0} / (H W)`` (N x C x H x W -> N x C; APoZ, Hu et al. 2016)."""
    return (feature_maps == 0).double().mean(dim=(2, 3))


def channel_independence(feature_maps: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
    """``CI[n, c] = ||A_n||_* - ||A_n with row c zeroed||_*`` (N x C x H x W -> N x C; CHIP, Sui et al. 2021),
    where ``A_n`` is image ``n``'s feature map as a C x P matrix (P = H W) and ``||.||_*`` the nuclear norm (sum
    of singular values).

    Computed in float64 from Gram matrices, ``||A||_* = sum_i sqrt(lambda_i(G))``, with whichever is smaller per
    channel: for ``C - 1 <= P``, ``G = A A^T`` without row and column ``c`` ((C-1) x (C-1)); otherwise
    ``G = A^T A - a_c a_c^T`` (P x P, ``a_c`` the removed row). So each channel costs one small symmetric
    eigenvalue problem instead of an SVD of a C x P matrix. Images go in chunks of at most ``max_elements`` Gram
    entries. Precision: about 1e-8 of the norm (square roots of the Gram eigenvalues)."""
    n, c = feature_maps.shape[:2]
    rows = feature_maps.reshape(n, c, -1).double()
    positions = rows.shape[-1]

    def nuclear(gram: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum(-1)

    if c - 1 <= positions:
        keep = torch.arange(c).expand(c, c)
        keep = keep[keep != torch.arange(c)[:, None]].view(c, c - 1).to(rows.device)
        gram = rows @ rows.transpose(1, 2)
        full = nuclear(gram)
        without = lambda g, a: nuclear(g[:, keep[:, :, None], keep[:, None, :]])  # noqa: E731
        size = c - 1
    else:
        gram = rows.transpose(1, 2) @ rows
        full = nuclear(gram)
        without = lambda g, a: nuclear(g[:, None] - a[..., :, None] * a[..., None, :])  # noqa: E731
        size = positions
    chunk = max(1, max_elements // max(1, c * size * size))
    dropped = torch.cat([without(g, a) for g, a in zip(gram.split(chunk), rows.split(chunk))])
    return full[:, None] - dropped


@torch.no_grad()
def collect_channel_averages(model: nn.Module, layers: list[PrunableLayer], batches: Batches, statistic: Statistic,
                             tap: str = "act", progress: bool = True, desc: str = "statistics",
                             ) -> dict[str, ChannelAverages]:
    """``mean_n statistic(F_n)[c]`` for every member of every channel group in ``layers`` (keyed by the member's
    name) over the images of ``batches()`` (one pass, evaluation mode), reduced over processes."""
    device = next(model.parameters()).device
    sums = {member.name: torch.zeros(layer.num_channels, dtype=torch.float64, device=device)
            for layer in layers for member in layer.members}
    images = torch.zeros(1, dtype=torch.float64, device=device)
    hooks = FeatureTap(layers, tap, summarize=statistic)

    def accumulate(name, values, labels):
        sums[name] += values.double().sum(0)

    hooks.visit = accumulate
    show = progress and rank_and_world_size()[0] == 0
    with preserved_modes(model), removing(hooks):
        model.eval()
        for batch, labels in tqdm(batches(), desc=desc, unit="batch", disable=not show, leave=False):
            hooks.labels = labels
            model(batch)
            images += len(labels)
    total = int(all_reduce(images, "sum").item())
    if total == 0:
        raise ValueError("the calibration set is empty: no image reached the statistics collector")
    return {name: ChannelAverages(hooks.taps[name][0], (all_reduce(s, "sum") / total).cpu(), total)
            for name, s in sums.items()}
