"""The installed import names: everything under the ``infoprune`` namespace, nothing at the top level that could
clash with another project's ``models`` or ``pruning``."""
from __future__ import annotations

import os
import subprocess
import sys


def test_installed_packages_live_under_one_namespace(tmp_path):
    code = ("import importlib.util, infoprune.models, infoprune.pruning.metrics, infoprune.callbacks, "
            "infoprune.datamodules; print([n for n in ('models', 'pruning', 'callbacks', 'datamodules') "
            "if importlib.util.find_spec(n) is not None])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"  # no top-level models / pruning / callbacks / datamodules


def test_the_pruning_core_imports_no_training_framework(tmp_path):
    """Every module of ``infoprune.pruning`` is plain torch: importing them all loads neither Lightning nor Hydra nor
    torchmetrics nor the layers above the core (so the mathematics is usable, and tested, without a Trainer)."""
    code = ("import importlib, pkgutil, sys, infoprune.pruning as core\n"
            "for module in pkgutil.iter_modules(core.__path__): importlib.import_module(f'infoprune.pruning.{module.name}')\n"
            "print(sorted(k for k in ('pytorch_lightning', 'lightning', 'hydra', 'omegaconf', 'torchmetrics', "
            "'infoprune.models', 'infoprune.callbacks', 'infoprune.datamodules', 'infoprune.job') "
            "if k in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
