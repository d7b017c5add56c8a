"""Every benchmark runs (tiny sizes) and ends with one JSON line holding the figures its issue names."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = {
    "data_throughput": (["--batches", "3", "--width", "0.125", "--batch-size", "32"], "data_wait_share"),
    "stats_overhead": (["--images", "64", "--repeats", "1", "--simplenet-width", "0.125", "--batch-size", "32"],
                       "stats_over_inference"),
    "slim_latency": (["--width", "0.125", "--repeats", "1", "--batch-size", "4"], "speedup_over_flop_ratio"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_prints_a_table_and_a_last_json_line(name, tmp_path):
    args, key = CASES[name]
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}  # synthetic data where a dataset is read
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(env, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert key in figures and len(lines) > 2
    if name == "slim_latency":
        assert "slim_vs_dense" in figures
