"""The main job's terminal: Lightning's start-up lines at most once, no known-harmless third-party warning, every
phase named as it starts; ``verbose=true`` brings everything back."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STARTUP_LINES = ("GPU available", "TPU available", "litlogger", "already configured with model summary")


def run_main_job(tmp_path, *extra: str) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "prune.py"), "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}", *extra]
    result = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow  # 15-45 s on 2 cores: outside the default suite's 4-minute budget
def test_start_up_lines_once_phases_named_and_verbose_brings_everything_back(tmp_path):
    quiet = run_main_job(tmp_path / "quiet", "finetune.max_epochs=1")
    lines = quiet.splitlines()
    for text in STARTUP_LINES:
        assert sum(text in line for line in lines) <= 1, text
    assert "LeafSpec" not in quiet
    for phase in ("baseline", "baseline_test", "step_0", "pruned_test", "finetune", "finetuned_test"):
        assert f" {phase} " in quiet, phase  # a rule: ──── name ────
    verbose = run_main_job(tmp_path / "verbose", "finetune.max_epochs=0", "verbose=true")  # no fine-tune needed
    assert verbose.count("GPU available") > 1 and "LeafSpec" in verbose
