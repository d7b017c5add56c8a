"""One report page: the tables, tests and figures of one or more sweeps written as ``<prefix>.md`` and its PNGs."""
from __future__ import annotations

from pathlib import Path

from infoprune.io import atomic_write_text
from infoprune.report.plots import RESOURCES, curve_plot, paired_plot, pairwise_plot, plot
from infoprune.report.runs import aggregate, baseline_rows, load_runs
from infoprune.report.stat_tests import pairwise_tests
from infoprune.report.tables import baseline_table, markdown_table, pairwise_summary
from infoprune.search import search_section


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
