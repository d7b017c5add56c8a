"""Aggregate one or more sweeps of ``prune.py`` runs into a markdown table (mean +/- std over seeds, one row per
metric, scope, schedule and target, best fine-tuned accuracy first) and a plot (test accuracy vs fraction of
parameters remaining, one line per metric; one panel after fine-tuning, one right after pruning; bars when there is a
single target). Written next to the first sweep, or to ``--out <prefix>`` (``<prefix>.md`` and ``<prefix>.png``).
``--reference <metric>`` adds each row's accuracy difference to that metric on the same seeds (paired); baselines
that recorded their validation curve get a plateau table and a plot of the curves. With one ``--by`` key (e.g.
``finetune.max_epochs``) the page also ranks the metrics at each of its values, with Kendall's tau between
consecutive rankings (does the order still change with a longer fine-tune?) and the pairs that change order, each
with its gap at the longer length, the std over seeds of the pair's paired difference and its paired t-test.
Rows over two or more seeds also get every two metrics of a setting compared seed by seed: a heat map of their mean
paired difference (``<prefix>_pairwise.png``, * where the paired t-test gives p < 0.05) and how many pairs it
separates against the number expected by chance.
``--by`` adds config keys (read from each job's ``config_resolved.yaml``) to the grouping, e.g. for a calibration
sweep over ``pruning.stats.bins``.

    python -m infoprune.pruning.report logs/prune/multiruns/<date> [more sweep dirs] [--out docs/results/my_table]
        [--by pruning.stats.bins pruning.stats.num_images] [--metrics mi wmi] [--reference l1_in]
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf
from scipy import stats

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infoprune.io import atomic_write_text, save_figure  # noqa: E402
from infoprune.search import search_section  # noqa: E402

GROUP = ("metric", "scope", "schedule", "target")
COLUMNS = ("acc_baseline", "acc_pruned", "acc_finetuned", "params_remaining", "flops_remaining")
OPTIONAL = ("storage_reduction", "wall_s")
#: a baseline whose best validation accuracy rose less than this over its last 20% of epochs is on its plateau
PLATEAU_GAIN = 0.005
RESOURCES = {"params": "parameters", "flops": "FLOPs"}  # what the plot's x axis can count
EQUAL_BUDGET = 0.01  # rows keeping shares of a resource closer than this are one budget: drawn as bars
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


def mean_pm_std(row: dict, values: tuple[float, float]) -> str:
    """``mean ± std`` in percent, or the mean alone when the row has a single seed (no spread over seeds)."""
    mean, std = values
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(row["seeds"]) > 1 else f"{100 * mean:.2f}"


def seeds_cell(row: dict) -> str:
    """Distinct seeds of the row, with the number of runs when a seed was run more than once."""
    n = len(row["seeds"])
    return f"{n}" if row["runs"] == n else f"{n} ({row['runs']} runs)"


def paired_cell(row: dict) -> str:
    """``mean ± std (n)`` in points of the row's paired difference to the reference metric; ``-`` without pairs."""
    if "vs_reference" not in row:
        return "-"
    mean, std, n = row["vs_reference"]
    return f"{100 * mean:+.2f} ± {100 * std:.2f} ({n})" if n > 1 else f"{100 * mean:+.2f} (1)"


def markdown_table(rows: list[dict], reference: str | None = None) -> str:
    storage = any("storage_reduction" in r for r in rows)
    timed = any("wall_s" in r for r in rows)
    by = rows[0]["by"] if rows else ()
    header = ("| metric | scope | schedule | target | " + "".join(f"{k} | " for k in by)
              + "seeds | baseline | pruned (no fine-tune) | fine-tuned | drop (points) |"
              + (f" vs {reference}, paired (points) |" if reference else "") + " params left | FLOPs left |"
              + (" storage smaller by |" if storage else "") + (" minutes per job |" if timed else ""))
    lines = [header, "|" + "---|" * (11 + len(by) + bool(reference) + storage + timed)]
    for r in rows:
        acc = [mean_pm_std(r, r[c]) for c in ("acc_baseline", "acc_pruned", "acc_finetuned")]
        acc[2] = acc[2] if r["finetuned"] else "-"
        line = (f"| {r['metric']} | {r['scope']} | {r['schedule']} | {r['target']} | "
                + "".join(f"{r[k]} | " for k in by) + f"{seeds_cell(r)} | "
                f"{' | '.join(acc)} | {mean_pm_std(r, r['drop'])} | "
                + (f"{paired_cell(r)} | " if reference else "")
                + f"{100 * r['params_remaining'][0]:.1f}% | {100 * r['flops_remaining'][0]:.1f}% |")
        if storage:
            line += f" {r['storage_reduction'][0]:.2f}x |" if "storage_reduction" in r else " - |"
        if timed:
            line += f" {r['wall_s'][0] / 60:.1f} |" if "wall_s" in r else " - |"
        lines.append(line)
    return "\n".join(lines) + "\n" + ranking_table(rows) + kept_table(rows) + phase_table(rows)


def ranking_table(rows: list[dict]) -> str:
    """With one ``--by`` key (a fine-tuning length, say): every metric's rank by mean final accuracy at each of its
    values (1 = best), per scope, schedule and target, and Kendall's tau between the rankings at consecutive values
    over the metrics ranked at both (1: the same order; scipy's tau-b, ties allowed), then the pairs whose order
    changes (:func:`order_changes_table`)."""
    if not rows or len(rows[0]["by"]) != 1:
        return ""
    key = rows[0]["by"][0]
    settings: dict[tuple, dict[object, dict[str, tuple]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        mean = (r["acc_finetuned"] if r["finetuned"] else r["acc_pruned"])[0]
        settings[(r["scope"], r["schedule"], r["target"])][r[key]][r["metric"]] = (mean, r["per_seed"])
    lines = []
    for (scope, schedule, target), by_value in settings.items():
        values = sorted(by_value, key=lambda v: (isinstance(v, str), v))
        if len(values) < 2 or len({m for v in values for m in by_value[v]}) < 2:
            continue  # one value or one metric: nothing to rank
        means = {v: {m: a[0] for m, a in by_value[v].items()} for v in values}
        ranks = {v: {m: 1 + sorted(means[v].values(), reverse=True).index(a) for m, a in means[v].items()}
                 for v in values}
        metrics = sorted(ranks[values[-1]], key=ranks[values[-1]].get)
        metrics += sorted({m for v in values for m in ranks[v]} - set(metrics))
        lines += ["", f"Rank by accuracy at each {key} ({scope}, {schedule}, target {target}; 1 = best):", "",
                  "| metric | " + " | ".join(f"{v}" for v in values) + " |", "|" + "---|" * (1 + len(values))]
        lines += [f"| {m} | " + " | ".join(str(ranks[v].get(m, "-")) for v in values) + " |" for m in metrics]
        for a, b in zip(values, values[1:]):
            shared = sorted(set(ranks[a]) & set(ranks[b]))
            tau = stats.kendalltau([ranks[a][m] for m in shared], [ranks[b][m] for m in shared]).statistic
            lines.append(f"\nKendall's tau between the rankings at {key} {a} and {b}: {tau:.2f} "
                         f"({len(shared)} metrics)")
            lines += order_changes_table(ranks[a], by_value[b], f"{key} {a}", f"{key} {b}")
    return "\n".join(lines) + "\n" if lines else ""


#: a pair whose paired t-test over the seeds gives a p-value under this is ordered by more than the seeds' noise
ORDER_P = 0.05


def order_changes(ranks_before: dict[str, int], after: dict[str, tuple]) -> list[tuple]:
    """The pairs of metrics ranked in a different order before than ``after`` (metric -> mean accuracy, then
    optionally seed -> accuracy): ``(ahead, behind, gap, paired_std, p)`` with ``ahead`` the better one after,
    ``gap`` its lead in mean accuracy there, and over the seeds both ran (the same baseline per seed, so the
    baselines' own spread cancels) the sample std of ``d = ahead - behind`` and the two-sided p-value of the
    one-sample t-test of ``d`` against 0 (``t = mean(d) / (std(d) / sqrt(n))``, n - 1 degrees of freedom); both
    None with fewer than two such seeds. Largest gap first; ties on either side are no change."""
    shared = sorted(set(ranks_before) & set(after))
    changes = []
    for i, m in enumerate(shared):
        for n in shared[i + 1:]:
            before = ranks_before[m] - ranks_before[n]
            gap = after[m][0] - after[n][0]
            if before * gap > 0:  # m behind n before (larger rank) and ahead after, or the reverse
                ahead, behind = (m, n) if gap > 0 else (n, m)
                changes.append((ahead, behind, abs(gap), *paired_test(after[ahead], after[behind])))
    return sorted(changes, key=lambda c: -c[2])


def paired_test(first: tuple, second: tuple) -> tuple[float | None, float | None]:
    """Sample std of ``first - second`` over the seeds both ran (seed -> accuracy as the second item of each) and
    the two-sided p-value of its one-sample t-test against 0 (0 or 1 when every seed gives the same difference);
    None, None with fewer than two shared seeds or without per-seed accuracies."""
    if len(first) < 2 or len(second) < 2:
        return None, None
    return difference_test(seed_differences(first[1], second[1]))


def difference_test(differences: list[float]) -> tuple[float | None, float | None]:
    """Sample std of paired ``differences`` and the two-sided p-value of their one-sample t-test against 0 (0 or 1
    when all are equal); None, None with fewer than two."""
    if len(differences) < 2:
        return None, None
    std = statistics.stdev(differences)
    if std == 0:
        return 0.0, float(differences[0] == 0)
    return std, float(stats.ttest_1samp(differences, 0).pvalue)


def seed_differences(first: dict, second: dict) -> list[float]:
    """``first[s] - second[s]`` over the seeds ``s`` both map (seed -> accuracy), in seed order."""
    return [first[s] - second[s] for s in sorted(set(first) & set(second), key=str)]


def setting_name(row: dict) -> str:
    """``scope, schedule, target t[, key=value ...]``: everything that groups a row but its metric."""
    return f"{row['scope']}, {row['schedule']}, target {row['target']}{by_suffix(row)}"


def pairwise_tests(rows: list[dict]) -> dict[str, list[tuple]]:
    """Per setting (:func:`setting_name`), every pair of its metrics that shares two or more seeds as ``(first,
    second, mean_d, std_d, p)``: ``d = first - second``, seed by seed, of the final accuracy
    (:func:`difference_test` for its std and two-sided t-test p). Metrics in order of mean accuracy, best first;
    settings without a pair are left out."""
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_setting[setting_name(r)].append(r)
    tests = {}
    for name, members in by_setting.items():
        members = sorted(members, key=lambda r: -r["acc_finetuned"][0])
        pairs = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                differences = seed_differences(a["per_seed"], b["per_seed"])
                if len(differences) >= 2:
                    pairs.append((a["metric"], b["metric"], statistics.fmean(differences),
                                  *difference_test(differences)))
        if pairs:
            tests[name] = pairs
    return tests


def pairwise_summary(tests: dict[str, list[tuple]]) -> str:
    """One line per setting: how many of its pairs the paired t-test separates at p < :data:`ORDER_P`, against
    the number expected by chance were no metric different from another."""
    lines = [f"\nPairs of metrics whose paired t-test over the seeds gives p < {ORDER_P} (the pairwise plot marks "
             "them with *):", ""]
    lines += [f"- {name}: {sum(p < ORDER_P for *_, p in pairs)} of {len(pairs)} "
              f"({ORDER_P * len(pairs):.1f} expected by chance if no metric differed)" for name, pairs in tests.items()]
    return "\n".join(lines) + "\n"


def pairwise_plot(tests: dict[str, list[tuple]], path: Path) -> Path:
    """One heat map per setting: cell (row, column) is the mean over seeds of the row metric's accuracy minus the
    column metric's on the same seed, in points, with * where the paired t-test gives p < :data:`ORDER_P`; metrics
    best first, so a row's cells right of the diagonal are its leads over worse-ranked metrics."""
    fig, axes = plt.subplots(1, len(tests), squeeze=False, layout="constrained",
                             figsize=(1.5 + 5.5 * len(tests), 5.5))
    for ax, (name, pairs) in zip(axes[0], tests.items(), strict=True):
        names = list(dict.fromkeys(m for pair in pairs for m in pair[:2]))
        grid = [[float("nan")] * len(names) for _ in names]
        for first, second, mean, _, p in pairs:
            i, j = names.index(first), names.index(second)
            grid[i][j], grid[j][i] = 100 * mean, -100 * mean
            mark = "*" if p < ORDER_P else ""
            for r, c, v in ((i, j, mean), (j, i, -mean)):
                ax.text(c, r, f"{abs(100 * v):.1f}{mark}" if round(100 * v, 1) == 0 else f"{100 * v:.1f}{mark}",
                        ha="center", va="center", fontsize=6)
        limit = max(abs(100 * p[2]) for p in pairs) or 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8,
                 label="row minus column, same seed (points), mean over seeds")
    save_figure(fig, path)
    plt.close(fig)
    return path


def points_cell(value: float | None) -> str:
    """A fraction in points with two decimals; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.2f}"


def order_changes_table(ranks_before: dict[str, int], after: dict[str, tuple],
                        before_name: str, after_name: str) -> list[str]:
    """Markdown lines listing :func:`order_changes` (gap and paired std in points): a pair whose paired t-test
    gives p < :data:`ORDER_P` at ``after_name`` is ordered there by more than the seeds' noise, so its swap is an
    order that still moves; the others are swaps between metrics the seeds do not separate."""
    changes = order_changes(ranks_before, after)
    if not changes:
        return [f"\nEvery pair of metrics keeps its order from {before_name} to {after_name}."]
    tested = [c for c in changes if c[4] is not None]
    if tested:
        counted = (f", of which {sum(c[4] < ORDER_P for c in tested)} with p < {ORDER_P} at {after_name} (paired "
                   f"t-test over the seeds; {ORDER_P * len(tested):.1f} expected by chance if none differed)")
    else:
        counted = " (one seed: no spread to compare the gaps with)"
    lines = [f"\nPairs in a different order at {before_name} and {after_name}: {len(changes)}{counted}:", "",
             f"| ahead at {after_name} | behind | gap (points) | paired std (points) | p, paired t-test |",
             "|---|---|---|---|---|"]
    return lines + [f"| {a} | {b} | {100 * gap:.2f} | {points_cell(std)} | {'-' if p is None else f'{p:.3f}'} |"
                    for a, b, gap, std, p in changes]


def kept_table(rows: list[dict]) -> str:
    """Fraction of every layer kept (channels, or connections for connection pruning), mean over the row's runs;
    rows whose runs name other layers are left out."""
    rows = [r for r in rows if "kept" in r]
    if not rows:
        return ""
    layers = list(rows[0]["kept"])
    rows = [r for r in rows if list(r["kept"]) == layers]
    by = rows[0]["by"]
    unit = "connections" if str(rows[0]["scope"]).startswith("connection") else "channels"
    lines = ["", f"Fraction of each layer's {unit} kept (mean over runs):", "",
             "| metric | scope | target | " + "".join(f"{k} | " for k in by) + " | ".join(layers) + " |",
             "|" + "---|" * (3 + len(by) + len(layers))]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['scope']} | {r['target']} | " + "".join(f"{r[k]} | " for k in by)
                     + " | ".join(f"{r['kept'][layer]:.2f}" for layer in layers) + " |")
    return "\n".join(lines) + "\n"


def phase_table(rows: list[dict]) -> str:
    """Where each row's wall time went: mean seconds per job in every phase group (rows that recorded phases)."""
    timed = [r for r in rows if "phases" in r]
    if not timed:
        return ""
    columns = [c for c in (*PHASE_GROUPS, "other") if any(r["phases"][c] > 0 for r in timed)]
    by = timed[0]["by"]
    lines = ["", "Wall time per job by phase (seconds, mean over runs):", "",
             "| metric | scope | schedule | target | " + "".join(f"{k} | " for k in by) + " | ".join(columns)
             + " | total |", "|" + "---|" * (5 + len(by) + len(columns))]
    for r in timed:
        lines.append(f"| {r['metric']} | {r['scope']} | {r['schedule']} | {r['target']} | "
                     + "".join(f"{r[k]} | " for k in by) + " | ".join(f"{r['phases'][c]:.1f}" for c in columns)
                     + f" | {sum(r['phases'].values()):.1f} |")
    return "\n".join(lines) + "\n"


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


def baseline_table(rows: list[dict]) -> str:
    """The baselines the runs started from, and whether their training reached its plateau."""
    lines = ["", "Baselines (validation accuracy in %; gain: best over the last 20% of epochs minus best before; "
             f"on its plateau: a gain under {100 * PLATEAU_GAIN:.1f} points):",
             "", "| network | data | seed | epochs | val, last epoch | val, best | gain over the last 20% (points) "
             "| on its plateau | test | runs |", "|" + "---|" * 10]
    for r in rows:
        curve = r["curve"]
        gain = plateau_gain(curve)
        lines.append(f"| {r['network']} | {r['datamodule']} | {r['seed']} | {len(curve)} | {100 * curve[-1]:.2f} | "
                     f"{100 * max(curve):.2f} | {100 * gain:.2f} | {'yes' if gain < PLATEAU_GAIN else 'no'} | "
                     f"{100 * r['acc_test']:.2f} | {r['runs']} |")
    return "\n".join(lines) + "\n"


def curve_plot(rows: list[dict], path: Path) -> Path:
    """Validation accuracy per epoch of every baseline, the last 20% of epochs shaded."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(rows):
        ax.plot(range(1, len(r["curve"]) + 1), [100 * v for v in r["curve"]], "-o", markersize=3, color=f"C{i % 10}",
                label=f"{r['network']}, {r['datamodule']}, seed {r['seed']}")
    longest = max(len(r["curve"]) for r in rows)
    ax.axvspan(longest - max(1, round(0.2 * longest)) + 0.5, longest + 0.5, color="0.9", label="last 20% of epochs")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def paired_plot(rows: list[dict], reference: str, path: Path) -> Path:
    """Every row's paired difference to ``reference`` (mean ± std over seeds, in points), one horizontal bar per
    row, grouped by target (and ``--by`` values): which criteria differ from the reference by more than their seed
    spread."""
    rows = [r for r in rows if "vs_reference" in r and r["metric"] != reference]
    rows = sorted(rows, key=lambda r: (r["target"], *(str(r[k]) for k in r["by"]), r["vs_reference"][0]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(rows)))
    y = list(range(len(rows)))
    ax.errorbar([100 * r["vs_reference"][0] for r in rows], y, xerr=[100 * r["vs_reference"][1] for r in rows],
                fmt="o", capsize=3, color="C0")
    ax.axvline(0, color="k", linestyle=":")
    ax.set_yticks(y, [f"{r['metric']} (target {r['target']}{by_suffix(r)})" for r in rows],
                  fontsize=8)
    ax.set_xlabel(f"accuracy minus {reference}'s on the same seed (points), mean ± std over seeds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def bar_plot(rows: list[dict], path: Path, resource: str = "params") -> Path:
    """One budget, a row per criterion, best at the top: the accuracy right after pruning as bars on the full 0-100%
    scale and, beside it when rows were fine-tuned, the accuracy after fine-tuning as points (mean ± std over seeds)
    on a scale spanning only those points and the baseline, where differences of a fraction of a point show. The
    title gives the share of ``resource`` kept."""
    rows = sorted(rows, key=lambda r: (r["acc_finetuned"][0], r["acc_pruned"][0]))
    tuned = [j for j, r in enumerate(rows) if r["finetuned"]]
    fig, axes = plt.subplots(1, 2 if tuned else 1, sharey=True, squeeze=False, layout="constrained",
                             figsize=(11 if tuned else 8, 1.6 + 0.3 * len(rows)))
    y = list(range(len(rows)))
    baseline = 100 * rows[0]["acc_baseline"][0]
    pruned = axes[0][0]
    pruned.barh(y, [100 * r["acc_pruned"][0] for r in rows], 0.6, xerr=[100 * r["acc_pruned"][1] for r in rows],
                capsize=3, color="C0")
    pruned.set_xlim(0, 100)
    pruned.set_xlabel("right after pruning: test accuracy (%)")
    pruned.set_yticks(y, [label(r) for r in rows], fontsize=8)
    if tuned:
        finetuned = axes[0][1]
        means = [100 * rows[j]["acc_finetuned"][0] for j in tuned]
        stds = [100 * rows[j]["acc_finetuned"][1] for j in tuned]
        finetuned.errorbar(means, tuned, xerr=stds, fmt="o", capsize=3, color="C1")
        low = min(m - s for m, s in zip(means, stds))
        high = max(baseline, *(m + s for m, s in zip(means, stds)))
        margin = 0.05 * (high - low) + 0.1
        finetuned.set_xlim(low - margin, high + margin)
        finetuned.set_xlabel("after fine-tuning: test accuracy (%), axis zoomed to the points")
    for ax in axes[0]:
        ax.axvline(baseline, color="k", linestyle=":", label="baseline" if ax is pruned else None)
        ax.grid(axis="x", alpha=0.3)
    kept = sorted({f"{100 * r[f'{resource}_remaining'][0]:.1f}" for r in rows}, key=float)
    targets = sorted({str(r["target"]) for r in rows})
    span = kept[0] if len(kept) == 1 else f"{kept[0]}-{kept[-1]}"
    fig.suptitle(f"target {', '.join(targets)}: {span}% of the {RESOURCES[resource]} remain; mean ± std over seeds",
                 fontsize=9)
    fig.legend(fontsize=7, loc="outside lower center")
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot(rows: list[dict], path: Path, resource: str = "params") -> Path:
    """Accuracy vs the share of ``resource`` (``params`` or ``flops``) remaining, one line per criterion; bars when
    the sweep has a single target or every row keeps the same share (within ``EQUAL_BUDGET``)."""
    kept = [r[f"{resource}_remaining"][0] for r in rows]
    if len({r["target"] for r in rows}) == 1 or max(kept) - min(kept) < EQUAL_BUDGET:
        return bar_plot(rows, path, resource)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_metric[label(r)].append(r)
    for ax, column, title in zip(axes, ("acc_finetuned", "acc_pruned"), ("after fine-tuning", "right after pruning"),
                                 strict=True):
        for i, (name, members) in enumerate(sorted(by_metric.items())):
            members = sorted((r for r in members if column == "acc_pruned" or r["finetuned"]),
                             key=lambda r: r[f"{resource}_remaining"][0])
            ax.errorbar([100 * r[f"{resource}_remaining"][0] for r in members], [100 * r[column][0] for r in members],
                        yerr=[100 * r[column][1] for r in members], fmt="-o", color=f"C{i % 10}", capsize=3,
                        label=name)
        ax.axhline(100 * rows[0]["acc_baseline"][0], color="k", linestyle=":", label="baseline")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{RESOURCES[resource]} remaining (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(*sweep_dirs: str | Path, out: str | Path | None = None, by: tuple[str, ...] = (),
                 metrics: tuple[str, ...] = (), question: str | None = None, discussion: str | None = None,
                 command: str | None = None, reference: str | None = None, x: str = "params") -> tuple[Path, Path]:
    """Write ``<out>.md`` and ``<out>.png`` (default ``<first sweep>/report``) over the runs of ``metrics`` (default
    all); returns their paths. The page leads with ``question`` (default: which sweep it is), says that the table
    and plot answer it, where it is ``discussion``-ed, and the ``command`` that wrote it. With a ``reference``
    metric the table has each row's paired difference to it. The plot's x axis is the share of ``x`` (``params``
    or ``flops``) remaining. Baselines that recorded their training curve get a
    table and ``<out>_baselines.png``."""
    if x not in RESOURCES:
        raise ValueError(f"x must be one of {sorted(RESOURCES)}, not {x!r}")
    prefix = Path(out) if out is not None else Path(sweep_dirs[0]) / "report"
    runs = load_runs(*sweep_dirs, by=tuple(by))
    present = sorted({r["metric"] for r in runs})
    unknown = sorted(set(metrics) - set(present))
    if unknown:
        raise ValueError(f"no runs of metric(s) {unknown} under {[str(d) for d in sweep_dirs]}; the metrics there "
                         f"are {present}")
    if reference and reference not in present:
        raise ValueError(f"no runs of the reference metric {reference!r}; the metrics there are {present}")
    runs = [r for r in runs if not metrics or r["metric"] in metrics or r["metric"] == reference]
    rows = [r for r in aggregate(runs, by=tuple(by), reference=reference) if not metrics or r["metric"] in metrics]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table, figure = prefix.with_suffix(".md"), prefix.with_suffix(".png")
    sources = ", ".join(str(d) for d in sweep_dirs)
    lead = f"# {question}\n\nThe table and plot below answer it" if question else f"# Pruning sweep: {sources}\n\n"
    if question:
        lead += f" (discussion: {discussion})." if discussion else "."
        lead += f" Written by `{command}`.\n\n" if command else f" Runs: {sources}.\n\n"
    paired = (f" `vs {reference}, paired`: the row's accuracy minus {reference}'s on the same seed and baseline, "
              "mean ± std over the seeds both ran (their number in brackets).") if reference else ""
    text = (lead + f"Test accuracy in %, mean ± std over seeds.{paired}\n\n" + markdown_table(rows, reference)
            + f"\n![accuracy vs {RESOURCES[x]}]({figure.name})\n")
    if reference and any("vs_reference" in r and r["metric"] != reference for r in rows):
        paired_figure = paired_plot(rows, reference, prefix.with_name(f"{prefix.name}_paired.png"))
        text += f"\n![paired differences to {reference}]({paired_figure.name})\n"
    tests = pairwise_tests(rows)
    if tests:
        pairwise_figure = pairwise_plot(tests, prefix.with_name(f"{prefix.name}_pairwise.png"))
        text += pairwise_summary(tests) + f"\n![paired differences between every two metrics]({pairwise_figure.name})\n"
    for i, sweep_dir in enumerate(sweep_dirs):
        section = search_section(sweep_dir, prefix.with_name(f"{prefix.name}_search{i or ''}.png"))
        text += f"\n{section}" if section else ""
    baselines = baseline_rows(runs)
    if baselines:
        curves = curve_plot(baselines, prefix.with_name(f"{prefix.name}_baselines.png"))
        text += baseline_table(baselines) + f"\n![baseline training curves]({curves.name})\n"
    atomic_write_text(table, text)
    return table, plot(rows, figure, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", nargs="+", help="prune.py multirun (or run) directories")
    parser.add_argument("--out", help="path prefix of the report files (default: <first sweep dir>/report)")
    parser.add_argument("--by", nargs="+", default=[], help="config keys to group by as well (dotted paths)")
    parser.add_argument("--metrics", nargs="+", default=[], help="only these metrics (names as in results.json)")
    parser.add_argument("--question", help="what the page answers (its title)")
    parser.add_argument("--discussion", help="where the answer is discussed (a Markdown link)")
    parser.add_argument("--reference", help="a metric every row is compared with, seed by seed (paired)")
    parser.add_argument("--x", choices=sorted(RESOURCES), default="params",
                        help="the plot's x axis: share of parameters (default) or FLOPs remaining")
    args = parser.parse_args()
    command = "python -m infoprune.pruning.report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        table, figure = write_report(*args.sweep_dirs, out=args.out, by=tuple(args.by), metrics=tuple(args.metrics),
                                     question=args.question, discussion=args.discussion, command=command,
                                     reference=args.reference, x=args.x)
    except (ValueError, KeyError, FileNotFoundError) as error:
        parser.error(str(error))
    print(table.read_text())
    print(f"written: {table} and {figure}")


if __name__ == "__main__":
    main()
