"""The runs of a sweep and their aggregation: every ``results.json`` read, grouped into rows (mean and std over
seeds per metric, scope, schedule, target and ``--by`` keys), with what a row is named by."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

GROUP = ("metric", "scope", "schedule", "target")


COLUMNS = ("acc_baseline", "acc_pruned", "acc_finetuned", "params_remaining", "flops_remaining")


OPTIONAL = ("storage_reduction", "wall_s")


#: how the phases in results.json's ``phase_s`` are grouped in the report's time table, in pipeline order
PHASE_GROUPS = ("waiting for a shared baseline", "baseline", "statistics", "selection and slimming",
                "fine-tunes between steps", "BatchNorm re-estimation", "final fine-tune", "tests")


def phase_group(phase: str) -> str:
    """The time-table column of a phase name recorded by the pipeline (``step_0/statistics``, ``finetune``...)."""
    if phase.endswith(("_test", "_val")):  # the test passes and the final network's validation pass
        return "tests"
    if phase.endswith("/statistics"):
        return "statistics"
    if "/selection" in phase:
        return "selection and slimming"
    if phase.startswith("step_") and phase.endswith("_finetune"):
        return "fine-tunes between steps"
    return {"baseline": "baseline", "baseline_wait": "waiting for a shared baseline", "finetune": "final fine-tune",
            "recalibration": "BatchNorm re-estimation"}[phase]


def grouped_phases(run: dict) -> dict[str, float]:
    """Seconds per :data:`PHASE_GROUPS` column of one run, and ``other`` (the rest of ``wall_s``, which starts after
    the config check: loggers, parameter and FLOP counts, saving)."""
    groups = dict.fromkeys(PHASE_GROUPS, 0.0)
    for phase, seconds in run["phase_s"].items():
        groups[phase_group(phase)] += seconds
    groups["other"] = run["wall_s"] - sum(groups.values())
    return groups


def load_runs(*sweep_dirs: str | Path, by: tuple[str, ...] = ()) -> list[dict]:
    """Every ``results.json`` under the given directories, with its directory as ``run_dir``; each ``by`` key
    (dotted config path) is added to its run from the job's ``config_resolved.yaml``. Connection runs written
    before their scope named the threshold rule (scope ``connection``) get it from that config (``group`` when it
    has none: the only rule there was)."""
    runs = []
    for sweep_dir in sweep_dirs:
        files = sorted(Path(sweep_dir).rglob("results.json"))
        if not files:
            raise FileNotFoundError(f"no results.json under {sweep_dir}: is it a prune.py run or multirun directory?")
        for file in files:
            run = json.loads(file.read_text())
            run["run_dir"] = str(file.parent)
            if run.get("scope") == "connection":
                run["scope"] = f"connection/{config_value(file, 'pruning.metric.threshold', 'group')}"
            if by:
                config = OmegaConf.load(file.with_name("config_resolved.yaml"))
                for key in by:
                    value = OmegaConf.select(config, key, default=KeyError)
                    if value is KeyError:
                        raise KeyError(f"{key!r} is not in {file.with_name('config_resolved.yaml')}")
                    run[key] = value
            runs.append(run)
    return runs


def config_value(results_file: Path, key: str, default: object) -> object:
    """``key`` (dotted path) of the ``config_resolved.yaml`` beside ``results_file``; ``default`` if either is
    missing."""
    config = results_file.with_name("config_resolved.yaml")
    return OmegaConf.select(OmegaConf.load(config), key, default=default) if config.exists() else default


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def was_finetuned(run: dict) -> bool:
    """``finetune_epochs > 0`` as recorded in results.json; for runs written before that field existed, whether the
    fine-tuned accuracy differs from the pruned one."""
    if "finetune_epochs" in run:
        return run["finetune_epochs"] > 0
    return run["acc_finetuned"] != run["acc_pruned"]


def final_accuracy(run: dict) -> float:
    """``acc_finetuned`` of a fine-tuned run, ``acc_pruned`` of one that was not."""
    return run["acc_finetuned"] if was_finetuned(run) else run["acc_pruned"]


def accuracy_drop(run: dict) -> float:
    """``acc_baseline - final accuracy`` of one run: paired by run, so its spread over seeds excludes the spread of
    the baselines."""
    return run["acc_baseline"] - final_accuracy(run)


def paired_differences(runs: list[dict], reference: str, by: tuple[str, ...] = ()) -> dict[tuple, list[float]]:
    """Per (metric, scope, schedule, target, *by): ``final accuracy(run) - final accuracy(reference run)`` for every
    seed that both the row and the ``reference`` metric ran with the same scope, schedule, target and ``by``
    values (the same baseline, so the baseline's spread cancels). A seed run more than once is averaged first."""
    keys = GROUP + tuple(by)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in keys)].append(run)
    per_seed = {key: per_seed_accuracy(members) for key, members in groups.items()}
    return {key: seed_differences(seeds, per_seed.get((reference, *key[1:]), {})) for key, seeds in per_seed.items()}


def per_seed_accuracy(runs: list[dict]) -> dict[object, float]:
    """Seed -> mean :func:`final_accuracy` of the runs with that seed."""
    by_seed: dict[object, list[float]] = defaultdict(list)
    for run in runs:
        by_seed[run.get("seed")].append(final_accuracy(run))
    return {seed: statistics.fmean(accs) for seed, accs in by_seed.items()}


def seed_differences(first: dict, second: dict) -> list[float]:
    """``first[s] - second[s]`` over the seeds ``s`` both map (seed -> accuracy), in seed order."""
    return [first[s] - second[s] for s in sorted(set(first) & set(second), key=str)]


def aggregate(runs: list[dict], by: tuple[str, ...] = (), reference: str | None = None) -> list[dict]:
    """One row per (metric, scope, schedule, target, *by): mean and std over seeds of every column, and the seeds.
    ``finetuned`` says whether any run of the row was fine-tuned (see :func:`was_finetuned`); ``acc_finetuned`` is
    then over those runs only, else it repeats the pruned accuracy. ``drop``: :func:`accuracy_drop` over the same
    runs. With a ``reference`` metric, ``vs_reference``: mean and std of :func:`paired_differences` and their
    count (absent where no seed pairs). ``per_seed``: :func:`per_seed_accuracy` of the same runs."""
    keys = GROUP + tuple(by)
    paired = paired_differences(runs, reference, by) if reference else {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in keys)].append(run)
    rows = []
    for key, members in groups.items():
        row = dict(zip(keys, key, strict=True), by=tuple(by), runs=len(members),
                   seeds=sorted({m.get("seed") for m in members}, key=str))
        for column in COLUMNS:
            row[column] = mean_std([m[column] for m in members])
        tuned = [m for m in members if was_finetuned(m)]
        row["finetuned"] = bool(tuned)
        if tuned:
            row["acc_finetuned"] = mean_std([m["acc_finetuned"] for m in tuned])
        row["drop"] = mean_std([accuracy_drop(m) for m in (tuned or members)])
        for optional in OPTIONAL:
            if all(optional in m for m in members):
                row[optional] = mean_std([m[optional] for m in members])
        if paired.get(key):
            row["vs_reference"] = (*mean_std(paired[key]), len(paired[key]))
        row["per_seed"] = per_seed_accuracy(tuned or members)
        if all(m.get("channels_before") for m in members):
            row["kept"] = {layer: statistics.fmean(m["channels_after"][layer] / m["channels_before"][layer]
                                                   for m in members) for layer in members[0]["channels_before"]}
        if all("phase_s" in m for m in members):
            per_run = [grouped_phases(m) for m in members]
            row["phases"] = {k: statistics.fmean(p[k] for p in per_run) for k in per_run[0]}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["scope"], r["schedule"], r["target"], *(r[k] for k in by),
                                       -r["acc_finetuned"][0]))


def by_suffix(row: dict) -> str:
    """``, key=value`` for each ``--by`` key of the row (the key's last dotted part), or empty."""
    return "".join(f", {k.rsplit('.', 1)[-1]}={row[k]}" for k in row["by"])


def label(row: dict) -> str:
    """``metric (scope, schedule[, key=value ...])``: one plotted line."""
    return f"{row['metric']} ({row['scope']}, {row['schedule']}{by_suffix(row)})"


def setting_name(row: dict) -> str:
    """``scope, schedule, target t[, key=value ...]``: everything that groups a row but its metric."""
    return f"{row['scope']}, {row['schedule']}, target {row['target']}{by_suffix(row)}"


def plateau_gain(curve: list[float], fraction: float = 0.2) -> float:
    """How much the best validation accuracy rose during the last ``fraction`` of the epochs:
    ``max(curve[n-k:]) - max(curve[:n-k])``, ``k = max(1, round(fraction * n))`` (0 for a curve of one epoch)."""
    k = max(1, round(fraction * len(curve)))
    return max(curve[-k:]) - max(curve[:-k]) if len(curve) > k else 0.0


def baseline_rows(runs: list[dict]) -> list[dict]:
    """One row per distinct trained baseline among the runs (network, data, seed and validation curve), for the
    runs that recorded the curve (``baseline_val_acc``): epochs, last and best validation accuracy,
    :func:`plateau_gain`, test accuracy and how many runs started from it."""
    baselines: dict[tuple, dict] = {}
    for run in runs:
        curve = run.get("baseline_val_acc")
        if not curve:
            continue
        key = (run.get("network", "?"), run.get("datamodule", "?"), run.get("seed"), tuple(curve))
        row = baselines.setdefault(key, {"network": str(key[0]).rsplit(".", 1)[-1], "datamodule": key[1],
                                         "seed": key[2], "curve": list(curve), "acc_test": run["acc_baseline"],
                                         "runs": 0})
        row["runs"] += 1
    return sorted(baselines.values(), key=lambda r: (r["network"], r["datamodule"], str(r["seed"])))
