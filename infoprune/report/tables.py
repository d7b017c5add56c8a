"""The report's Markdown tables: the main table (accuracy, drop, paired difference to a reference, size, time),
rankings along a ``--by`` key, the pairs the paired tests separate, the layers kept, wall time by phase and the
baselines' plateau."""
from __future__ import annotations

from collections import defaultdict

from scipy import stats

from infoprune.report.runs import PHASE_GROUPS, plateau_gain
from infoprune.report.stat_tests import ORDER_P, order_changes

#: a baseline whose best validation accuracy rose less than this over its last 20% of epochs is on its plateau
PLATEAU_GAIN = 0.005


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


def points_cell(value: float | None) -> str:
    """A fraction in points with two decimals; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.2f}"


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


def pairwise_summary(tests: dict[str, list[tuple]]) -> str:
    """One line per setting: how many of its pairs the paired t-test separates at p < :data:`ORDER_P`, against
    the number expected by chance were no metric different from another."""
    lines = [f"\nPairs of metrics whose paired t-test over the seeds gives p < {ORDER_P} (the pairwise plot marks "
             "them with *):", ""]
    lines += [f"- {name}: {sum(p < ORDER_P for *_, p in pairs)} of {len(pairs)} "
              f"({ORDER_P * len(pairs):.1f} expected by chance if no metric differed)" for name, pairs in tests.items()]
    return "\n".join(lines) + "\n"


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
