"""Latency as a pruning budget, measured on the machine the job runs on.

A **latency table** holds, for every convolution and linear layer, the measured seconds of that layer alone on its
input at a grid of fractions of its input and output widths (:class:`LatencyTable`; cached per device, thread
count, batch shape and layer shapes). The predicted latency of a network at given widths is

    T(w) = T_fixed + sum_l t_l(in_l(w), out_l(w)),

``t_l`` interpolated bilinearly between grid points and ``T_fixed = max(0, T_dense - sum_l t_l(dense))`` the time
spent outside those layers (activations, normalisation, pooling, additions), held fixed. :class:`LatencyCost` keeps
``T(w) / T(dense)`` up to date as channels are removed, so that the global selection can remove the lowest-scored
channels until the predicted latency falls to the target. The prediction ignores what is not additive (caches,
fused kernels), so :func:`select_by_latency` then measures the slimmed network against the dense one, interleaved,
and selects again with the goal scaled by ``target / measured`` until the measured ratio lies within ``tolerance``
under the target (or the rounds run out, returning the largest network measured within the budget)."""
from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from infoprune.io import atomic_write_text
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.layers import PrunableLayer
from infoprune.pruning.modes import preserved_modes

Keep = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured and met.

    batch_size: images per timed forward pass (the deployment batch). repeats: timed passes per measurement (their
    median counts). fractions: grid of width fractions at which every layer is timed. tolerance: a selection is
    accepted once its measured latency ratio is within ``[target * (1 - tolerance), target * (1 + tolerance)]``.
    rounds: selections measured at most. cache_dir: where latency tables are kept (None: not kept)."""
    batch_size: int = 64
    repeats: int = 15
    fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
    tolerance: float = 0.03
    rounds: int = 5
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        fractions = tuple(float(f) for f in self.fractions)
        if not fractions or sorted(set(fractions)) != list(fractions) or fractions[-1] != 1.0 or fractions[0] <= 0:
            raise ValueError(f"latency fractions must increase from above 0 to 1.0, got {list(self.fractions)}")
        object.__setattr__(self, "fractions", fractions)
        for name in ("batch_size", "repeats", "rounds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"latency {name} must be at least 1, got {getattr(self, name)}")
        if not 0 < float(self.tolerance) < 1:
            raise ValueError(f"latency tolerance must be in (0, 1), got {self.tolerance}")


def device_name(device: torch.device) -> str:
    """What latency is measured on: the GPU's name, or the CPU's model name and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(calls: Mapping[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds after one warm-up round, the calls taken in turn within
    every round so that drift in the machine's speed reaches all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for round_ in range(repeats + 1):
            for name, call in calls.items():
                synchronize(device)
                start = time.perf_counter()
                call()
                synchronize(device)
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_format(net: nn.Module) -> torch.memory_format:
    """The memory format ``net`` runs in: channels-last when its convolution weights are stored that way."""
    weights = [p for p in net.parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1]
    if weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        return torch.channels_last
    return torch.contiguous_format


def batch_of(example: torch.Tensor, batch_size: int,
             layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``batch_size`` copies of the first example (timing does not depend on the pixel values), in ``layout``."""
    batch = example[:1].expand(batch_size, *example.shape[1:])
    return batch.contiguous(memory_format=layout) if batch.dim() == 4 else batch.contiguous()


def relative_latency(net: nn.Module, other: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Measured seconds per forward pass of ``other`` divided by those of ``net``, timed interleaved in eval mode."""
    modes = [(m, m.training) for m in (*net.modules(), *other.modules())]
    net.eval(), other.eval()
    try:
        seconds = interleaved_seconds({"net": lambda: net(batch), "other": lambda: other(batch)}, repeats,
                                      batch.device)
    finally:
        for module, training in modes:
            module.training = training
    return seconds["other"] / seconds["net"]


@dataclass
class LayerShape:
    """What a conv or linear layer's time depends on: its kind and widths, its kernel geometry and its input."""
    kind: str
    in_channels: int
    out_channels: int
    input_shape: list[int]  # one sample's input (C, H, W) or (..., in_features)
    kernel: list[int] = field(default_factory=list)
    stride: list[int] = field(default_factory=list)
    padding: list[int] | str = field(default_factory=list)
    dilation: list[int] = field(default_factory=list)
    groups: int = 1
    bias: bool = True

    @classmethod
    def of(cls, module: nn.Module, sample: torch.Tensor) -> LayerShape:
        if isinstance(module, nn.Conv2d):
            return cls("conv", module.in_channels, module.out_channels, list(sample.shape), list(module.kernel_size),
                       list(module.stride), module.padding if isinstance(module.padding, str) else list(module.padding),
                       list(module.dilation), module.groups, module.bias is not None)
        return cls("linear", module.in_features, module.out_features, list(sample.shape), bias=module.bias is not None)

    def scaled(self, in_channels: int, out_channels: int, batch_size: int) -> tuple[nn.Module, torch.Tensor]:
        """This layer at other widths, and a batch of its input. A depthwise convolution keeps one filter group per
        input (its outputs follow its inputs); a grouped one keeps its groups, widths rounded up to a multiple."""
        if self.kind == "linear":
            shape = [*self.input_shape[:-1], in_channels]
            return nn.Linear(in_channels, out_channels, bias=self.bias), torch.randn(batch_size, *shape)
        groups = self.groups
        if groups > 1 and groups == self.in_channels:  # depthwise: out = multiplier x in
            groups = in_channels
            out_channels = in_channels * (self.out_channels // self.in_channels)
        elif groups > 1:
            in_channels, out_channels = (-(-n // groups) * groups for n in (in_channels, out_channels))
        conv = nn.Conv2d(in_channels, out_channels, self.kernel, self.stride, self.padding, self.dilation, groups,
                         self.bias)
        return conv, torch.randn(batch_size, in_channels, *self.input_shape[1:])


def layer_shapes(net: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """The :class:`LayerShape` of every conv and linear layer of ``net`` (by module name) on one example."""
    shapes: dict[str, LayerShape] = {}
    names = {module: name for name, module in net.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}

    def record(module: nn.Module, args: tuple) -> None:
        shapes.setdefault(names[module], LayerShape.of(module, args[0][0]))

    hooks = [module.register_forward_pre_hook(record) for module in names]
    try:
        with torch.no_grad(), preserved_modes(net):
            net.eval()(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def bilinear(grid: list[float], values: list[list[float]], x: float, y: float) -> float:
    """``values[i][j]`` (at ``grid[i], grid[j]``) interpolated at ``(x, y)``; clamped to the grid's range."""
    def locate(v: float) -> tuple[int, float]:
        v = min(max(v, grid[0]), grid[-1])
        i = next((k for k in range(len(grid) - 1) if v <= grid[k + 1]), len(grid) - 2)
        return i, (v - grid[i]) / (grid[i + 1] - grid[i]) if len(grid) > 1 else 0.0
    if len(grid) == 1:
        return values[0][0]
    (i, a), (j, b) = locate(x), locate(y)
    return ((1 - a) * (1 - b) * values[i][j] + a * (1 - b) * values[i + 1][j]
            + (1 - a) * b * values[i][j + 1] + a * b * values[i + 1][j + 1])


@dataclass
class LatencyTable:
    """Measured seconds of every conv and linear layer alone: ``seconds[name][i][j]`` with ``fractions[i]`` of its
    inputs and ``fractions[j]`` of its outputs, on a batch of ``batch_size`` in the network's memory format
    (:func:`memory_format`); plus ``network_seconds``, the whole dense network's, measured in the same run."""
    device: str
    batch_size: int
    fractions: list[float]
    shapes: dict[str, dict]
    seconds: dict[str, list[list[float]]]
    network_seconds: float

    def layer_seconds(self, name: str, in_channels: int, out_channels: int) -> float:
        shape = self.shapes[name]
        return bilinear(self.fractions, self.seconds[name], in_channels / shape["in_channels"],
                        out_channels / shape["out_channels"])

    @staticmethod
    def key(net: nn.Module, example: torch.Tensor, settings: LatencySettings) -> dict:
        """What a table depends on: the device, torch's version, the batch, the grid and every layer's shape."""
        return {"device": device_name(example.device), "torch": torch.__version__,
                "channels_last": memory_format(net) == torch.channels_last,
                "batch_size": settings.batch_size, "repeats": settings.repeats, "fractions": list(settings.fractions),
                "shapes": {name: asdict(shape) for name, shape in layer_shapes(net, example).items()}}

    @classmethod
    def measure(cls, net: nn.Module, example: torch.Tensor, settings: LatencySettings) -> LatencyTable:
        """Time every layer of ``net`` at every grid point, and the dense network, on ``example``'s device; read
        from / written to ``settings.cache_dir`` when set (``<digest of key>.json``)."""
        key = cls.key(net, example, settings)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(settings.cache_dir) / f"latency-{digest}.json" if settings.cache_dir else None
        if cache is not None and cache.exists():
            return cls(**json.loads(cache.read_text()))
        device, fractions = example.device, list(settings.fractions)
        layout = torch.channels_last if key["channels_last"] else torch.contiguous_format
        seconds = {}
        for name, shape in key["shapes"].items():
            layer = LayerShape(**shape)
            calls = {}
            for i, fi in enumerate(fractions):
                for j, fo in enumerate(fractions):
                    module, x = layer.scaled(max(1, round(fi * layer.in_channels)),
                                             max(1, round(fo * layer.out_channels)), settings.batch_size)
                    module, x = module.to(device).eval(), x.to(device)
                    if x.dim() == 4:
                        module, x = module.to(memory_format=layout), x.contiguous(memory_format=layout)
                    calls[(i, j)] = (lambda m=module, x=x: m(x))
            measured = interleaved_seconds(calls, settings.repeats, device)
            seconds[name] = [[measured[(i, j)] for j in range(len(fractions))] for i in range(len(fractions))]
        batch = batch_of(example, settings.batch_size, layout)
        modes = [(m, m.training) for m in net.modules()]
        net.eval()
        try:
            network = interleaved_seconds({"net": lambda: net(batch)}, settings.repeats, device)["net"]
        finally:
            for module, training in modes:
                module.training = training
        table = cls(key["device"], settings.batch_size, fractions, key["shapes"], seconds, network)
        if cache is not None:
            atomic_write_text(cache, json.dumps(asdict(table), indent=1))
        return table


class LatencyCost(PruningCost):
    """:class:`PruningCost` that also predicts the network's latency from a :class:`LatencyTable`:
    ``remaining("latency") = T(w) / T(dense)`` (module docstring), updated as channels are removed."""

    def __init__(self, model: nn.Module, layers: list[PrunableLayer], example_input: torch.Tensor,
                 table: LatencyTable) -> None:
        super().__init__(model, layers, example_input)
        self.table = table
        self.names = {module: name for name, module in model.named_modules() if module in self.positions}
        missing = sorted(set(self.names.values()) - set(table.seconds))
        if missing:
            raise ValueError(f"the latency table was measured on another network: it has no layer {missing}")
        self.module_seconds = {m: self.seconds(m) for m in self.names}
        self.dense_layers = sum(self.module_seconds.values())
        self.fixed = max(0.0, table.network_seconds - self.dense_layers)

    def seconds(self, module: nn.Module) -> float:
        """The table's time for ``module`` at its current widths (a depthwise convolution's inputs follow its
        outputs)."""
        out = self.out_kept[module]
        depthwise = isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels
        inputs = out * module.in_channels // module.out_channels if depthwise else self.in_kept[module]
        return self.table.layer_seconds(self.names[module], inputs, out)

    def remove(self, name: str, channel: int) -> None:
        super().remove(name, channel)
        touched = [member.module for member in self.layers[name].members] + [m for m, _ in self.reads[name]]
        for module in touched:
            self.module_seconds[module] = self.seconds(module)

    def remaining(self, resource: str) -> float:
        if resource != "latency":
            return super().remaining(resource)
        return (self.fixed + sum(self.module_seconds.values())) / (self.fixed + self.dense_layers)


def select_by_latency(select: Callable[[float], Keep], measure: Callable[[Keep], float], target: float,
                      tolerance: float, rounds: int) -> tuple[Keep, float, list[dict[str, float]]]:
    """Channels to keep so that the measured latency ratio is at most ``target * (1 + tolerance)``.

    ``select(goal)``: the selection whose predicted latency ratio is ``goal``; ``measure(keep)``: the measured
    ratio of that network to the dense one. The first goal is the target; each later one is interpolated
    linearly at the target between the nearest goals measured under and over it (regula falsi), or, before both
    exist, ``goal * target / measured`` (capped at 1). Stops once a measurement lies within ``tolerance`` of the
    target. Returns the largest measured network within the budget, its measured ratio and every round's
    ``{goal, measured}``; raises ``ValueError`` when no round met the budget."""
    goal, best, history = float(target), None, []
    under: tuple[float, float] | None = None  # (goal, measured) of the largest goal measured within the target
    over: tuple[float, float] | None = None  # ... of the smallest goal measured over it
    for _ in range(rounds):
        keep = select(goal)
        measured = float(measure(keep))
        history.append({"goal": goal, "measured": measured})
        if measured <= target * (1 + tolerance) and (best is None or measured > best[1]):
            best = (keep, measured)
        if abs(measured / target - 1) <= tolerance:
            break
        if measured < target and (under is None or goal > under[0]):
            under = (goal, measured)
        if measured > target and (over is None or goal < over[0]):
            over = (goal, measured)
        if under is not None and over is not None and over[0] > under[0] and over[1] > under[1]:
            goal = under[0] + (target - under[1]) * (over[0] - under[0]) / (over[1] - under[1])
        else:
            goal = min(1.0, goal * target / measured)
    if best is None:
        raise ValueError(f"latency target {target} not met in {rounds} rounds: measured "
                         f"{[round(h['measured'], 4) for h in history]} of the dense network's latency")
    return best[0], best[1], history
