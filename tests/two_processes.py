"""Running a function in two gloo processes (DDP on the CPU) and reading back what rank 0 computed."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def rank_zero_result(fn: Callable[..., Any], tmp_path: Path, *args: Any, world_size: int = 2) -> Any:
    """``fn(rank, world_size, *args)`` run in ``world_size`` processes joined by a gloo process group; returns what
    rank 0's call returned (``fn`` must be importable at module level)."""
    out = str(tmp_path / "rank_zero_result.pt")
    mp.spawn(_worker, args=(world_size, free_port(), fn, args, out), nprocs=world_size, join=True)
    return torch.load(out, weights_only=False)
