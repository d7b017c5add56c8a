"""What a hyperparameter search over prune.py jobs maximises (Hydra sweepers such as Optuna's read the value
``prune.py`` returns): a results.json figure, subject to upper bounds on others (a FLOPs or latency budget); and the
section of a sweep's report that lists a search's trials and its best one."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
from omegaconf import OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infoprune.io import save_figure  # noqa: E402

#: results.json figures a search may maximise: the validation accuracy of the final network (the test set stays
#: out of the choice), or its test accuracy where the search itself is the object of study
OBJECTIVES = ("val_acc_finetuned", "acc_finetuned")
#: results.json figures a search may bound from above
CONSTRAINTS = ("params_remaining", "flops_remaining", "latency_remaining")


def search_objective(results: Mapping[str, Any], objective: str, constraints: Mapping[str, float]) -> float:
    """The value a search maximises for one finished job.

    ``results[objective]`` when every constraint ``results[key] <= bound`` holds; otherwise
    ``-max_k (results[k] - bound_k) / bound_k``, minus the largest relative excess. Accuracies are never negative,
    so every job within the budget ranks above every job outside it, and among the latter the nearer ones rank
    higher (a penalty that still tells the sampler which way the budget lies)."""
    missing = [key for key in (objective, *constraints) if key not in results]
    if missing:
        raise KeyError(f"results.json has no {missing}; it holds {sorted(results)}")
    excess = max(((float(results[key]) - float(bound)) / float(bound) for key, bound in constraints.items()),
                 default=0.0)
    return -excess if excess > 0 else float(results[objective])


def returned_value(results: Mapping[str, Any], objective: str, constraints: Mapping[str, float]) -> float | None:
    """What ``prune.py`` returns to Hydra's sweeper: :func:`search_objective`, or None for a job whose record was
    written before ``objective`` was recorded (a finished job read back by a rerun; Hydra's basic sweeper ignores the
    value, and a search fails on it)."""
    return search_objective(results, objective, constraints) if objective in results else None


def search_trials(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The trials of a search (a multirun directory holding the sweeper's ``optimization_results.yaml``): for each
    finished job, its number, the overrides the sampler chose, its results and the value it returned
    (:func:`search_objective` under the job's own ``search`` settings), in job order."""
    trials = []
    for results_file in Path(sweep_dir).glob("*/results.json"):
        if not results_file.parent.name.isdigit():
            continue
        config = OmegaConf.load(results_file.with_name("config_resolved.yaml"))
        overrides = OmegaConf.load(results_file.with_name("overrides.yaml"))
        results = json.loads(results_file.read_text())
        constraints = OmegaConf.to_container(config.search.constraints or {})
        trials.append({"trial": int(results_file.parent.name), "overrides": list(overrides), "results": results,
                       "constraints": constraints,
                       "value": search_objective(results, config.search.objective, constraints)})
    return sorted(trials, key=lambda trial: trial["trial"])


def search_section(sweep_dir: str | Path, figure: Path) -> str | None:
    """A markdown section on a search: the sweeper's best trial, every trial's choice, figures and returned value,
    and a plot of the values with the best so far (written to ``figure``); None when ``sweep_dir`` holds no
    search."""
    summary_file = Path(sweep_dir) / "optimization_results.yaml"
    if not summary_file.exists():
        return None
    summary = OmegaConf.to_container(OmegaConf.load(summary_file))
    trials = search_trials(sweep_dir)
    if not trials:
        raise FileNotFoundError(f"{sweep_dir} has a search summary but no finished trial (*/results.json)")
    best = max(trials, key=lambda trial: trial["value"])
    bounds = ", ".join(f"{key} <= {bound}" for key, bound in trials[0]["constraints"].items()) or "none"
    lines = [f"## Search: best trial {best['trial']}", "",
             f"The sweeper's best value {summary['best_value']:.4f} with {summary['best_params']}; constraints: "
             f"{bounds}. A trial over a bound returns minus its largest relative excess.", "",
             "| trial | choice | val acc | test acc | params kept | FLOPs kept | value |",
             "|---|---|---|---|---|---|---|"]
    for trial in trials:
        results, mark = trial["results"], " **best**" if trial is best else ""
        choice = " ".join(o for o in trial["overrides"] if o.split("=", 1)[0] in summary["best_params"])
        lines.append(f"| {trial['trial']}{mark} | {choice} | "
                     f"{results['val_acc_finetuned']:.2%} | {results['acc_finetuned']:.2%} | "
                     f"{results['params_remaining']:.1%} | {results['flops_remaining']:.1%} | {trial['value']:.4f} |")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    numbers, values = [t["trial"] for t in trials], [t["value"] for t in trials]
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, [max(values[:i + 1]) for i in range(len(values))], where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("returned value")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, figure)
    plt.close(fig)
    return "\n".join(lines) + f"\n\n![search progress]({figure.name})\n"
