"""Latency as a budget: the table's interpolation, the predicted latency as channels go (against the widths of the
slimmed network), the measure-and-select-again loop, the cache, the callback and prune.py's checks and record.
Measured timings are never asserted here (benchmarks/latency_budget.py measures them); where a test needs a
measurement it is replaced by a known function of the widths."""
import json

import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator
from torch import nn

from infoprune.pruning import latency
from infoprune.pruning.latency import (
    LatencyCost,
    LatencySettings,
    LatencyTable,
    bilinear,
    layer_shapes,
    select_by_latency,
)
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.selection import select_global
from infoprune.pruning.slim import slim

GRID = [0.125, 0.25, 0.5, 0.75, 1.0]


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU(),
                         nn.Conv2d(24, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def product_table(net: nn.Module, example: torch.Tensor, fixed: float) -> LatencyTable:
    """A table whose layer times are ``a_l * f_in * f_out`` (bilinear interpolation is exact on it) and whose dense
    network spends ``fixed`` times its layers' time outside them."""
    shapes = {name: vars(shape) for name, shape in layer_shapes(net, example).items()}
    weights = {name: 1e-3 * (k + 1) for k, name in enumerate(shapes)}
    seconds = {name: [[a * fi * fo for fo in GRID] for fi in GRID] for name, a in weights.items()}
    return LatencyTable("test", 8, GRID, shapes, seconds, (1 + fixed) * sum(weights.values()))


def test_interpolation_matches_scipy_between_grid_points_and_clamps_outside():
    values = np.random.default_rng(0).random((5, 5))
    reference = RegularGridInterpolator((GRID, GRID), values)
    for x, y in [(0.3, 0.9), (0.125, 1.0), (0.6, 0.2), (1.0, 0.5), (0.77, 0.13)]:
        assert bilinear(GRID, values.tolist(), x, y) == pytest.approx(float(reference([[x, y]])[0]), abs=1e-12)
    assert bilinear(GRID, values.tolist(), 0.01, 0.05) == pytest.approx(values[0, 0])  # below the grid: its corner


def test_predicted_latency_follows_the_widths_of_the_slimmed_network():
    net, example = small_net().eval(), torch.randn(1, 3, 12, 12)
    layers = find_prunable_layers(net, example)
    table = product_table(net, example, fixed=0.3)
    cost = LatencyCost(net, layers, example, table)
    assert cost.remaining("latency") == pytest.approx(1.0)
    scores = {layer.name: torch.rand(layer.num_channels) for layer in layers}
    keep = select_global(scores, layers, cost, 0.55, resource="latency")
    predicted = cost.remaining("latency")
    assert predicted <= 0.55
    slim(net, layers, keep, example)  # the same prediction from the slimmed network's own widths
    widths = {name: (shape.in_channels, shape.out_channels) for name, shape in layer_shapes(net, example).items()}
    layer_time = sum(table.layer_seconds(name, *widths[name]) for name in widths)
    dense_layers = sum(row[-1][-1] for row in table.seconds.values())
    assert predicted == pytest.approx((0.3 * dense_layers + layer_time) / (1.3 * dense_layers), rel=1e-9)
    assert cost.remaining("params") < 1 and cost.remaining("flops") < 1  # the other budgets still counted


def test_a_table_of_another_network_is_refused():
    net, example = small_net(), torch.randn(1, 3, 12, 12)
    table = product_table(net, example, 0.0)
    del table.seconds["3"]
    with pytest.raises(ValueError, match=r"another network: it has no layer \['3'\]"):
        LatencyCost(net, find_prunable_layers(net, example), example, table)


def test_selection_is_redone_until_the_measured_latency_meets_the_target():
    # the network measures 25% slower than predicted: the goal is lowered until the measurement meets the target
    measured_of = {}

    def select(goal):
        keep = {"goal": torch.tensor(goal, dtype=torch.float64)}
        measured_of[goal] = min(1.0, 1.25 * goal)
        return keep

    keep, measured, rounds = select_by_latency(select, lambda keep: measured_of[float(keep["goal"])], 0.5, 0.03, 5)
    assert [r["goal"] for r in rounds] == pytest.approx([0.5, 0.4])
    assert measured == pytest.approx(0.5) and float(keep["goal"]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="latency target 0.5 not met in 2 rounds"):
        select_by_latency(select, lambda keep: 0.9, 0.5, 0.03, 2)
    # once measured on both sides of the target, the next goal is interpolated between them (exact on a line)
    keep, measured, rounds = select_by_latency(select, lambda keep: 1.3 * float(keep["goal"]) - 0.1, 0.5, 0.001, 5)
    assert [r["goal"] for r in rounds] == pytest.approx([0.5, 0.5 * 0.5 / 0.55, 0.6 / 1.3])
    assert measured == pytest.approx(0.5)
    # one round on target: done
    keep, measured, rounds = select_by_latency(select, lambda keep: 0.6 * float(keep["goal"]), 0.5, 0.01, 3)
    assert [r["goal"] for r in rounds] == pytest.approx([0.5, 0.5 / 0.6]) and measured == pytest.approx(0.5)
    # never reaching the band (the goal is capped at the whole network): the largest network within the budget
    keep, measured, rounds = select_by_latency(select, lambda keep: 0.3 * float(keep["goal"]), 0.5, 0.01, 3)
    assert [r["goal"] for r in rounds] == pytest.approx([0.5, 1.0, 1.0]) and measured == pytest.approx(0.3)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="fractions must increase"):
        LatencySettings(fractions=(0.5, 0.25, 1.0))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        LatencySettings(repeats=0)
    with pytest.raises(ValueError, match="tolerance"):
        LatencySettings(tolerance=1.5)


def test_a_table_is_measured_once_per_device_batch_and_shapes(tmp_path, monkeypatch):
    calls = []

    def fake_seconds(calls_by_name, repeats, device):
        calls.append(len(calls_by_name))
        return {name: 1e-3 for name in calls_by_name}

    monkeypatch.setattr(latency, "interleaved_seconds", fake_seconds)
    net, example = small_net(), torch.randn(1, 3, 12, 12)
    settings = LatencySettings(batch_size=4, repeats=1, fractions=(0.5, 1.0), cache_dir=str(tmp_path))
    table = LatencyTable.measure(net, example, settings)
    assert calls == [4] * 5 + [1]  # 5 layers x 2 x 2 grid points, then the whole network
    assert LatencyTable.measure(net, example, settings) == table and len(calls) == 6  # read back from the cache
    LatencyTable.measure(net, example, LatencySettings(batch_size=8, repeats=1, fractions=(0.5, 1.0),
                                                       cache_dir=str(tmp_path)))
    assert len(calls) == 12 and len(list(tmp_path.glob("latency-*.json"))) == 2  # another batch: another table
    assert json.loads(next(tmp_path.glob("latency-*.json")).read_text())["device"] == latency.device_name(
        torch.device("cpu"))
    net.to(memory_format=torch.channels_last)  # a network run channels-last is timed so, in a table of its own
    assert LatencyTable.key(net, example, settings)["channels_last"] and len(calls) == 12
    LatencyTable.measure(net, example, settings)
    assert len(calls) == 18 and len(list(tmp_path.glob("latency-*.json"))) == 3


def test_scaled_layers_keep_depthwise_and_grouped_structure():
    from infoprune.pruning.latency import LayerShape

    depthwise = LayerShape.of(nn.Conv2d(24, 48, 3, groups=24), torch.zeros(24, 8, 8))
    conv, x = depthwise.scaled(6, 20, 2)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (6, 12, 6) and conv(x).shape == (2, 12, 6, 6)
    grouped = LayerShape.of(nn.Conv2d(24, 24, 3, groups=4), torch.zeros(24, 8, 8))
    conv, x = grouped.scaled(6, 10, 2)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (8, 12, 4) and conv(x).shape == (2, 12, 6, 6)
    linear = LayerShape.of(nn.Linear(32, 10), torch.zeros(5, 32))
    layer, x = linear.scaled(8, 10, 3)
    assert layer(x).shape == (3, 5, 10)


def predicted_ratio(table: LatencyTable, net: nn.Module, example: torch.Tensor) -> float:
    """The table's latency of ``net`` at its own widths over the dense network's (fixed part included)."""
    layers = sum(table.layer_seconds(name, shape.in_channels, shape.out_channels)
                 for name, shape in layer_shapes(net, example).items())
    dense = sum(row[-1][-1] for row in table.seconds.values())
    fixed = table.network_seconds - dense
    return (fixed + layers) / (fixed + dense)


@pytest.fixture
def known_latency(monkeypatch):
    """Latency made a known function of the widths: the table of :func:`product_table` (fixed part: ``fixed``
    times the layers' time) and a "measurement" 10% slower than that table predicts."""
    from infoprune.callbacks import pruning as callback

    def use(fixed: float = 0.2) -> None:
        def measure(cls, net, example, settings):
            return product_table(net, example, fixed)
        monkeypatch.setattr(LatencyTable, "measure", classmethod(measure))

        def relative(net, slimmed, batch, repeats):
            return 1.1 * predicted_ratio(LatencyTable.measure(net, batch, None), slimmed, batch[:1])
        monkeypatch.setattr(callback, "relative_latency", relative)
    return use


LATENCY = ["pruning/scope=global", "pruning.scope.resource=latency"]


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["pruning/scope=sensitivity", "pruning.scope.resource=latency"], "pruning.scope.resource", "global scope"),
    (LATENCY + ["pruning/schedule=iterative"], "pruning.schedule", "one shot"),
    (LATENCY + ["pruning.scope.latency.tolerance=2"], "pruning.scope.latency", "tolerance"),
    (LATENCY + ["pruning.target=0.5"], "pruning.target", "0.5 of latency is out of reach"),
])
def test_a_latency_budget_that_cannot_work_fails_before_any_work(overrides, key, message, tmp_path, known_latency):
    from infoprune.pipeline import prune
    from infoprune.validation import ConfigError
    from tests.conftest import compose_config
    from tests.test_prune import QUICK

    known_latency(fixed=10.0)  # outside the conv layers the network takes 10x their time: 50% is out of reach
    with pytest.raises(ConfigError, match=f"^{key}: .*{message}"):
        prune(compose_config("prune", QUICK + overrides, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_prune_py_meets_a_latency_target_and_records_the_measured_latency(tmp_path, known_latency, digits_baseline):
    from infoprune.models.classifier import ImageClassifier
    from infoprune.pipeline import prune
    from infoprune.search import search_objective
    from tests.conftest import compose_config
    from tests.test_prune import QUICK

    known_latency(fixed=0.2)
    cfg = compose_config("prune", QUICK + LATENCY + [f"ckpt_path={digits_baseline}", "pruning.target=0.5",
                                                     "pruning/metric=l1_in"], tmp_path / "run")
    results = prune(cfg)
    assert results["latency_target"] == 0.5 and results["latency_device"] == "test"
    # the first selection measured 10% over its goal: the goal was lowered until the measurement met the target
    rounds = results["latency_rounds"]
    assert len(rounds) >= 2 and rounds[0]["measured"] > 0.5 * 1.03 and rounds[1]["goal"] < 0.5
    assert 0.5 * 0.97 <= results["latency_remaining"] <= 0.5 * 1.03
    # the recorded figure is the final network's, as saved
    dense = ImageClassifier.load_from_checkpoint(digits_baseline, weights_only=True)
    example = dense.example_input_array
    table = product_table(dense.net, example, 0.2)
    final = ImageClassifier.load_from_checkpoint(tmp_path / "run" / "final.ckpt", weights_only=True).net
    assert results["latency_remaining"] == pytest.approx(1.1 * predicted_ratio(table, final, example), rel=1e-9)
    assert search_objective(results, "val_acc_finetuned", {"latency_remaining": 0.52}) == results["val_acc_finetuned"]


def _latency_choice_under_ddp(rank: int, world_size: int) -> dict:
    """Rank 0 "measures" the network 10% slower than the table predicts, rank 1 40% faster (as noisy timings might):
    every process keeps rank 0's choice, and only rank 0 measures."""
    import torch.distributed as dist

    from infoprune.callbacks import ChannelPruning
    from infoprune.callbacks import pruning as callback
    from infoprune.pruning.metrics import InputL1

    measured = []
    LatencyTable.measure = classmethod(lambda cls, net, example, settings: product_table(net, example, 0.2))

    def relative(net, slimmed, batch, repeats):
        measured.append(rank)
        table = product_table(net, batch[:1], 0.2)
        return (1.1 if rank == 0 else 0.6) * predicted_ratio(table, slimmed, batch[:1])

    callback.relative_latency = relative
    net, example = small_net().eval(), torch.randn(1, 3, 12, 12)
    layers = find_prunable_layers(net, example)
    scores = {layer.name: torch.rand(layer.num_channels, generator=torch.Generator().manual_seed(rank))
              for layer in layers}  # the ranks' own scores differ too
    pruning = ChannelPruning(InputL1(), 0.5, scope="global", resource="latency")
    keep = pruning.select(net, layers, scores, 0.5, example)
    everyone = [None] * world_size
    dist.all_gather_object(everyone, {"keep": {k: v.tolist() for k, v in keep.items()}, "measured": measured})
    return {"keeps": [entry["keep"] for entry in everyone], "measured": [entry["measured"] for entry in everyone]}


def test_under_ddp_the_first_process_measures_and_every_process_keeps_its_choice(tmp_path):
    from tests.two_processes import rank_zero_result

    result = rank_zero_result(_latency_choice_under_ddp, tmp_path)
    assert result["keeps"][0] == result["keeps"][1]
    assert result["measured"][0] and all(rank == 0 for rank in result["measured"][0]) and not result["measured"][1]
