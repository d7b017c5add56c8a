"""The report's figures: accuracy against the share of parameters or FLOPs kept (lines, or bars at one budget),
paired differences to a reference metric, the pairwise heat map, and the baselines' training curves."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from infoprune.io import save_figure  # noqa: E402
from infoprune.report.runs import by_suffix, label  # noqa: E402
from infoprune.report.stat_tests import ORDER_P  # noqa: E402

RESOURCES = {"params": "parameters", "flops": "FLOPs"}  # what the plot's x axis can count


EQUAL_BUDGET = 0.01  # rows keeping shares of a resource closer than this are one budget: drawn as bars


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
