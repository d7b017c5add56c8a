"""Run records: the small files that make a finished sweep reportable and resumable elsewhere.

A finished job's record is its ``results.json`` with the ``config_resolved.yaml`` and ``overrides.yaml`` beside it
(what :func:`infoprune.report.load_runs` reads, and what a rerun of the sweep recognises as done); a
finished baseline-cache entry is its ``baseline-<digest>.ckpt`` (weights only) with its training curve
``baseline-<digest>.json``; a sensitivity analysis's record is its ``sensitivity.csv`` (what
``pruning/scope=sensitivity`` reads). Checkpoints of jobs, logs and unfinished work (``*.partial``, ``*.lock``) are not
records. Copying records from ``logs/`` into a published directory keeps them across fresh checkouts; copying them
back lets a rerun of the same sweep skip every finished job and every trained baseline::

    python -m infoprune.records logs/criteria docs/results/runs/criteria     # publish
    python -m infoprune.records docs/results/runs/criteria logs/criteria     # restore, then rerun the sweep
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
from pathlib import Path

JOB_RECORD = ("results.json", "config_resolved.yaml", "overrides.yaml")


def record_files(root: str | Path) -> list[Path]:
    """Paths, relative to ``root``, of every finished job's record, every finished baseline-cache entry and every
    sensitivity table."""
    root = Path(root)
    found = set(root.rglob("sensitivity.csv"))
    for results in root.rglob("results.json"):
        found.update(results.with_name(name) for name in JOB_RECORD if results.with_name(name).exists())
    for weights in root.rglob("baseline-*.ckpt"):
        if not any(part.endswith(".partial") for part in weights.relative_to(root).parts):
            found.update(f for f in (weights, weights.with_suffix(".json")) if f.exists())
    return sorted(f.relative_to(root) for f in found)


def copy_records(source: str | Path, target: str | Path) -> dict[str, int]:
    """Copy the records under ``source`` to the same relative paths under ``target``. A record that ``target``
    already holds with other content is an error raised before anything is copied (nothing there is overwritten);
    returns how many files were ``copied`` and how many were already there, ``unchanged``."""
    source, target = Path(source), Path(target)
    files = record_files(source)
    if not files:
        raise FileNotFoundError(f"no finished job (results.json), baseline-cache entry or sensitivity table under "
                                f"{source}")
    clashes = [f for f in files if (target / f).exists() and not filecmp.cmp(source / f, target / f, shallow=False)]
    if clashes:
        listed = ", ".join(str(target / f) for f in clashes[:5])
        raise FileExistsError(f"{len(clashes)} record(s) under {target} differ from {source}'s: {listed}; "
                              "nothing was copied")
    copied = 0
    for f in files:
        if not (target / f).exists():
            (target / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / f, target / f)
            copied += 1
    return {"copied": copied, "unchanged": len(files) - copied}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infoprune.records", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a sweep directory, a directory of sweeps or a baseline cache")
    parser.add_argument("target", help="where the records go, at the same relative paths")
    args = parser.parse_args(argv)
    counts = copy_records(args.source, args.target)
    print(f"{counts['copied']} record file(s) copied to {args.target}, {counts['unchanged']} already there")


if __name__ == "__main__":
    main()
