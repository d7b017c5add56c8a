"""Which channels to keep: layer-wise (a fraction of every layer) or global (one ranking across layers until a
parameter or FLOP budget is met). Inputs are scores (one per channel, higher = more important); outputs map each
layer name to the sorted indices of the channels it keeps."""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from infoprune.pruning.cost import PruningCost
from infoprune.pruning.layers import PrunableLayer

Keep = dict[str, torch.Tensor]
LAYERWISE_MODES = ("channels", "params")
NORMALIZATIONS = ("none", "max", "sum")


def check_amount(amount: float, what: str = "pruning amount") -> float:
    """``amount`` as a float in [0, 1), or a ``ValueError`` that names it."""
    if not 0.0 <= float(amount) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {amount}")
    return float(amount)


def check_layer_names(names: Iterable[str], layers: Iterable[PrunableLayer], what: str) -> None:
    """Every name in ``names`` is a prunable layer, or a ``KeyError`` listing the valid names."""
    valid = [layer.name for layer in layers]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise KeyError(f"{what} names unknown layer(s) {unknown}; prunable layers are {valid}")


def round_up_to_multiple(n: int, multiple: int, limit: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (at most ``limit``)."""
    return min(limit, math.ceil(n / multiple) * multiple) if multiple > 1 else n


def keep_top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of the ``n`` highest scores (ties: the lower index is kept)."""
    order = torch.sort(-scores.double(), stable=True).indices
    return order[:n].sort().values


def keep_top_channels(layer: PrunableLayer, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted channels of ``layer`` to keep: the ``n`` highest scores, or, where channels go in units of ``u``
    (``layer.unit_size``: a position of every block of grouped convolutions, a head), the ``n / u`` units of highest
    mean score (``PrunableLayer.unit_scores``); ``n`` must then be a multiple of ``u``."""
    if n % layer.unit_size:
        raise ValueError(f"layer {layer.name!r} keeps channels in multiples of {layer.unit_size} (grouped "
                         f"convolutions or attention heads); {n} is not one")
    return layer.unit_channels(keep_top(layer.unit_scores(scores), n // layer.unit_size))


def keep_count(num_channels: int, amount: float, mode: str, min_channels: int, round_to: int) -> int:
    """Channels a layer keeps when pruned by ``amount``, rounded up so a layer never keeps less than asked.

    ``channels``: ``ceil((1 - amount) * C)``. ``params``: ``ceil(sqrt(1 - amount) * C)``; a conv layer whose input
    is pruned alike then keeps about ``1 - amount`` of its parameters (input and output widths both scale by
    ``sqrt(1 - amount)``), which is how "remove 70% of the parameters of every conv layer" is read here. The result
    is monotone: a larger ``amount`` never keeps more channels, a wider layer never keeps fewer. A tolerance of
    1e-9 channels keeps exact products (``0.5 * 8``) from rounding up through floating-point error.
    """
    if mode == "channels":
        fraction = 1.0 - amount
    elif mode == "params":
        fraction = math.sqrt(1.0 - amount)
    else:
        raise ValueError(f"unknown layer-wise mode {mode!r}; choose one of {LAYERWISE_MODES}")
    n = math.ceil(fraction * num_channels - 1e-9)
    return round_up_to_multiple(max(min_channels, n), round_to, num_channels)


def floor_channels(layer: PrunableLayer, min_channels: int) -> int:
    """The fewest channels ``layer`` may keep: ``min_channels``; where grouped convolutions split its channels into
    ``g`` blocks, also whole positions and two of them (as many as the layer has, if fewer): with one channel a
    block, a grouped convolution whose input and output both come down to ``g`` channels would become a depthwise
    one, which ties its input channels to its outputs and so changes the network's channel groups. A group of
    attention heads keeps at least one head."""
    g = layer.unit_size
    if layer.channel_groups == 1 or layer.unit_width > 1:
        return round_up_to_multiple(min_channels, g, layer.num_channels)
    return round_up_to_multiple(max(min_channels, min(2, layer.num_channels // g) * g), g, layer.num_channels)


def layer_keep_count(layer: PrunableLayer, amount: float, mode: str, min_channels: int, round_to: int) -> int:
    """``keep_count`` for ``layer``: at least ``floor_channels``, rounded up to a multiple of ``unit_size``."""
    return keep_count(layer.num_channels, amount, mode, floor_channels(layer, min_channels),
                      math.lcm(round_to, layer.unit_size))


def select_layerwise(scores: Mapping[str, torch.Tensor], layers: list[PrunableLayer], amount: float,
                     mode: str = "params", min_channels: int = 1, round_to: int = 1,
                     overrides: Mapping[str, float] | None = None, exclude: Iterable[str] = ()) -> Keep:
    """Prune every layer by ``amount`` (per-layer ``overrides``; ``exclude``d layers keep everything), removing the
    lowest-scored channels."""
    overrides, exclude = dict(overrides or {}), list(exclude)
    check_amount(amount)
    for name, value in overrides.items():
        check_amount(value, f"override for {name!r}")
    check_layer_names(list(overrides) + exclude, layers, "pruning config")
    if min_channels < 1:
        raise ValueError(f"min_channels must be at least 1 (a layer is never emptied), got {min_channels}")
    keep = {}
    for layer in layers:
        if layer.name in exclude:
            keep[layer.name] = torch.arange(layer.num_channels)
            continue
        n = layer_keep_count(layer, overrides.get(layer.name, amount), mode, min_channels, round_to)
        keep[layer.name] = keep_top_channels(layer, scores[layer.name], n)
    return keep


def normalize_scores(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Scores made comparable across layers: ``none`` (as they are: MI and entropy are bounded by log K and
    log bins), ``max`` (divided by the layer's maximum), ``sum`` (divided by the layer's sum)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {how!r}; choose one of {NORMALIZATIONS}")
    if how == "none":
        return scores
    denominator = scores.abs().max() if how == "max" else scores.abs().sum()
    return scores / denominator if denominator > 0 else scores


def select_global(scores: Mapping[str, torch.Tensor], layers: list[PrunableLayer], cost: PruningCost,
                  target: float, resource: str = "params", normalization: str = "max", min_channels: int = 1,
                  exclude: Iterable[str] = (), already_removed: Mapping[str, torch.Tensor] | None = None) -> Keep:
    """One ranking across layers: remove the globally lowest (normalised) scores first until at most ``target``
    of the dense ``resource`` (params or flops) remains, never going below ``min_channels`` in a layer. Channels in
    ``already_removed`` (an earlier step of a schedule, still masked) go first, whatever their scores. A layer whose
    channels grouped convolutions split into ``g`` blocks is ranked by position (``PrunableLayer.unit_scores``),
    and a position goes from every block at once. Raises before pruning when the target is out of reach."""
    exclude = list(exclude)
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target (fraction of {resource} remaining) must be in (0, 1], got {target}")
    check_layer_names(exclude, layers, "pruning config")
    if min_channels < 1:
        raise ValueError(f"min_channels must be at least 1 (a layer is never emptied), got {min_channels}")
    by_name = {layer.name: layer for layer in layers}
    candidates = []
    for layer in layers:
        if layer.name in exclude:
            continue
        normalized = layer.unit_scores(normalize_scores(scores[layer.name].double(), normalization))
        candidates += [(normalized[u].item(), layer.name, u) for u in range(len(normalized))]
    candidates.sort()
    kept = {layer.name: layer.num_channels for layer in layers}
    removed: dict[str, set[int]] = {layer.name: set() for layer in layers}

    def remove(name: str, channels: list[int]) -> None:
        for channel in channels:
            cost.remove(name, channel)
            kept[name] -= 1
            removed[name].add(channel)

    for name, channels in (already_removed or {}).items():
        remove(name, channels.tolist())
    candidates = [(score, name, u) for score, name, u in candidates if u not in removed[name]]
    for _, name, unit in candidates:
        if cost.remaining(resource) <= target:
            break
        if kept[name] - by_name[name].unit_size >= floor_channels(by_name[name], min_channels):
            remove(name, by_name[name].unit_channels([unit]).tolist())
    if cost.remaining(resource) > target:
        raise ValueError(f"target {target} of {resource} is out of reach: with {min_channels} channel(s) left in "
                         f"every prunable layer, {cost.remaining(resource):.4f} remains")
    return {layer.name: torch.tensor(sorted(set(range(layer.num_channels)) - removed[layer.name]), dtype=torch.long)
            for layer in layers}
