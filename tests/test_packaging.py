"""The installed import names: everything under the ``infoprune`` namespace, nothing at the top level that could
clash with another project's ``models`` or ``pruning``; and the pruning core importable without the training
framework. One fresh interpreter (no ``PYTHONPATH``, outside the repository) answers both, in that order: first what
importing the core alone loaded, then, with everything imported, which top-level names resolve."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

FRAMEWORK = ('pytorch_lightning', 'lightning', 'hydra', 'omegaconf', 'torchmetrics', 'infoprune.models',
             'infoprune.callbacks', 'infoprune.datamodules', 'infoprune.job')
TOP_LEVEL = ('models', 'pruning', 'callbacks', 'datamodules')

PROBE = f"""
import importlib, importlib.util, json, pkgutil, sys
import infoprune.pruning as core
for module in pkgutil.iter_modules(core.__path__):
    importlib.import_module(f'infoprune.pruning.{{module.name}}')
loaded_by_core = sorted(k for k in {FRAMEWORK!r} if k in sys.modules)
import infoprune.models, infoprune.pruning.metrics, infoprune.callbacks, infoprune.datamodules
top_level = [n for n in {TOP_LEVEL!r} if importlib.util.find_spec(n) is not None]
print(json.dumps({{"loaded_by_core": loaded_by_core, "top_level": top_level}}))
"""


@pytest.fixture(scope="module")
def fresh_imports(tmp_path_factory) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path_factory.mktemp("outside"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_packages_live_under_one_namespace(fresh_imports):
    assert fresh_imports["top_level"] == []  # no top-level models / pruning / callbacks / datamodules


def test_the_pruning_core_imports_no_training_framework(fresh_imports):
    """Every module of ``infoprune.pruning`` is plain torch: importing them all loads neither Lightning nor Hydra nor
    torchmetrics nor the layers above the core (so the mathematics is usable, and tested, without a Trainer)."""
    assert fresh_imports["loaded_by_core"] == []
