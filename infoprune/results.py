"""The tables printed at the end of a pruning job: channels per layer, and accuracy and size at the baseline, right
after pruning and after fine-tuning."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from infoprune.pruning.summary import PruningSummary


def print_results(results: dict[str, Any]) -> None:
    """The per-layer table and the accuracy/size table of a finished run."""
    connection = str(results["scope"]).startswith("connection")
    summary = PruningSummary(results["channels_before"], results["channels_after"], int(results["params_before"]),
                             int(results["params_after"]), int(results["flops_before"]), int(results["flops_after"]),
                             results.get("groups", {}), unit="weights" if connection else "channels")
    console = Console()
    summary.print(console)
    table = Table(title=f"{results['metric']} / {results['scope']} / {results['schedule']} / target {results['target']}")
    for column in ("", "test accuracy", "params", "FLOPs"):
        table.add_column(column, justify="right")
    table.add_row("baseline", f"{results['acc_baseline']:.2%}", f"{int(results['params_before']):,}",
                  f"{int(results['flops_before']):,}")
    table.add_row(pruned_row_label(results), f"{results['acc_pruned']:.2%}", f"{int(results['params_after']):,}",
                  f"{int(results['flops_after']):,}")
    table.add_row("pruned + fine-tuned", f"{results['acc_finetuned']:.2%}",
                  f"{results['params_remaining']:.1%} left", f"{results['flops_reduction']:.2f}x fewer")
    console.print(table)


def pruned_row_label(results: dict[str, Any]) -> str:
    """What "right after pruning" includes: the short fine-tunes between steps, where the schedule has them."""
    between = int(results.get("step_finetune_epochs", 0) or 0)
    if not between:
        return "pruned, no fine-tune"
    per = "per-layer" if results["schedule"] == "layer_by_layer" else "per-step"
    return f"pruned, {per} fine-tunes only"
