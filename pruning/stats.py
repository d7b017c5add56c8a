"""Streaming joint histograms of globally average-pooled feature maps and labels.

For every prunable layer and image, each channel's feature map (at the layer's tap point) is averaged over space
to one value ``a[c] = mean_{h,w} F[c, h, w]``. Over a calibration set these values are discretised into ``bins``
bins per channel and counted jointly with the label: ``counts[c, bin, class]``. Stage 1 finds each channel's
``[min, max]``; for equal-frequency bins stage 2 fills a fine equal-width histogram (``fine_bins`` per channel)
whose cumulative counts place the edges; the last stage counts. Every range and count is reduced over processes
(min, max, sum), so ranks that see disjoint shards of the calibration set produce the same statistics as one
process that sees all of it.

The network runs once: stage 1's forward pass also keeps every batch's pooled values (N x C float32 per layer),
and the later stages replay those batches in the same order instead of running the network again, which gives the
same numbers bit for bit (each replayed stage still opens the batches once, so that the global random state
afterwards is the same too: a DataLoader iterator draws its seed from it). Memory is capped: a process that sees more than ``buffer_images`` images drops what it
kept, and the later stages run the network again over the calibration batches (memory then independent of N).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
from tqdm import tqdm

from infoprune.pruning.distributed import all_reduce, rank_and_world_size
from infoprune.pruning.layers import PrunableLayer, preserved_modes

BINNINGS = ("width", "frequency")
Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class LayerStatistics:
    """Statistics of one layer: ``edges`` (C x bins+1, float64; bin j is ``[e_j, e_{j+1})``, the last bin closed),
    ``counts`` (C x bins x classes, int64), ``abs_sum`` (C x bins, float64: sum of ``|a|`` of the values in each bin),
    and the tap point actually read."""

    tap: str
    edges: torch.Tensor
    counts: torch.Tensor
    abs_sum: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.counts[0].sum())

    def bin_mean_abs(self) -> torch.Tensor:
        """Mean ``|a|`` of the values in each ``(channel, bin)``; 0 for an empty bin."""
        n = self.counts.sum(-1).double()
        return torch.where(n > 0, self.abs_sum / n.clamp_min(1), 0.0)

    def described(self) -> dict:
        """The statistics as plain tensors (the channel-scores file's per-layer entries)."""
        return {"tap": self.tap, "edges": self.edges, "counts": self.counts, "abs_sum": self.abs_sum}


def equal_width_edges(lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """``lo + (hi - lo) * j / bins`` for ``j = 0..bins``, per channel (C x bins+1)."""
    steps = torch.arange(bins + 1, dtype=torch.float64, device=lo.device) / bins
    return lo.double()[:, None] + (hi - lo).double()[:, None] * steps


def equal_frequency_edges(fine_counts: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Edges that split each channel's values into ``bins`` groups of (nearly) equal size, placed at the fine-bin
    boundaries where the cumulative count first reaches ``j / bins`` of the total."""
    fine = fine_counts.shape[1]
    fine_edges = equal_width_edges(lo, hi, fine)
    cumulative = fine_counts.double().cumsum(1)
    targets = cumulative[:, -1:] * torch.arange(1, bins, dtype=torch.float64, device=lo.device) / bins
    inner = torch.searchsorted(cumulative.contiguous(), targets.contiguous()).clamp_max(fine - 1) + 1
    edges = torch.cat([fine_edges[:, :1], fine_edges.gather(1, inner), fine_edges[:, -1:]], dim=1)
    return torch.cummax(edges, dim=1).values


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each value (N x C) given per-channel edges (C x bins+1): ``#{inner edges <= value}``."""
    inner = edges[:, 1:-1].contiguous()
    return torch.searchsorted(inner, values.double().T.contiguous(), right=True).T


def uniform_bin_index(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin of each value (N x C) among ``bins`` equal-width bins over ``[lo, hi]`` per channel:
    ``min(floor((v - lo) / (hi - lo) * bins), bins - 1)`` (bin 0 for a constant channel). Agrees with
    ``bin_index(values, equal_width_edges(lo, hi, bins))`` up to rounding of values that fall exactly on an edge."""
    width = (hi - lo).double()
    scale = torch.where(width > 0, bins / torch.where(width > 0, width, 1.0), 0.0)
    return ((values.double() - lo.double()) * scale).floor_().long().clamp_(0, bins - 1)


def spatial_mean(feature_maps: torch.Tensor) -> torch.Tensor:
    """``a[n, c] = mean_{h,w} F[n, c, h, w]`` (N x C x H x W -> N x C, float32)."""
    return feature_maps.float().mean(dim=(2, 3))


def channel_maps(output: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """A layer's output as N x C x H x W feature maps: the channels moved from ``channel_axis`` to axis 1; a linear
    layer's tokens (N x T x C) become N x C x T x 1, its plain features (N x C) N x C x 1 x 1, so a statistic pools
    over tokens as it pools over space."""
    maps = output.movedim(channel_axis, 1)
    return maps.reshape(maps.shape[0], maps.shape[1], maps.shape[2] if maps.dim() > 2 else 1, -1)


def per_image_maps(maps: torch.Tensor, images: int) -> torch.Tensor:
    """Feature maps of ``k`` windows or regions per image (``k * N`` leading entries, each image's consecutive, as
    window attention and region heads lay them out) as one N x C x kH x W map per image, so that a channel's
    statistic pools over an image's windows as over its positions. A map computed once for the whole batch (one
    entry: it depends on no image, as XCiT's Fourier positional encoding) is every image's."""
    if maps.shape[0] == 1:
        return maps.expand(images, -1, -1, -1)
    if maps.shape[0] % images:
        raise ValueError(f"a feature map with {maps.shape[0]} entries for a batch of {images} images")
    n, c, h, w = images, maps.shape[1], maps.shape[2], maps.shape[3]
    return maps.reshape(n, -1, c, h, w).transpose(1, 2).reshape(n, c, -1, w)


class FeatureTap:
    """Forward hooks that hand ``summarize`` of each group member's feature map (``channel_maps``: N x C x H x W
    -> N x C; default the spatial mean; windows or regions gathered per image, ``per_image_maps``) and the batch
    labels (set ``labels`` before each batch) to a pass function; NaN or Inf in a summary is an error naming the
    member."""

    def __init__(self, layers: list[PrunableLayer], tap: str,
                 summarize: Callable[[torch.Tensor], torch.Tensor] = spatial_mean) -> None:
        self.taps = {member.name: member.tap(tap) for layer in layers for member in layer.members}
        self.axes = {member.name: member.channel_axis for layer in layers for member in layer.members}
        self.summarize = summarize
        self.labels: torch.Tensor | None = None
        self.visit: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None
        self.handles = [module.register_forward_hook(self._hook(name)) for name, (_, module) in self.taps.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            maps = channel_maps(output, self.axes[name])
            if self.labels is not None and maps.shape[0] != len(self.labels):
                maps = per_image_maps(maps, len(self.labels))
            summary = self.summarize(maps)
            if not torch.isfinite(summary).all():
                raise FloatingPointError(f"NaN or Inf in the feature maps of layer {name!r}")
            self.visit(name, summary, self.labels)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def removing(hooks: FeatureTap):
    try:
        yield hooks
    finally:
        hooks.remove()


@torch.no_grad()
def collect_statistics(
    model: nn.Module,
    layers: list[PrunableLayer],
    batches: Batches,
    num_classes: int,
    bins: int = 32,
    binning: str = "width",
    tap: str = "act",
    fine_bins: int = 2048,
    progress: bool = True,
    buffer_images: int = 2048,
) -> dict[str, LayerStatistics]:
    """Joint histograms ``counts[c, bin, class]`` of every member of every channel group in ``layers`` (keyed by
    the member's name; a group of one: the layer's name) over the images of ``batches()`` (called once per
    forward pass; each call yields ``(normalised images, labels)`` on the model's device). Every member is read in
    the same passes: one, when this process sees at most ``buffer_images`` images (module docstring).

    Args:
        bins: bins per channel. binning: ``width`` (equal width over the channel's [min, max]) or ``frequency``.
        tap: ``conv``, ``bn`` or ``act`` (see ``Member.tap``). fine_bins: resolution of equal-frequency edges.
        buffer_images: most images whose pooled values a process keeps for replay (0: run the network once per
            stage).
    """
    if binning not in BINNINGS:
        raise ValueError(f"unknown binning {binning!r}; choose one of {BINNINGS}")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    device = next(model.parameters()).device
    hooks = FeatureTap(layers, tap)
    sizes = {member.name: layer.num_channels for layer in layers for member in layer.members}
    show = progress and rank_and_world_size()[0] == 0

    #: every batch's pooled values by member, and its labels, while this process has seen <= buffer_images images
    kept: list[tuple[dict[str, torch.Tensor], torch.Tensor]] | None = [] if buffer_images > 0 else None
    kept_images = 0

    def run(visit, desc: str, first: bool = False) -> None:
        """One stage: ``visit(name, pooled, labels)`` for every member and batch, from a forward pass (the first
        stage, or every stage once the buffer overflowed) or from the kept batches."""
        nonlocal kept, kept_images
        if not first and kept is not None:
            # start the pass as a forward pass would: a DataLoader iterator draws its seed from the global random
            # generator, so the random state after the statistics does not depend on whether the network ran again
            next(iter(batches()), None)
            for pooled, labels in kept:
                for name, values in pooled.items():
                    visit(name, values, labels)
            return

        def visit_and_keep(name, pooled, labels):
            visit(name, pooled, labels)
            if kept is not None:
                kept[-1][0][name] = pooled

        hooks.visit = visit_and_keep if first else visit
        for images, labels in tqdm(batches(), desc=desc, unit="batch", disable=not show, leave=False):
            if first and kept is not None:
                kept_images += len(labels)
                if kept_images <= buffer_images:
                    kept.append(({}, labels))
                else:
                    kept = None
            hooks.labels = labels
            model(images)

    with preserved_modes(model), removing(hooks):
        model.eval()
        lo = {n: torch.full((c,), float("inf"), device=device) for n, c in sizes.items()}
        hi = {n: torch.full((c,), float("-inf"), device=device) for n, c in sizes.items()}

        def observe_range(name, pooled, labels):
            torch.minimum(lo[name], pooled.amin(0), out=lo[name])
            torch.maximum(hi[name], pooled.amax(0), out=hi[name])

        passes = 3 if binning == "frequency" else 2
        run(observe_range, f"statistics 1/{passes}: ranges", first=True)
        if all_reduce(torch.tensor([kept is None], dtype=torch.int64, device=device), "max").item():
            kept = None  # a process's buffer overflowed: every process runs the network again, as the others do
        for name in sizes:
            all_reduce(lo[name], "min"), all_reduce(hi[name], "max")
            if not torch.isfinite(lo[name]).all():
                raise ValueError("the calibration set is empty: no image reached the statistics collector")

        if binning == "width":
            edges = {n: equal_width_edges(lo[n], hi[n], bins) for n in sizes}
            locate = {n: (lambda v, n=n: uniform_bin_index(v, lo[n], hi[n], bins)) for n in sizes}
        else:
            fine = {n: torch.zeros(c * fine_bins, dtype=torch.int64, device=device) for n, c in sizes.items()}

            def observe_fine(name, pooled, labels):
                idx = uniform_bin_index(pooled, lo[name], hi[name], fine_bins) + torch.arange(
                    pooled.shape[1], device=device) * fine_bins
                fine[name] += torch.bincount(idx.flatten(), minlength=fine[name].numel())

            run(observe_fine, f"statistics 2/{passes}: quantiles")
            edges = {n: equal_frequency_edges(all_reduce(fine[n], "sum").view(c, fine_bins), lo[n], hi[n], bins)
                     for n, c in sizes.items()}
            locate = {n: (lambda v, n=n: bin_index(v, edges[n])) for n in sizes}

        counts = {n: torch.zeros(c * bins * num_classes, dtype=torch.int64, device=device) for n, c in sizes.items()}
        abs_sum = {n: torch.zeros(c * bins, dtype=torch.float64, device=device) for n, c in sizes.items()}

        def observe_counts(name, pooled, labels):
            channel = torch.arange(pooled.shape[1], device=device)
            cell = locate[name](pooled) + channel * bins
            counts[name] += torch.bincount((cell * num_classes + labels[:, None]).flatten(),
                                           minlength=counts[name].numel())
            abs_sum[name].index_add_(0, cell.flatten(), pooled.double().abs().flatten())

        run(observe_counts, f"statistics {passes}/{passes}: counts")

    return {
        n: LayerStatistics(
            tap=hooks.taps[n][0],
            edges=edges[n].cpu(),
            counts=all_reduce(counts[n], "sum").view(c, bins, num_classes).cpu(),
            abs_sum=all_reduce(abs_sum[n], "sum").view(c, bins).cpu(),
        )
        for n, c in sizes.items()
    }
