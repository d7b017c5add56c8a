"""How much do two calibrations agree on which channels to keep? For runs of a sweep over statistics settings
(bins, calibration images, ...), the kept set of every layer is compared with that of a reference run (same metric
and seed, the reference setting) by the Jaccard index ``|A ∩ B| / |A ∪ B|``, averaged over layers; 1 means the
same channels were chosen. The kept set of a layer is its ``k`` highest-scoring channels, ``k`` as in the run.

    python -m infoprune.report.agreement logs/paper_cpu/calibration_* --by pruning.stats.bins pruning.stats.num_images \\
        --reference pruning.stats.num_images=5120
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import torch

from infoprune.pruning.storage import load_channel_scores
from infoprune.report.runs import load_runs


def kept_channels(scores: torch.Tensor, keep: int) -> set[int]:
    """Indices of the ``keep`` highest scores."""
    return set(torch.topk(scores, keep).indices.tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    """``|a ∩ b| / |a ∪ b|`` (1 for two empty sets)."""
    return len(a & b) / len(a | b) if a | b else 1.0


@lru_cache(maxsize=None)
def layer_scores(run_dir: str) -> dict[str, torch.Tensor]:
    """The first step's channel scores of the run in ``run_dir``, by layer (read once: a reference run is compared
    with several runs)."""
    payload = load_channel_scores(Path(run_dir) / "step_0" / "channel_scores.pt")
    return {name: entry["scores"] for name, entry in payload["layers"].items()}


def agreement(run: dict, reference: dict) -> float:
    """Mean over layers of the Jaccard index between the kept sets of ``run`` and ``reference``."""
    ours, theirs = layer_scores(run["run_dir"]), layer_scores(reference["run_dir"])
    values = [jaccard(kept_channels(ours[n], k), kept_channels(theirs[n], k)) for n, k in run["channels_after"].items()]
    return statistics.fmean(values)


def parse_reference(text: str) -> tuple[str, str]:
    """``key=value`` -> ``(key, value)``; runs match the reference when ``str`` of their value equals ``value``."""
    key, _, value = text.partition("=")
    if not value:
        raise ValueError(f"--reference must look like key=value, got {text!r}")
    return key, value


def agreement_table(runs: list[dict], by: tuple[str, ...], reference: tuple[str, str]) -> list[dict]:
    """One row per (metric, *by): mean and std over seeds of the agreement with the reference run."""
    key, value = reference
    refs = {(r["metric"], r["seed"]): r for r in runs if str(r[key]) == value}
    if not refs:
        raise ValueError(f"no reference run with {key}={value}")
    groups: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        ref = refs.get((run["metric"], run["seed"]))
        if ref is not None and run is not ref:
            groups[(run["metric"], *(run[k] for k in by))].append(agreement(run, ref))
    rows = []
    for group, values in sorted(groups.items(), key=lambda kv: str(kv[0])):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append({"group": group, "seeds": len(values), "mean": statistics.fmean(values), "std": std})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="+")
    parser.add_argument("--by", nargs="+", required=True, help="config keys that vary between the runs")
    parser.add_argument("--reference", required=True, help="key=value picking the reference runs")
    args = parser.parse_args()
    by, reference = tuple(args.by), parse_reference(args.reference)
    rows = agreement_table(load_runs(*args.sweep_dirs, by=by), by, reference)
    print(f"| metric | {' | '.join(by)} | seeds | kept-set agreement with {args.reference} (Jaccard, mean ± std) |")
    print("|" + "---|" * (len(by) + 3))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row["group"]) + f" | {row['seeds']} | {row['mean']:.3f} ± {row['std']:.3f} |")


if __name__ == "__main__":
    main()
