"""Sensitivity analysis: the measurement (a redundant half of a group costs nothing), the table and its plots, the
allocation that pruning/scope=sensitivity makes from it, the Hydra multirun with merged shards, and bad input
failing before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from infoprune.builders import build_model
from infoprune.models import SimpleNet
from infoprune.pipeline import prune
from infoprune.pruning.allocation import (
    SensitivityTable,
    allocate_widths,
    read_rows,
    read_table,
    removal_order,
    write_table,
)
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.layers import find_prunable_layers
from infoprune.sensitivity import MergeSensitivity, SensitivityRun, check_sensitivity, save_sensitivity, sensitivity
from infoprune.validation import ConfigError
from tests.conftest import FAST, ROOT, compose_config


def duplicated_half(model, group: str, consumer: str) -> None:
    """Make the second half of ``group``'s channels copies of the first half that nothing reads (the consumer's
    weights on them are zero): the half is redundant."""
    layer = {layer.name: layer for layer in find_prunable_layers(model.net, model.example_input_array)}[group]
    half = layer.num_channels // 2
    bn = layer.taps["bn"]
    with torch.no_grad():
        for t in (layer.module.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t[half:] = t[:half]
        dict(model.net.named_modules())[consumer].weight[:, half:] = 0.0


@pytest.mark.parametrize("recalibration", [0, 64])
def test_a_group_of_duplicates_loses_nothing_at_half(tmp_path, recalibration):
    """Also with BatchNorm re-estimated: the baseline is measured after the same re-estimation."""
    cfg = compose_config("sensitivity", FAST + ["trainer.max_epochs=1", "pruning/metric=l1_out",
                                                "sensitivity.ratios=[0.5,0.9]", "sensitivity.mode=channels",
                                                "sensitivity.layers=[features.13.conv]",
                                                f"sensitivity.recalibrate_bn_images={recalibration}"],
                         tmp_path / "run")
    checked, ratios, layers = check_sensitivity(cfg)
    run = SensitivityRun(cfg, checked)
    model = build_model(cfg, checked.datamodule)
    duplicated_half(model, "features.13.conv", "features.14.conv")
    run.baseline = lambda: model  # the constructed network instead of a trained one
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = run.measure(ratios, layers)
    half, most = rows
    assert (half["layer"], half["ratio"], half["channels_kept"]) == ("features.13.conv", 0.5, 32)
    assert half["acc"] == half["baseline_acc"]  # the copies nobody reads are what l1_out removes first
    assert most["channels_kept"] == 7 and 0 < half["params_removed"] < most["params_removed"]
    for key, value in model.state_dict().items():  # every point is measured on the restored network
        assert torch.equal(value, before[key]), key
    save_sensitivity(rows, tmp_path)
    assert (tmp_path / "sensitivity.png").stat().st_size > 0 and (tmp_path / "sensitivity_heatmap.png").exists()
    table = read_table(tmp_path / "sensitivity.csv")
    assert table.curves == {"features.13.conv": [(0.5, half["acc"]), (0.9, most["acc"])]}
    assert table.metric == "l1_out"


def small_network():
    torch.manual_seed(0)
    net = SimpleNet(num_classes=4, in_channels=1, width=0.125, pool_after=[3, 6])
    example = torch.zeros(1, 1, 8, 8)
    return net, find_prunable_layers(net, example), example


def test_allocation_takes_the_cheapest_loss_per_parameter_first_and_stops_at_the_target():
    net, layers, example = small_network()
    names = [layer.name for layer in layers]
    wide = max(range(len(layers)), key=lambda i: layers[i].num_channels)
    cheap, costly = names[wide], names[wide - 1]  # the widest group (enough parameters alone) and the one before
    curves = {cheap: [(0.5, 0.89), (0.9, 0.80)], costly: [(0.5, 0.50), (0.9, 0.20)]}
    table = SensitivityTable(curves, baseline_acc=0.90, metric="l1_in")
    scores = {layer.name: torch.rand(layer.num_channels) for layer in layers}
    alone = PruningCost(net, layers, example)
    for channel in range(layers[wide].num_channels * 9 // 10):
        alone.remove(cheap, channel)
    target = 0.8 * (1.0 - alone.remaining("params"))  # within what the cheap group alone can give
    cost = PruningCost(net, layers, example)
    widths = allocate_widths(table, layers, scores, cost, target=target, mode="channels")
    assert widths[costly] == layers[wide - 1].num_channels  # the costly group is left alone
    assert all(widths[n] == layer.num_channels for n, layer in zip(names, layers) if n not in curves)
    assert cost.remaining("params") <= 1.0 - target
    fresh = PruningCost(net, layers, example)  # one channel fewer would miss the target
    for (channel,) in removal_order(layers[wide], scores[cheap])[: layers[wide].num_channels - widths[cheap] - 1]:
        fresh.remove(cheap, channel)
    assert fresh.remaining("params") > 1.0 - target
    with pytest.raises(ValueError, match="out of reach"):
        allocate_widths(table, layers, scores, PruningCost(net, layers, example), target=0.95)
    with pytest.raises(KeyError, match="does not have"):
        allocate_widths(SensitivityTable({"nope": [(0.5, 0.5)]}, 0.9, "x"), layers, scores, cost, 0.1)


def test_table_files_are_checked(tmp_path):
    (tmp_path / "bad.csv").write_text("layer,ratio\nfeatures.0.conv,0.5\n")
    with pytest.raises(ValueError, match="columns"):
        read_table(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="python -m infoprune.sensitivity"):
        read_table(tmp_path / "missing.csv")
    row = dict(layer="a", ratio=0.5, channels=8, channels_kept=4, params_removed=0.1, flops_removed=0.1, acc=0.5,
               baseline_acc=0.9, metric="l1_in")
    write_table([row, dict(row, ratio=0.6, baseline_acc=0.8)], tmp_path / "mixed.csv")
    with pytest.raises(ValueError, match="mixes runs"):
        read_table(tmp_path / "mixed.csv")


def test_merging_shards_joins_them_in_the_network_order_and_rejects_repeats(tmp_path):
    from omegaconf import OmegaConf
    row = dict(layer="a", ratio=0.5, channels=8, channels_kept=4, params_removed=0.1, flops_removed=0.1, acc=0.5,
               baseline_acc=0.9, metric="l1_in")
    # round-robin shards of groups a, b, c, d, e; job 0 ran shard 1 (b, d), job 1 shard 0 (a, c, e)
    for job, (shard, layers) in enumerate([(1, "bd"), (0, "ace")]):
        write_table([dict(row, layer=layer, ratio=ratio) for layer in layers for ratio in (0.5, 0.7)],
                    tmp_path / str(job) / "sensitivity.csv")
        OmegaConf.save({"sensitivity": {"shard": shard, "num_shards": 2}}, tmp_path / str(job) / "config_resolved.yaml")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    MergeSensitivity().on_multirun_end(config)
    assert [(r["layer"], r["ratio"]) for r in read_rows(tmp_path / "sensitivity.csv")] == [
        (layer, ratio) for layer in "abcde" for ratio in (0.5, 0.7)]
    write_table([row], tmp_path / "2" / "sensitivity.csv")
    with pytest.raises(ValueError, match="more than once"):
        MergeSensitivity().on_multirun_end(config)


@pytest.mark.parametrize("override,key", [("sensitivity.ratios=[0.0,0.5]", "sensitivity.ratios"),
                                          ("sensitivity.ratios=[0.5,1.0]", "sensitivity.ratios"),
                                          ("sensitivity.layers=[features.0.conv,nope]", "sensitivity.layers"),
                                          ("sensitivity.shard=2", "sensitivity.shard"),
                                          ("pruning/metric=cep", "pruning.metric"),
                                          ("trainer=ddp_cpu", "trainer")])
def test_bad_input_fails_before_any_work(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sensitivity(compose_config("sensitivity", FAST + [override], tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # 15-45 s on 2 cores: outside the default suite's 4-minute budget
def test_multirun_shards_merge_and_the_scope_prunes_from_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "infoprune.sensitivity", "-m", "sensitivity.num_shards=2", "sensitivity.shard=0,1",
           "sensitivity.ratios=[0.25,0.5,0.75]", "trainer.max_epochs=1", "pruning/metric=l1_in", "logger=none",
           "callbacks.rich_progress_bar=null", "callbacks.model_summary=null", f"baseline_cache={tmp_path / 'cache'}",
           f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_table(sweep / "sensitivity.csv")
    assert len(table.curves) == 13 and all(len(points) == 3 for points in table.curves.values())
    assert {r["layer"] for r in read_rows(sweep / "0" / "sensitivity.csv")}.isdisjoint(
        {r["layer"] for r in read_rows(sweep / "1" / "sensitivity.csv")})
    assert (sweep / "sensitivity_heatmap.png").exists()
    base = FAST + ["trainer.max_epochs=1", "pruning/metric=l1_in", "finetune.max_epochs=0",
                   f"baseline_cache={tmp_path / 'cache'}", "pruning/scope=sensitivity", "pruning.target=0.4"]
    with pytest.raises(ConfigError, match="pruning.scope.table"):
        prune(compose_config("prune", base, tmp_path / "no_table"))
    with pytest.raises(ConfigError, match="pruning.schedule"):
        prune(compose_config("prune", base + [f"pruning.scope.table={sweep / 'sensitivity.csv'}",
                                              "pruning/schedule=iterative"], tmp_path / "iterative"))
    results = prune(compose_config("prune", base + [f"pruning.scope.table={sweep / 'sensitivity.csv'}"],
                                   tmp_path / "scope"))
    assert results["scope"] == "sensitivity" and 0.6 - 0.01 < results["params_remaining"] <= 0.6
    assert len(list((tmp_path / "cache").glob("*.ckpt"))) == 1  # both shards and the pruning job share one baseline
