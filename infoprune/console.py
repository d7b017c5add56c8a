"""What a run prints: Lightning's start-up lines once per process instead of once per Trainer, known-harmless
third-party warnings filtered by category where they arise, and the name of each phase as it starts. ``verbose:
true`` in the config leaves everything as Lightning and its dependencies print it."""
from __future__ import annotations

import logging
import warnings

from rich.console import Console

#: the logger behind Lightning's ``rank_zero_info`` lines ("GPU available ...", "TPU available ...", tips)
LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class FirstTimeOnly(logging.Filter):
    """Lets each distinct message through once (a process's first Trainer prints its start-up lines; the next
    phases' identical lines are dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_terminal(verbose: bool = False) -> None:
    """Repeated Lightning start-up lines shown once; Lightning's use of torch's deprecated pytree ``LeafSpec``
    (a ``FutureWarning`` raised in ``pytorch_lightning.utilities._pytree``) not shown. Nothing changes when
    ``verbose``."""
    if verbose:
        return
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, FirstTimeOnly) for f in logger.filters):
        logger.addFilter(FirstTimeOnly())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")


def announce_phase(name: str) -> None:
    """A rule naming the phase that starts (rank 0 only: the caller checks)."""
    Console().rule(f"[bold]{name}")
