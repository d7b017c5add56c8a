"""Cross-entropy pruning of single connections (CEP, HCEP) and its magnitude baseline.

Bao et al. 2018 give the method but not every detail; this module implements the documented interpretation of
docs/cep.md:

* The *cross-entropy error* of a connection ``w`` is the increase of the training cross-entropy loss when ``w`` is
  removed, estimated to first order as ``e(w) = mean over calibration batches of |w * dL/dw|`` (``order=1``), or to
  second order with a diagonal Fisher as ``e(w) = |-w * mean(g) + 0.5 * w^2 * mean(g^2)|`` (``order=2``).
  ``exact_loss_increase`` measures it by removing each connection in turn, to check the estimate on small layers.
* Connections are grouped by their output neuron: a row of a linear layer's weight, an output channel's kernel of a
  convolution.
* In each group, connections whose error is below ``alpha`` times the group's mean error are removed; ``alpha`` is
  the one value, shared by all groups, that reaches the target density (found exactly by sorting the ratios
  ``e / mean_group(e)``). ``threshold="layer"`` divides by the layer's mean error instead, ``threshold="global"``
  compares raw errors (estimated loss increases) across all layers, so layers get different densities.
* HCEP also keeps, in every group, the ``hcep_fraction`` of connections with the highest error, whatever
  ``alpha``.
* Magnitude pruning (Han et al. 2015) is the same selection with ``e(w) = |w|``; LAMP (Lee et al. 2021) with its
  layer-adaptive score and SNIP (Lee et al. 2019) with ``|w * mean(g)|``, both compared globally.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from infoprune.pruning.distributed import all_reduce
from infoprune.pruning.layers import preserved_modes

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Every conv and linear layer whose weight connections are pruned (by module name), minus ``exclude``."""
    exclude = set(exclude)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    unknown = sorted(exclude - set(layers))
    if unknown:
        raise KeyError(f"unknown layer(s) {unknown}; conv/linear layers are {sorted(layers)}")
    return {n: m for n, m in layers.items() if n not in exclude}


def current_weight(module: nn.Module) -> torch.Tensor:
    """The effective weight (``weight_orig * weight_mask`` under ``torch.nn.utils.prune``)."""
    return module.weight.detach()


def _gradient_sums(model: nn.Module, layers: dict[str, nn.Module], batches: Batches, terms: int,
                   per_batch: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]],
                   ) -> dict[str, torch.Tensor]:
    """``mean_b per_batch(w, g_b)`` (``terms`` tensors stacked) per layer over the batches of ``batches()``, where
    ``g_b`` is the gradient of the batch's mean cross-entropy (masked connections: 0), summed over processes."""
    params = {n: (m.weight_orig if hasattr(m, "weight_orig") else m.weight) for n, m in layers.items()}
    sums = {n: torch.zeros((terms,) + tuple(p.shape), dtype=torch.float64, device=p.device)
            for n, p in params.items()}
    batches_seen = torch.zeros(1, dtype=torch.float64, device=next(model.parameters()).device)
    with preserved_modes(model):
        model.eval()
        try:
            for images, labels in batches():
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    F.cross_entropy(model(images), labels).backward()
                for n, module in layers.items():
                    g = params[n].grad.double()
                    if hasattr(module, "weight_mask"):
                        g = g * module.weight_mask
                    for i, term in enumerate(per_batch(current_weight(module).double(), g)):
                        sums[n][i] += term
                batches_seen += 1
        finally:
            model.zero_grad(set_to_none=True)
    count = all_reduce(batches_seen, "sum").clamp_min(1)
    return {n: all_reduce(s, "sum") / count for n, s in sums.items()}


def connection_errors(model: nn.Module, layers: dict[str, nn.Module], batches: Batches, order: int = 1,
                      ) -> dict[str, torch.Tensor]:
    """Cross-entropy error of every connection of ``layers`` over ``batches()`` (summed over processes).

    Per batch ``b`` with gradient ``g_b`` of the loss: order 1 is ``mean_b |w * g_b|``; order 2 is
    ``|-w * mean_b(g_b) + 0.5 * w^2 * mean_b(g_b^2)|``."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if order == 1:
        return {n: s[0] for n, s in _gradient_sums(model, layers, batches, 1, lambda w, g: [(w * g).abs()]).items()}
    moments = _gradient_sums(model, layers, batches, 2, lambda w, g: [g, g * g])
    errors = {}
    for n, module in layers.items():
        w = current_weight(module).double()
        errors[n] = (-w * moments[n][0] + 0.5 * w * w * moments[n][1]).abs()
    return errors


def snip_sensitivity(model: nn.Module, layers: dict[str, nn.Module], batches: Batches) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity (Lee et al. 2019) ``|w * mean_b(g_b)|``: the first-order change of the loss
    when the connection goes, from the gradient averaged over the calibration batches (SNIP: one batch). CEP's
    first-order error ``mean_b |w * g_b|`` is never smaller (triangle inequality) and equals it on one batch;
    SNIP then compares it across all layers (``threshold: global``), CEP within each output neuron."""
    return {n: (current_weight(layers[n]).double() * s[0]).abs()
            for n, s in _gradient_sums(model, layers, batches, 1, lambda w, g: [g]).items()}


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score (Lee et al. 2021) of every weight of a layer: with the layer's weights sorted so that
    ``w_1^2 <= w_2^2 <= ...``, ``score(u) = w_u^2 / sum_{v >= u} w_v^2`` (ties in sorted order; 0 for a zero
    weight). The largest weight of every layer scores 1, so one global threshold never empties a layer."""
    squares = weight.detach().double().pow(2).flatten()
    order = torch.sort(squares, stable=True).indices
    ascending = squares[order]
    tail = ascending.flip(0).cumsum(0).flip(0)
    scores = torch.zeros_like(squares)
    scores[order] = torch.where(tail > 0, ascending / torch.where(tail > 0, tail, 1.0), 0.0)
    return scores.view(weight.shape)


def magnitude_errors(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """``|w|`` of every connection (Han et al.'s criterion, on the same harness)."""
    return {n: current_weight(m).double().abs() for n, m in layers.items()}


@torch.no_grad()
def exact_loss_increase(model: nn.Module, module: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``L(w without connection i) - L(w)`` on ``(images, labels)`` for every connection of ``module`` (one forward
    pass per connection: for checking the estimates on small layers)."""
    model.eval()
    base = F.cross_entropy(model(images), labels).double()
    weight = module.weight
    out = torch.zeros(weight.numel(), dtype=torch.float64)
    flat = weight.view(-1)
    for i in range(flat.numel()):
        saved = flat[i].item()
        flat[i] = 0.0
        out[i] = F.cross_entropy(model(images), labels).double() - base
        flat[i] = saved
    return out.view_as(weight)


THRESHOLDS = ("group", "layer", "global")


def check_threshold(threshold: str) -> None:
    """A clear error for a threshold rule other than ``THRESHOLDS``."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"unknown threshold rule {threshold!r}; choose one of {THRESHOLDS}")


def threshold_ratios(groups: torch.Tensor, alive: torch.Tensor, threshold: str) -> torch.Tensor:
    """What one shared ``alpha`` is compared with: ``e / mean(alive e of the output neuron's group)`` (``group``),
    ``e / mean(alive e of the layer)`` (``layer``) or ``e`` itself (``global``); 0 where that mean is 0."""
    if threshold == "global":
        return groups
    dims = (1,) if threshold == "group" else (0, 1)
    mean = (groups * alive).sum(dims, keepdim=True) / alive.sum(dims, keepdim=True).clamp_min(1)
    return torch.where(mean > 0, groups / torch.where(mean > 0, mean, 1.0), torch.zeros_like(groups))


def connection_masks(errors: dict[str, torch.Tensor], density: float, hcep_fraction: float = 0.0,
                     previous: dict[str, torch.Tensor] | None = None, threshold: str = "group",
                     ) -> dict[str, torch.Tensor]:
    """Boolean keep-masks reaching ``density`` (fraction of connections kept over all layers).

    Each connection's ratio (``threshold_ratios``: its error over its group's or layer's mean error, or the raw
    error) is compared with one ``alpha`` for all groups; the connections with the lowest ratios go until
    ``density`` is reached. HCEP quota: the ``ceil(hcep_fraction * group size)`` highest-error connections of every
    group stay. Connections already removed (``previous`` masks) stay removed. A layer left without connections
    is an error."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0.0 <= hcep_fraction < 1.0:
        raise ValueError(f"hcep_fraction must be in [0, 1), got {hcep_fraction}")
    check_threshold(threshold)
    ratios = {}
    for name, e in errors.items():
        groups = e.reshape(e.shape[0], -1).double()
        alive = previous[name].reshape_as(groups) if previous else torch.ones_like(groups, dtype=torch.bool)
        r = threshold_ratios(groups, alive, threshold)
        quota = math.ceil(hcep_fraction * groups.shape[1])
        if quota:
            top = groups.masked_fill(~alive, -1.0).topk(quota, dim=1).indices
            r = r.scatter(1, top, float("inf"))
        ratios[name] = r.masked_fill(~alive, float("-inf"))
    flat = torch.cat([r.flatten() for r in ratios.values()])
    remove = flat.numel() - round(density * flat.numel())
    protected = int((torch.isinf(flat) & (flat > 0)).sum())
    if protected > flat.numel() - remove:
        raise ValueError(f"density {density} is below the HCEP quota ({protected} connections must stay)")
    order = torch.sort(flat, stable=True).indices
    keep_flat = torch.ones(flat.numel(), dtype=torch.bool)
    keep_flat[order[:remove]] = False
    keep_flat[torch.isinf(flat) & (flat < 0)] = False  # previously removed: never revived
    masks, start = {}, 0
    for name, e in errors.items():
        masks[name] = keep_flat[start:start + e.numel()].view(e.shape)
        start += e.numel()
    empty = [name for name, mask in masks.items() if not mask.any()]
    if empty:
        raise ValueError(f"density {density} with the {threshold!r} threshold removes every connection of {empty}; "
                         f"raise the density, use an HCEP quota or list them in pruning.exclude_layers")
    return masks


def quota_effect(errors: dict[str, torch.Tensor], density: float, hcep_fraction: float,
                 threshold: str = "group") -> dict[str, int]:
    """How much HCEP's quota changes CEP's one-shot choice at ``density``: the connections whose keep/remove
    decision differs between ``connection_masks(errors, density)`` and the same with ``hcep_fraction``, and the
    output-neuron groups holding them (out of all connections and groups)."""
    cep = connection_masks(errors, density, threshold=threshold)
    hcep = connection_masks(errors, density, hcep_fraction, threshold=threshold)
    changed = {name: (cep[name] != hcep[name]).reshape(cep[name].shape[0], -1) for name in cep}
    return {"connections_changed": sum(int(c.sum()) for c in changed.values()),
            "groups_changed": sum(int(c.any(1).sum()) for c in changed.values()),
            "connections": sum(c.numel() for c in changed.values()),
            "groups": sum(c.shape[0] for c in changed.values())}


def density_schedule(target_density: float, steps: int) -> list[float]:
    """Densities of ``steps`` prune/retrain rounds, geometric from 1 to ``target_density``."""
    return [target_density ** (i / steps) for i in range(1, steps + 1)]


class ConnectionCriterion:
    """A connection-pruning criterion as configured: ``cep`` (cross-entropy error of ``order`` 1 or 2),
    ``magnitude``, ``lamp`` or ``snip``; ``hcep_fraction`` > 0 makes CEP into HCEP; ``threshold`` is the rule of
    ``connection_masks`` (LAMP and SNIP are defined with ``global``)."""

    CRITERIA = ("cep", "magnitude", "lamp", "snip")

    def __init__(self, criterion: str = "cep", order: int = 1, hcep_fraction: float = 0.0,
                 threshold: str = "group") -> None:
        if criterion not in self.CRITERIA:
            raise ValueError(f"unknown connection criterion {criterion!r}; choose one of {self.CRITERIA}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        if not 0.0 <= hcep_fraction < 1.0:
            raise ValueError(f"hcep_fraction must be in [0, 1), got {hcep_fraction}")
        check_threshold(threshold)
        self.criterion, self.order, self.hcep_fraction = criterion, order, hcep_fraction
        self.threshold = threshold
        self.name = ("hcep" if hcep_fraction > 0 else "cep") if criterion == "cep" else criterion

    @property
    def needs_data(self) -> bool:
        return self.criterion in ("cep", "snip")

    def errors(self, model: nn.Module, layers: dict[str, nn.Module], batches: Batches | None) -> dict[str, torch.Tensor]:
        if self.criterion == "magnitude":
            return magnitude_errors(layers)
        if self.criterion == "lamp":
            return {n: lamp_scores(current_weight(m)) for n, m in layers.items()}
        if self.criterion == "snip":
            return snip_sensitivity(model, layers, batches)
        return connection_errors(model, layers, batches, self.order)
