"""Aggregate a sweep of ``prune.py`` runs into a markdown table (mean +/- std over seeds, one row per metric, scope,
schedule and target) and a plot (test accuracy vs fraction of parameters remaining, one line per metric; one panel
after fine-tuning, one right after pruning; bars when the sweep has a single target), written next to the sweep.

    python -m pruning.report logs/prune/multiruns/<date>
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP = ("metric", "scope", "schedule", "target")
COLUMNS = ("acc_baseline", "acc_pruned", "acc_finetuned", "params_remaining", "flops_remaining")


def load_runs(sweep_dir: str | Path) -> list[dict]:
    """Every ``results.json`` under ``sweep_dir``."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).rglob("results.json"))]
    if not runs:
        raise FileNotFoundError(f"no results.json under {sweep_dir}: is it a prune.py run or multirun directory?")
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (metric, scope, schedule, target): mean and std over seeds of every column, and the seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in GROUP)].append(run)
    rows = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
        row = dict(zip(GROUP, key), seeds=sorted(m.get("seed") for m in members))
        for column in COLUMNS:
            row[column] = mean_std([m[column] for m in members])
        if all("storage_reduction" in m for m in members):
            row["storage_reduction"] = mean_std([m["storage_reduction"] for m in members])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    storage = any("storage_reduction" in r for r in rows)
    header = ("| metric | scope | schedule | target | seeds | baseline | pruned (no fine-tune) | fine-tuned "
              "| params left | FLOPs left |" + (" storage smaller by |" if storage else ""))
    lines = [header, "|" + "---|" * (11 if storage else 10)]
    for r in rows:
        acc = [f"{100 * r[c][0]:.2f} ± {100 * r[c][1]:.2f}" for c in ("acc_baseline", "acc_pruned", "acc_finetuned")]
        line = (f"| {r['metric']} | {r['scope']} | {r['schedule']} | {r['target']} | {len(r['seeds'])} | "
                f"{' | '.join(acc)} | {100 * r['params_remaining'][0]:.1f}% | {100 * r['flops_remaining'][0]:.1f}% |")
        if storage:
            line += f" {r['storage_reduction'][0]:.2f}x |" if "storage_reduction" in r else " - |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def bar_plot(rows: list[dict], path: Path) -> Path:
    """One target: bars per criterion (right after pruning, and after fine-tuning when there was one)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = sorted(rows, key=lambda r: -r["acc_finetuned"][0])
    labels = [f"{r['metric']}\n({r['scope']}, {r['schedule']})" for r in rows]
    tuned = any(r["acc_finetuned"] != r["acc_pruned"] for r in rows)
    columns = [("acc_pruned", "right after pruning")] + ([("acc_finetuned", "after fine-tuning")] if tuned else [])
    width = 0.8 / len(columns)
    for i, (column, label) in enumerate(columns):
        x = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(x, [100 * r[column][0] for r in rows], width, yerr=[100 * r[column][1] for r in rows], capsize=3,
               label=label)
    ax.axhline(100 * rows[0]["acc_baseline"][0], color="k", linestyle=":", label="baseline")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"target {rows[0]['target']}: {100 * rows[0]['params_remaining'][0]:.1f}% of parameters remain",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(rows: list[dict], path: Path) -> Path:
    """Accuracy vs parameters remaining, one line per criterion; bars when the sweep has a single target."""
    if len({r["target"] for r in rows}) == 1:
        return bar_plot(rows, path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    by_metric: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_metric[f"{r['metric']} ({r['scope']}, {r['schedule']})"].append(r)
    for ax, column, title in zip(axes, ("acc_finetuned", "acc_pruned"), ("after fine-tuning", "right after pruning"),
                                 strict=True):
        for i, (label, members) in enumerate(sorted(by_metric.items())):
            members.sort(key=lambda r: r["params_remaining"][0])
            ax.errorbar([100 * r["params_remaining"][0] for r in members], [100 * r[column][0] for r in members],
                        yerr=[100 * r[column][1] for r in members], fmt="-o", color=f"C{i % 10}", capsize=3,
                        label=label)
        ax.axhline(100 * rows[0]["acc_baseline"][0], color="k", linestyle=":", label="baseline")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("parameters remaining (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.png`` into ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir)
    rows = aggregate(load_runs(sweep_dir))
    table = sweep_dir / "report.md"
    table.write_text(f"# Pruning sweep: {sweep_dir}\n\nTest accuracy in %, mean ± std over seeds.\n\n"
                     + markdown_table(rows) + "\n![accuracy vs parameters](report.png)\n")
    return table, plot(rows, sweep_dir / "report.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a prune.py multirun (or run) directory")
    table, figure = write_report(parser.parse_args().sweep_dir)
    print(table.read_text())
    print(f"written: {table} and {figure}")


if __name__ == "__main__":
    main()
