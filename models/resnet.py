"""ResNet for CIFAR (He et al. 2016, section 4.2): 3 stages of n basic blocks at 16, 32, 64 channels; ResNet-56 has
n = 9 (853,018 parameters with the parameter-free option-A shortcut)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from infoprune.models.blocks import scaled_widths

STAGE_WIDTHS = (16, 32, 64)


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` with its channels placed into ``out_channels`` zero-filled
    channels: input channel ``i`` goes to output channel ``slots[i]`` (``-1``: dropped). Unpruned, ``slots`` is
    ``0 .. in_channels - 1``, the zero-padding of He et al.; channel pruning on either side edits ``slots``
    (``PadShortcutPruner``), so the stage widths a shortcut joins can be pruned like any channel group."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.out_channels = stride, out_channels
        self.register_buffer("slots", torch.arange(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        kept = self.slots >= 0
        out = x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:]).contiguous(memory_format=_memory_format(x))
        return out.index_copy(1, self.slots[kept], x[:, kept])

    def mask_out_channels(self, removed: torch.Tensor) -> None:
        """Stop feeding output channels ``removed`` (a channel mask of the stage width, see ``pruning.masks``)."""
        self.slots[torch.isin(self.slots, removed.to(self.slots.device))] = -1

    #: how Torch-Pruning's dependency graph prunes this module (pruning/layers.py collects it)
    dependency_pruner: "PadShortcutPruner"


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class PadShortcutPruner(tp.pruner.function.BasePruningFunc):
    """Input and output channels of a ``PadShortcut`` are pruned independently: removing inputs drops their slots,
    removing outputs drops the inputs placed there and renumbers the remaining slots."""

    TARGET_MODULES = PadShortcut

    def prune_in_channels(self, layer: PadShortcut, idxs) -> PadShortcut:
        keep = torch.ones(len(layer.slots), dtype=torch.bool)
        keep[list(idxs)] = False
        layer.slots = layer.slots[keep]
        return layer

    def prune_out_channels(self, layer: PadShortcut, idxs) -> PadShortcut:
        removed = torch.as_tensor(sorted(idxs), dtype=torch.long)
        slots = layer.slots.clone()
        dropped = torch.isin(slots, removed)
        slots = slots - torch.searchsorted(removed, slots)  # removed channels below a slot shift it down
        slots[dropped | (layer.slots < 0)] = -1
        layer.slots, layer.out_channels = slots, layer.out_channels - len(removed)
        return layer

    def get_in_channels(self, layer: PadShortcut) -> int:
        return len(layer.slots)

    def get_out_channels(self, layer: PadShortcut) -> int:
        return layer.out_channels


PadShortcut.dependency_pruner = PadShortcutPruner()


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``mid`` is the prunable inner width."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2``. ``channels`` lists the inner width of every block (``3n`` entries). The
    three stage widths are channel groups too (tied by the additions); a slimmed network records them, like every
    group, in the classifier's ``structure``."""

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        stage = [max(1, round(c * width)) for c in STAGE_WIDTHS]
        self.widths = scaled_widths([c for c in STAGE_WIDTHS for _ in range(n)], width, channels)
        self.conv1 = nn.Conv2d(in_channels, stage[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage[0])
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        prev = stage[0]
        for s, out in enumerate(stage):
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(prev, self.widths[s * n + b], out, stride, shortcut))
                prev = out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
