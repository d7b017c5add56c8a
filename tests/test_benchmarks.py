"""Every benchmark runs (tiny sizes) and ends with one JSON line holding the figures its issue names."""
from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

CASES = {
    "data_throughput": (["--batches", "3", "--width", "0.125", "--batch-size", "32"], "data_wait_share"),
    "stats_overhead": (["--images", "64", "--repeats", "1", "--simplenet-width", "0.125", "--batch-size", "32",
                        "--memory-images", "32"],
                       "scoring_over_one_inference_pass"),
    "slim_latency": (["--width", "0.125", "--repeats", "1", "--batch-size", "4", "--tv-size", "32"],
                     "speedup_over_flop_ratio"),
    "train_throughput": (["--networks", "lenet5", "--batches", "2", "--warmup", "1", "--repeats", "1", "--no-compile"],
                         "lightning_over_plain_lenet5"),
    "latency_budget": (["--width", "0.5", "--repeats", "3", "--batch-size", "32", "--tv-size", "96", "--tv-batch", "8",
                        "--digits-width", "1.0", "--digits-batch", "256", "--epochs", "1"], "latency_over_target"),
    "job_time_budget": (["trainer.max_epochs=1", "finetune.max_epochs=1", "pruning.stats.num_images=256",
                         "trainer.accelerator=cpu", "logger=none"], "outside_network_share"),
}


#: train_throughput: its timing logic has a fast test of its own (the ticking clock below); latency_budget: whether
#: a latency target is reachable depends on the machine's timings (tests/test_latency.py covers its logic)
SLOW_CASES = {"train_throughput", "latency_budget"}
COMMAND_LINE = "stats_overhead"  # run as ``python -m benchmarks.<name>``; the others through their main() here


def benchmark_output(name: str, args: list[str], monkeypatch, capsys) -> str:
    """What ``python -m benchmarks.<name> ARGS`` prints, on synthetic data where a dataset is read."""
    monkeypatch.delenv("DATA_DIR", raising=False)
    if name == COMMAND_LINE:
        result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args])
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    try:
        importlib.import_module(f"benchmarks.{name}").main()
    finally:
        torch.set_num_threads(threads)  # a benchmark may time other thread counts
    return capsys.readouterr().out


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name
                                  for name in sorted(CASES)])
def test_benchmark_prints_a_table_and_a_last_json_line(name, monkeypatch, capsys):
    args, key = CASES[name]
    lines = benchmark_output(name, args, monkeypatch, capsys).strip().splitlines()
    figures = json.loads(lines[-1])
    assert len(lines) > 2 and math.isfinite(figures[key]) and figures[key] > 0
    if name == "data_throughput":
        assert 0 <= figures[key] <= 1  # a share of the step time
    if name == "stats_overhead":  # peak memory measured at N and 8N images, each in its own process
        assert figures["memory_images"] == 32 and all(len(sizes) == 2 for key, sizes in figures.items()
                                                      if key.endswith("/peak_added_bytes"))
    if name == "train_throughput":  # the best setting is one of those measured, the current one included
        assert figures["best_over_current_lenet5"] >= 1 and figures["lenet5/machine/2x1"] > 0
        assert figures["best_setting_lenet5"] != "bare" and figures["bare_lightning_over_plain_lenet5"] > 0
    if name == "latency_budget":  # measured again after the selection; both digits jobs fine-tuned
        assert figures["latency_over_target_simplenet"] > 0 and figures["latency_over_target_resnet18"] > 0
        assert 0 <= figures["acc_latency_budget"] <= 1 and 0 <= figures["acc_flops_budget"] <= 1
    if name == "job_time_budget":  # a share of the wall time; the network ran forward and backward
        assert 0 < figures[key] < 1 and figures["forward_s"] > 0 and figures["backward_s"] > 0
        assert figures["phase/finetune"] > 0
    if name == "slim_latency":  # FLOP counts are exact: the ratio printed is the one the figures hold
        assert figures["flop_ratio"] > 1 and figures["slim_vs_dense"] > 0
        assert figures["speedup_over_flop_ratio"] == pytest.approx(figures["speedup"] / figures["flop_ratio"],
                                                                   abs=2e-3)
        for network in ("resnet18", "mobilenet_v2"):  # half the FLOPs removed, within one channel of a group
            assert 2.0 <= figures[f"flop_ratio_{network}"] < 2.1 and figures[f"speedup_over_flop_ratio_{network}"] > 0


def test_train_throughput_times_with_the_clock_it_is_given(monkeypatch):
    """A clock that ticks once per reading: the plain loop reads it at the start and the end of the timed batches,
    the Lightning measurement at the first timed batch's start and every timed batch's end."""
    from benchmarks.train_throughput import lightning_images_per_s, plain_images_per_s

    monkeypatch.delenv("DATA_DIR", raising=False)  # synthetic MNIST-shaped images

    def ticking():
        ticks = iter(range(1, 1000))
        return lambda: float(next(ticks))

    assert plain_images_per_s("lenet5", 3, 1, clock=ticking()) == 3 * 64  # 3 batches of 64 in one tick
    assert lightning_images_per_s("lenet5", [], 3, 1, ticking()) == 3 * 64 / 3  # ticks 1 -> 4
