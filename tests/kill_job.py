"""prune.py's job killed with SIGKILL at one phase: ``python tests/kill_job.py PHASE OUT OVERRIDE...`` runs the
job of ``conf/prune.yaml`` with the Hydra overrides in the output folder ``OUT`` and kills its own process when
it reaches ``PHASE`` (see :data:`PHASES`; ``none`` runs it to the end). A test then reruns the same job and
compares it with an uninterrupted one (tests/test_kill.py)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infoprune import job, pipeline  # noqa: E402
from infoprune.callbacks.pruning import ChannelPruning  # noqa: E402
from tests.conftest import compose_config  # noqa: E402


def die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DieAtEpochStart(pl.Callback):
    """Kills the process as training epoch ``epoch`` starts (the checkpoint of the epoch before is on disk)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            die()


def die_in_fit(phase: str, epoch: int) -> None:
    """``PruningRun.fit`` of ``phase`` gets a callback that kills the process as its epoch ``epoch`` starts."""
    fit = pipeline.PruningRun.fit

    def fit_then_die(self, model, name, epochs, ckpt_path=None, **trainer_args):
        if name == phase:
            trainer_args["callbacks"] = list(trainer_args.get("callbacks") or []) + [DieAtEpochStart(epoch)]
        return fit(self, model, name, epochs, ckpt_path, **trainer_args)

    pipeline.PruningRun.fit = fit_then_die


def die_before_writing(name: str) -> None:
    """The job's text writes kill the process when they reach the file called ``name``."""
    for module in (job, pipeline):
        write = module.atomic_write_text
        module.atomic_write_text = (lambda write: lambda path, text: die() if Path(path).name == name
                                    else write(path, text))(write)


def die_at_call(owner: type, name: str, call: int) -> None:
    """``owner.name`` kills the process when it is called for the ``call``-th time (1: the first)."""
    method, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        calls.append(None)
        return die() if len(calls) == call else method(*args, **kwargs)

    setattr(owner, name, counted)


#: phase -> how the process is killed there
PHASES = {
    "baseline": lambda: die_in_fit("baseline", 2),  # baseline training: epochs 0-1 done, 2 to go
    "statistics": lambda: die_at_call(pipeline.PruningRun, "collect", 1),  # as the statistics pass starts
    "second_statistics": lambda: die_at_call(pipeline.PruningRun, "collect", 2),  # of an iterative schedule's step 1
    "selection": lambda: setattr(pipeline.PruningRun, "select", die),  # scores computed and saved
    "slimming": lambda: setattr(ChannelPruning, "slim_now", die),  # channels chosen, network not yet slimmed
    "finetune": lambda: die_in_fit("finetune", 1),  # fine-tuning: epoch 0 done
    "report": lambda: die_before_writing("results.json"),  # final.ckpt saved, results.json not yet
    "none": lambda: None,
}


if __name__ == "__main__":
    phase, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    PHASES[phase]()
    pipeline.prune(compose_config("prune", overrides, out))
