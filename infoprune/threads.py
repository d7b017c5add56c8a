"""How many threads a job's torch ops use, so that parallel sweep jobs share the cores instead of oversubscribing
them (two jobs of two threads each on two cores run slower than two jobs of one thread)."""
from __future__ import annotations

import os

import torch


def parallel_jobs() -> int:
    """Jobs a Hydra launcher runs side by side with this one: the joblib launcher's ``n_jobs`` in a multirun, else 1."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs", 1)
    return max(1, int(n_jobs)) if isinstance(n_jobs, int) and n_jobs > 0 else 1


def job_threads(setting: int | str, cores: int | None = None) -> int | None:
    """Threads for this job: ``setting`` when it is a number; for ``auto``, the machine's cores divided by the jobs
    running side by side (at least 1), or None (torch's own default) when the job runs alone."""
    if setting != "auto":
        return int(setting)
    jobs = parallel_jobs()
    return max(1, (cores or os.cpu_count() or 1) // jobs) if jobs > 1 else None


def apply_job_threads(setting: int | str) -> None:
    """Set torch's intra-op threads by :func:`job_threads` (nothing for ``auto`` outside a parallel sweep)."""
    threads = job_threads(setting)
    if threads is not None:
        torch.set_num_threads(threads)
