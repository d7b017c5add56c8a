"""Does HCEP's quota change CEP's choice? For a trained network and a connection-pruning config, the cross-entropy
errors are computed once on the configured calibration images, then CEP's and HCEP's one-shot masks are compared
for every (density, quota) pair: the connections decided differently and the groups holding them.

    DATA_DIR=../shared/datasets python -m infoprune.hcep_quota <checkpoint> --densities 0.16 0.08 \\
        --fractions 0.05 0.1 0.15 -- experiment=cep_lenet5_mnist 'pruning.exclude_layers=[features.0,classifier.3]'

Prints a table and, as its last line, one JSON object with every row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from rich.console import Console
from rich.table import Table

from infoprune.builders import build_datamodule, build_model
from infoprune.pruning.cep import ConnectionCriterion, prunable_weights, quota_effect

CONF = Path(__file__).resolve().parent.parent / "conf"


def quota_rows(checkpoint: str, overrides: list[str], densities: list[float], fractions: list[float]) -> list[dict]:
    """One row per (density, fraction) with quota >= density left out (HCEP would refuse it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("prune", [*overrides, f"ckpt_path={checkpoint}"])
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule).eval()
    stats = cfg.pruning.stats
    batches = datamodule.calibration_batches(stats.num_images, stats.batch_size, stats.seed, torch.device("cpu"))
    layers = prunable_weights(model.net, cfg.pruning.get("exclude_layers") or [])
    errors = ConnectionCriterion("cep", order=cfg.pruning.metric.get("order", 1)).errors(model.net, layers, batches)
    threshold = cfg.pruning.metric.get("threshold", "group")
    return [{"density": d, "hcep_fraction": f, **quota_effect(errors, d, f, threshold)}
            for d in densities for f in fractions if f < d]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line; everything after ``--`` is a Hydra override of the prune config."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.16, 0.08])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    return args


def main() -> None:
    args = parse_arguments(sys.argv[1:])
    rows = quota_rows(args.checkpoint, args.overrides, args.densities, args.fractions)
    table = Table(title="HCEP quota vs CEP, one shot")
    for column in ("density", "HCEP fraction", "connections changed", "groups changed"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['density']:.0%}", f"{r['hcep_fraction']:.0%}",
                      f"{r['connections_changed']:,} of {r['connections']:,}", f"{r['groups_changed']} of {r['groups']}")
    Console().print(table)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
