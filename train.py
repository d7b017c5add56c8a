"""Train a network: ``python train.py model=simplenet datamodule=cifar10_jpeg trainer.max_epochs=30``.

With no arguments it trains a quarter-width SimpleNet on scikit-learn's digits (no download) in well under a
minute on two CPU cores. Returns ``optimized_metric`` to Hydra sweepers."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from infoprune.training import metric_value, train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return metric_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
