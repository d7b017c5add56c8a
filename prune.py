"""Prune a network: ``python prune.py ckpt_path=<trained.ckpt> pruning/metric=mi pruning.target=0.7``.

With no arguments: trains the quarter-width SimpleNet on digits, prunes 70% of every conv layer's parameters by
weighted MI, fine-tunes, and prints the before/after table (about a minute on two CPU cores). Sweeps:
``python prune.py -m pruning/metric=mi,wmi,entropy,l1_in,l1_out pruning.target=0.3,0.5,0.7 seed=0,1,2``; an
Optuna search: ``python prune.py -m hparams_search=prune_budget``."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from infoprune.pipeline import prune  # noqa: E402
from infoprune.search import returned_value  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="prune")
def main(cfg: DictConfig) -> float | None:
    """Runs the job; returns what a search maximises (``search.objective`` under ``search.constraints``)."""
    return returned_value(prune(cfg), cfg.search.objective, cfg.search.constraints or {})


if __name__ == "__main__":
    main()
