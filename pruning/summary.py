"""What pruning removed: channels per layer, parameters and FLOPs before and after, as rows, a rich table and
flat metrics for loggers."""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class PruningSummary:
    """Widths of every prunable channel group and the network's parameters and FLOPs, before and after."""

    channels_before: dict[str, int]
    channels_after: dict[str, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    #: channel groups of several layers: group name -> its members (one row each in the table, named by the group)
    groups: dict[str, list[str]] = field(default_factory=dict)
    #: what the per-layer counts are: ``channels`` (channel pruning) or ``weights`` (connection pruning)
    unit: str = "channels"

    def metrics(self, prefix: str = "pruning/") -> dict[str, float]:
        """Flat metrics: totals, remaining fractions, speed-up by FLOPs, and channels kept per layer."""
        out = {"params_before": self.params_before, "params_after": self.params_after,
               "params_remaining": self.params_after / self.params_before,
               "flops_before": self.flops_before, "flops_after": self.flops_after,
               "flops_remaining": self.flops_after / self.flops_before,
               "flops_reduction": self.flops_before / max(self.flops_after, 1)}
        out.update({f"channels/{name}": kept for name, kept in self.channels_after.items()})
        return {f"{prefix}{key}": float(value) for key, value in out.items()}

    def table(self) -> Table:
        title = "Channel pruning" if self.unit == "channels" else "Connection pruning"
        table = Table(title=title, show_footer=True)
        table.add_column("layer", footer="network")
        table.add_column(f"{self.unit} before", justify="right")
        table.add_column("after", justify="right")
        table.add_column("kept", justify="right")
        for name, before in self.channels_before.items():
            after = self.channels_after[name]
            members = self.groups.get(name, [name])
            label = name if len(members) == 1 else f"{name} (+{len(members) - 1} tied)"
            table.add_row(label, str(before), str(after), f"{after / before:.1%}")
        table.columns[1].footer = f"{self.params_before:,} params / {self.flops_before / 1e6:,.1f} MFLOPs"
        table.columns[2].footer = f"{self.params_after:,} params / {self.flops_after / 1e6:,.1f} MFLOPs"
        table.columns[3].footer = (f"{self.params_after / self.params_before:.1%} params / "
                                   f"{self.flops_after / self.flops_before:.1%} FLOPs")
        return table

    def print(self, console: Console | None = None) -> None:
        (console or Console()).print(self.table())
