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
