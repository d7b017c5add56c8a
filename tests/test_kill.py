"""A prune.py job killed (SIGKILL) at any phase resumes when the same command runs again: it ends with the
results.json of an uninterrupted job, and what was finished before the kill is not done again. Two jobs started at
once that need the same baseline train it once and both use it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infoprune.pipeline import prune
from tests.conftest import ROOT, RecordEpochs, compose_config
from tests.test_prune import QUICK

#: a job that trains its own baseline (3 epochs), scores by MI, removes half of every layer's parameters, then
#: fine-tunes for 2 epochs
JOB = QUICK + ["trainer.max_epochs=3", "finetune.max_epochs=2", "pruning/metric=mi", "pruning.target=0.5",
               "+callbacks.record._target_=tests.conftest.RecordEpochs"]
#: what differs between two runs of the same job: times and the machine's threads
TIMING = ("wall_s", "phase_s", "threads")


def job(phase: str, out: Path, overrides: list[str]) -> subprocess.Popen:
    """``tests/kill_job.py PHASE OUT OVERRIDES`` started, on as many threads as this process uses (so that its
    arithmetic is this process's, bit for bit)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "kill_job.py"), phase, str(out), *overrides],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """results.json of the job run to the end in this process."""
    return comparable(prune(compose_config("prune", JOB, tmp_path_factory.mktemp("uninterrupted") / "run")))


def mtimes(out: Path, *names: str) -> dict[str, int]:
    return {name: (out / name).stat().st_mtime_ns for name in names if (out / name).exists()}


#: phase -> files the kill leaves finished (their modification times must not change on the rerun), and the
#: training epochs the rerun runs (baseline's, then the fine-tune's). The phase killed is done again from its
#: start: the statistics pass, the selection, the slimming, the fine-tune from its last epoch's checkpoint, the
#: report (the fine-tuned network's test, final.ckpt, results.json)
FINISHED = {
    "baseline": ((), [2, 0, 1]),
    "statistics": (("baseline.ckpt",), [0, 1]),
    "selection": (("baseline.ckpt", "step_0/channel_scores.pt"), [0, 1]),
    "slimming": (("baseline.ckpt", "step_0/channel_scores.pt"), [0, 1]),
    "finetune": (("baseline.ckpt", "step_0/channel_scores.pt", "pruned.ckpt"), [1]),
    "report": (("baseline.ckpt", "step_0/channel_scores.pt", "pruned.ckpt", "finetune/checkpoints/last.ckpt"), []),
}
DEFAULT_RUN = {"statistics", "finetune"}  # the other phases are slow tests (each one kill and one rerun)


@pytest.mark.parametrize("phase", [p if p in DEFAULT_RUN else pytest.param(p, marks=pytest.mark.slow)
                                   for p in FINISHED])
def test_a_job_killed_at_any_phase_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, phase):
    out = tmp_path / "run"
    killed = job(phase, out, JOB)
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    assert not (out / "results.json").exists()
    finished, epochs = FINISHED[phase]
    before = mtimes(out, *finished)
    assert sorted(before) == sorted(finished)  # the kill came after these were written
    RecordEpochs.epochs.clear()
    results = prune(compose_config("prune", JOB, out))  # the same command again
    assert RecordEpochs.epochs == epochs  # only what was left was trained
    assert mtimes(out, *finished) == before  # and nothing finished was written again
    assert comparable(results) == uninterrupted
    assert comparable(json.loads((out / "results.json").read_text())) == uninterrupted
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left behind


@pytest.mark.slow  # 15 s: an uninterrupted iterative job, the killed one and its rerun
def test_an_iterative_job_killed_in_its_second_step_reads_the_first_steps_scores_back(tmp_path):
    iterative = JOB + ["pruning/schedule=iterative", "pruning.schedule.steps=2", "pruning.schedule.finetune_epochs=1"]
    expected = comparable(prune(compose_config("prune", iterative, tmp_path / "uninterrupted")))
    out = tmp_path / "run"
    killed = job("second_statistics", out, iterative)
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    before = mtimes(out, "baseline.ckpt", "step_0/channel_scores.pt")
    assert len(before) == 2 and not (out / "step_1" / "channel_scores.pt").exists()
    RecordEpochs.epochs.clear()
    results = prune(compose_config("prune", iterative, out))
    assert RecordEpochs.epochs == [0, 0, 1]  # step 0's fine-tune is trained again, then the final fine-tune
    assert mtimes(out, "baseline.ckpt", "step_0/channel_scores.pt") == before  # step 0's scores read back
    assert comparable(results) == expected


def two_jobs_sharing_a_baseline(tmp_path: Path) -> list[dict]:
    """Two jobs started at once (other criteria, the same baseline settings and cache); their results."""
    cache = tmp_path / "cache"
    shared = QUICK + ["trainer.max_epochs=2", "finetune.max_epochs=0", f"baseline_cache={cache}"]
    jobs = [job("none", tmp_path / metric, shared + [f"pruning/metric={metric}"]) for metric in ("l1_in", "mi")]
    for started in jobs:
        _, stderr = started.communicate(timeout=600)
        assert started.returncode == 0, stderr[-3000:]
    assert len(list(cache.glob("*.ckpt"))) == 1 and not list(cache.glob("*.partial"))
    torch.load(next(cache.glob("*.ckpt")), weights_only=True)  # whole
    return [json.loads((tmp_path / metric / "results.json").read_text()) for metric in ("l1_in", "mi")]


def check_one_trained_and_both_used_it(results: list[dict]) -> None:
    trained = [r for r in results if "baseline" in r["phase_s"]]  # the fit phase of the baseline's training
    assert len(trained) == 1
    assert results[0]["acc_baseline"] == results[1]["acc_baseline"]
    assert results[0]["baseline_val_acc"] == results[1]["baseline_val_acc"] and len(results[0]["baseline_val_acc"]) == 2


@pytest.mark.slow  # 15-45 s on 2 cores: outside the default suite's 4-minute budget
def test_two_jobs_started_at_once_train_their_baseline_once(tmp_path):
    check_one_trained_and_both_used_it(two_jobs_sharing_a_baseline(tmp_path))


@pytest.mark.slow  # 20 rounds of the test above, about 8 s each on 2 cores
def test_two_jobs_started_at_once_train_their_baseline_once_twenty_times_in_a_row(tmp_path):
    for round_ in range(20):
        check_one_trained_and_both_used_it(two_jobs_sharing_a_baseline(tmp_path / str(round_)))
