"""Reductions of statistics across processes, and a barrier (no-ops outside ``torch.distributed``)."""
from __future__ import annotations

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """``tensor`` reduced elementwise over all processes by ``op`` (``sum``, ``min`` or ``max``), in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        dist.barrier()


def is_first_process() -> bool:
    return rank_and_world_size()[0] == 0


def broadcast_from_first(value: object) -> object:
    """The first process's ``value`` on every process (``value`` itself outside a process group)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
