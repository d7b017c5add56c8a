"""prune.py end to end on digits: every metric one-shot, iterative and layer-by-layer schedules, global scope,
resume after an interrupted fine-tune, nothing lost on failure, bad input, DDP widths == one process, a 2-job
multirun with its report, the submitit_local launcher."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import open_dict
from torch.utils.flop_counter import FlopCounterMode

from infoprune.datamodules import DigitsDataModule
from infoprune.models.classifier import ImageClassifier
from infoprune.pipeline import prune
from infoprune.pruning.batchnorm import recalibrate_batchnorm
from infoprune.pruning.cost import PruningCost
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.selection import keep_count, select_global
from infoprune.pruning.storage import load_channel_scores
from infoprune.report.page import write_report
from infoprune.report.runs import load_runs
from infoprune.run_identity import baseline_cache_file, settings_digest
from infoprune.training import train
from infoprune.validation import ConfigError
from tests.conftest import CONF, FAST, ROOT, RecordEpochs, compose_config, digits_test_accuracy

RECORD = "+callbacks.record._target_=tests.conftest.RecordEpochs"
QUICK = FAST + ["trainer.accelerator=cpu", "finetune.max_epochs=1", "pruning.stats.num_images=512",
                "pruning.stats.bins=16"]


@pytest.fixture
def baseline(digits_baseline) -> Path:
    """A digits SimpleNet trained for 3 epochs, shared by every test of the run."""
    return digits_baseline


def run_prune(tmp_path: Path, overrides: list[str], name: str = "run") -> dict:
    return prune(compose_config("prune", QUICK + overrides, tmp_path / name))


#: config name -> the variant results.json reports beside the name (the name is the config's)
SCORER_VARIANTS = {"mi": None, "wmi": "l1_out", "wmi_act": "activation", "entropy": None, "l1_in": None,
                   "l1_out": None, "random": None, "taylor": None, "chip": None}  # + the gradient and feature-map paths


@pytest.mark.parametrize("metric", sorted(SCORER_VARIANTS))
def test_oneshot_end_to_end_for_every_metric(tmp_path, baseline, metric):
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", f"pruning/metric={metric}", "pruning.target=0.5"])
    assert results["metric"] == metric  # the name the user selected
    assert results["metric_variant"] == SCORER_VARIANTS[metric]  # and the configured scorer, not another one
    assert 0.45 < results["params_remaining"] < 0.55
    out = tmp_path / "run"
    assert (out / "final.ckpt").exists() and (out / "step_0" / "channel_scores.pt").exists()
    # the three reported accuracies are those of the three networks, evaluated here by hand (one image of slack)
    for key, checkpoint in (("acc_baseline", baseline), ("acc_pruned", out / "pruned.ckpt"),
                            ("acc_finetuned", out / "final.ckpt")):
        assert results[key] == pytest.approx(digits_test_accuracy(checkpoint), abs=1.5 / 359), key
    assert json.loads((out / "results.json").read_text())["acc_finetuned"] == results["acc_finetuned"]


def step_widths(run_dir: Path, step: int) -> dict[str, int]:
    """Widths of the network that step ``step`` scored (from its scores file)."""
    scores = load_channel_scores(run_dir / f"step_{step}" / "channel_scores.pt")
    return {name: len(entry["scores"]) for name, entry in scores["layers"].items()}


def test_iterative_schedule_removes_the_same_fraction_of_what_is_left_at_every_step(tmp_path, baseline):
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/schedule=iterative", "pruning.schedule.steps=2",
                                   "pruning.target=0.6", "pruning/metric=mi"])
    out = tmp_path / "run"
    assert (out / "step_0_finetune" / "checkpoints" / "last.ckpt").exists()
    per_step = 1 - 0.4 ** 0.5  # two steps, each leaving sqrt(0.4) of every layer's parameters
    first, second = step_widths(out, 0), step_widths(out, 1)
    assert first == results["channels_before"]
    assert second == {n: keep_count(c, per_step, "params", 1, 1) for n, c in first.items()}
    assert results["channels_after"] == {n: keep_count(c, per_step, "params", 1, 1) for n, c in second.items()}
    assert 0.35 < results["params_remaining"] < 0.45


def test_results_json_flops_are_those_of_the_saved_networks(tmp_path, baseline):
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/metric=l1_out", "pruning.target=0.5"])
    for key, checkpoint in (("flops_before", baseline), ("flops_after", tmp_path / "run" / "final.ckpt")):
        model = ImageClassifier.load_from_checkpoint(checkpoint, weights_only=False).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.net(torch.zeros(1, 1, 8, 8))
        assert results[key] == counter.get_total_flops() and results[key] > 0, key
    assert results["flops_after"] < results["flops_before"]


@pytest.mark.parametrize(("metric", "normalization"), [("mi", "none"), ("l1_in", "max")])
def test_global_scope_normalisation_auto_and_a_flops_budget(tmp_path, baseline, metric, normalization):
    """``normalization: auto`` compares MI and entropy as they are and divides other scores by the layer maximum;
    ``resource=flops`` removes channels until the FLOPs budget is met."""
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/scope=global", "pruning.scope.resource=flops",
                                   "pruning.target=0.5", f"pruning/metric={metric}"])
    assert results["flops_remaining"] <= 0.5
    model = ImageClassifier.load_from_checkpoint(baseline, weights_only=False)
    layers = find_prunable_layers(model.net, model.example_input_array)
    scores = {n: e["scores"] for n, e in load_channel_scores(tmp_path / "run" / "step_0" / "channel_scores.pt")[
        "layers"].items()}
    keep = select_global(scores, layers, PruningCost(model.net, layers, model.example_input_array), 0.5,
                         resource="flops", normalization=normalization)
    assert results["channels_after"] == {n: len(k) for n, k in keep.items()}


def test_results_record_wall_time_per_phase_and_the_report_shows_it(tmp_path, baseline):
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/metric=l1_in", "pruning.target=0.5",
                                   "pruning.recalibrate_bn_images=256"])
    phases = results["phase_s"]
    assert list(phases) == ["baseline_test", "step_0/statistics", "step_0/selection_slimming", "recalibration",
                            "pruned_test", "finetune", "finetuned_test", "finetuned_val"]
    assert all(seconds > 0 for seconds in phases.values()) and sum(phases.values()) < results["wall_s"]
    # the final network's validation accuracy, counted by hand over the validation images
    final = tmp_path / "run" / "final.ckpt"
    assert results["val_acc_finetuned"] == pytest.approx(digits_test_accuracy(final, "val"), abs=1e-6)
    assert results["acc_finetuned"] == pytest.approx(digits_test_accuracy(final), abs=1e-6)
    table, _ = write_report(tmp_path / "run", out=tmp_path / "report")
    text = table.read_text()
    header = next(line for line in text.splitlines() if line.endswith("| total |"))
    assert header.split(" | ")[4:] == ["statistics", "selection and slimming", "BatchNorm re-estimation",
                                       "final fine-tune", "tests", "other", "total |"]
    assert f"| {results['wall_s']:.1f} |" in text  # the phases and 'other' add up to the job's wall time


@pytest.mark.parametrize("augment", [True, False])
def test_batchnorm_is_re_estimated_after_pruning_when_asked(tmp_path, baseline, augment):
    """On the calibration images augmented as in training (the digits' random crops) or as they are."""
    common = [f"ckpt_path={baseline}", "pruning/metric=l1_in", "pruning.target=0.5", "finetune.max_epochs=0"]
    run_prune(tmp_path, common, "plain")
    run_prune(tmp_path, common + ["pruning.recalibrate_bn_images=300", f"pruning.recalibrate_bn_augment={augment}"],
              "recalibrated")
    recalibrated = torch.load(tmp_path / "recalibrated" / "pruned.ckpt", weights_only=False)["state_dict"]
    running = [k for k in recalibrated if k.endswith("running_mean") or k.endswith("running_var")]
    datamodule = DigitsDataModule()
    for reference_augment in (True, False):
        plain = ImageClassifier.load_from_checkpoint(tmp_path / "plain" / "pruned.ckpt", weights_only=False)
        recalibrate_batchnorm(plain.net, datamodule.calibration_batches(300, 256, 0, torch.device("cpu"),
                                                                        augment=reference_augment))
        matches = all(torch.allclose(plain.state_dict()[k], recalibrated[k], atol=1e-6) for k in running)
        assert running and matches == (reference_augment == augment), reference_augment
    before = torch.load(tmp_path / "plain" / "pruned.ckpt", weights_only=False)["state_dict"]
    assert not all(torch.allclose(before[k], recalibrated[k]) for k in running)  # the statistics did change


def test_a_setting_added_later_keeps_the_records_made_before_it_at_the_value_that_reproduces_them(tmp_path):
    earlier = compose_config("prune", QUICK, tmp_path / "run")
    with open_dict(earlier):
        del earlier.pruning.recalibrate_bn_augment  # a config from before the setting existed
    same = compose_config("prune", QUICK + ["pruning.recalibrate_bn_augment=false"], tmp_path / "run")
    other = compose_config("prune", QUICK + ["pruning.recalibrate_bn_augment=true"], tmp_path / "run")
    assert settings_digest(same) == settings_digest(earlier) != settings_digest(other)


@pytest.mark.parametrize("datamodule,moved", [
    ("mnist", ["paths.data_dir=/elsewhere/data", "datamodule.download=true"]),
    ("cifar10_jpeg", ["paths.data_dir=/elsewhere/data", "paths.cache_dir=/elsewhere/cache"]),
])
def test_runs_and_baselines_are_recognised_with_the_data_kept_elsewhere(tmp_path, datamodule, moved):
    common = QUICK + [f"datamodule={datamodule}", f"baseline_cache={tmp_path / 'cache'}"]
    here = compose_config("prune", common, tmp_path / "run")
    elsewhere = compose_config("prune", common + moved, tmp_path / "run")
    other_split = compose_config("prune", common + ["datamodule.split_seed=1"], tmp_path / "run")
    assert settings_digest(here) == settings_digest(elsewhere) != settings_digest(other_split)
    assert baseline_cache_file(here) == baseline_cache_file(elsewhere) != baseline_cache_file(other_split)


def test_layer_by_layer_schedule_prunes_one_layer_per_step_with_a_fine_tune_between(tmp_path, baseline):
    RecordEpochs.epochs.clear()
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/schedule=layer_by_layer", "pruning.target=0.5",
                                   "pruning/metric=l1_out", "pruning.schedule.finetune_epochs=1",
                                   "finetune.max_epochs=0", RECORD])
    before, after = results["channels_before"], results["channels_after"]
    names = list(before)
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("step_*") if p.is_dir()) == sorted(
        [f"step_{i}" for i in range(len(names))] + [f"step_{i}_finetune" for i in range(len(names) - 1)])
    assert RecordEpochs.epochs == [0] * (len(names) - 1)  # one fine-tune epoch after every step but the last
    for i in range(len(names)):  # step i scores the network with layers 0..i-1 pruned and the rest untouched
        widths = {n: len(v["scores"]) for n, v in load_channel_scores(out / f"step_{i}" / "channel_scores.pt")[
            "layers"].items()}
        assert widths == {n: after[n] if j < i else before[n] for j, n in enumerate(names)}, i
    for name in names:  # each layer by the target alone: half its parameters (input and output widths both shrink)
        assert after[name] == keep_count(before[name], 0.5, "params", 1, 1)


def test_global_scope_reaches_its_budget(tmp_path, baseline):
    results = run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/scope=global", "pruning.target=0.6",
                                   "pruning/metric=mi"])
    assert 0.38 < results["params_remaining"] <= 0.40


def test_interrupted_fine_tune_resumes_and_a_failed_run_loses_nothing(tmp_path, baseline):
    overrides = [f"ckpt_path={baseline}", "pruning/metric=l1_in", "pruning.target=0.5", "finetune.max_epochs=4",
                 "+callbacks.crash._target_=tests.test_prune.SlowCrashAtEpochTwo"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prune(tmp_path, overrides)
    out = tmp_path / "run"
    last = out / "finetune" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    trained_before_crash = torch.load(last, weights_only=False)["callbacks"]["Timer"]["time_elapsed"]["train"]
    assert trained_before_crash >= SlowCrashAtEpochTwo.pause_s
    pruned_hash = hashlib.md5((out / "pruned.ckpt").read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError):  # a failing rerun (bad checkpoint path) touches nothing
        run_prune(tmp_path, [f"ckpt_path={tmp_path / 'missing.ckpt'}", "finetune.max_epochs=4"])
    assert hashlib.md5((out / "pruned.ckpt").read_bytes()).hexdigest() == pruned_hash
    assert torch.load(last, weights_only=False)["epoch"] == 1
    with pytest.raises(ValueError, match="other settings"):  # resuming with other settings is refused
        run_prune(tmp_path, overrides[:-1] + ["pruning.target=0.6"])
    RecordEpochs.epochs.clear()
    results = run_prune(tmp_path, overrides[:-1] + [RECORD])  # same output directory, no crash: resumes
    assert RecordEpochs.epochs == [2, 3]  # only the epochs the crash prevented; from scratch would be 0-3
    assert torch.load(last, weights_only=False)["epoch"] == 3
    assert torch.load(last, weights_only=False)["lr_schedulers"][0]["T_max"] == 4  # the baseline's cosine, stretched
    assert hashlib.md5((out / "pruned.ckpt").read_bytes()).hexdigest() == pruned_hash
    assert not (out / "baseline").exists() and 0.45 < results["params_remaining"] < 0.55
    # the record's time counts the interrupted process's checkpointed epochs and pruning phases
    assert results["phase_s"]["finetune"] >= trained_before_crash
    assert results["wall_s"] >= sum(results["phase_s"].values()) > trained_before_crash
    finished = (out / "results.json").read_text(), last.stat().st_mtime_ns
    assert run_prune(tmp_path, overrides[:-1]) == results  # a finished run is returned, not redone
    assert ((out / "results.json").read_text(), last.stat().st_mtime_ns) == finished


def test_fine_tuning_runs_its_own_scheduler_when_one_is_set(tmp_path, baseline):
    step = "{_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning.target=0.5", "finetune.max_epochs=2",
                         f"finetune.scheduler={step}"])
    finetune = torch.load(tmp_path / "run" / "finetune" / "checkpoints" / "last.ckpt", weights_only=False)
    scheduler, optimizer = finetune["lr_schedulers"][0], finetune["optimizer_states"][0]
    assert (scheduler["step_size"], scheduler["gamma"]) == (1, 0.5) and "T_max" not in scheduler
    assert scheduler["base_lrs"] == [0.01]  # finetune.lr
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 ** scheduler["last_epoch"])


class CrashAtEpochTwo(pl.Callback):
    """Raises at the start of epoch 2 (after epochs 0 and 1 were checkpointed)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


class SlowCrashAtEpochTwo(CrashAtEpochTwo):
    """:class:`CrashAtEpochTwo`, with epoch 1 taking at least ``pause_s`` seconds longer (so that the crashed
    process's training time exceeds what the resumed process spends on its epochs 2 and 3)."""
    pause_s = 3.0

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            time.sleep(self.pause_s)
        super().on_train_epoch_start(trainer, pl_module)


def test_bad_input_is_rejected_before_any_work(tmp_path, baseline):
    with pytest.raises(MissingConfigException, match="metric"):
        compose_config("prune", ["pruning/metric=magic"], tmp_path)
    with pytest.raises(MissingConfigException, match="schedule"):
        compose_config("prune", ["pruning/schedule=sometimes"], tmp_path)
    with pytest.raises(ValueError, match=r"pruning.target: must be a number in \[0, 1\)"):
        run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning.target=1.2"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_prune(tmp_path, [f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(ValueError, match="does not fit the model config"):
        run_prune(tmp_path, [f"ckpt_path={baseline}", "model.net.width=0.5"])
    with pytest.raises(ValueError, match="layerwise scope"):
        run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/scope=global", "pruning/schedule=layer_by_layer"])
    assert not (tmp_path / "run" / "step_0").exists()


def prune_py(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "prune.py"), *args, "logger=csv", "callbacks.rich_progress_bar=null",
           "++trainer.enable_progress_bar=false", "finetune.max_epochs=1", "pruning.stats.num_images=512"]
    return subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_ddp_widths_equal_the_single_process_widths(tmp_path, ddp_pair):
    from tests.ddp_pair import PRUNE_RUN
    baseline = ddp_pair / "baseline" / "checkpoints" / "last.ckpt"
    prune(compose_config("prune", [f"ckpt_path={baseline}", *PRUNE_RUN], tmp_path / "cpu"))  # one process
    single = json.loads((tmp_path / "cpu" / "results.json").read_text())
    ddp = json.loads((ddp_pair / "prune_widths" / "results.json").read_text())
    assert single["channels_after"] == ddp["channels_after"] != single["channels_before"]


@pytest.mark.slow  # 19 s; the same job in an externally launched pair is in the default run (above)
def test_prune_py_under_lightnings_ddp_launcher_gives_the_single_process_widths(tmp_path, baseline):
    setting = [f"ckpt_path={baseline}", "pruning/scope=global", "pruning.target=0.5", "pruning/metric=mi"]
    result = prune_py(["trainer=ddp_cpu", *setting, f"hydra.run.dir={tmp_path / 'ddp'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    same_bins = [o for o in QUICK if not o.startswith("pruning.stats.bins")]  # prune_py keeps the default bins
    prune(compose_config("prune", same_bins + setting, tmp_path / "cpu"))  # one process
    single, ddp = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("cpu", "ddp"))
    assert single["channels_after"] == ddp["channels_after"] != single["channels_before"]


def directory_digest(root: Path) -> dict[str, str]:
    """md5 of every file under ``root`` by relative path."""
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*"))
            if f.is_file()}


@pytest.mark.slow  # 15-45 s on 2 cores: outside the default suite's 4-minute budget
def test_two_job_multirun_reports_and_its_rerun_leaves_finished_jobs_byte_identical(tmp_path, baseline):
    sweep = tmp_path / "sweep"
    setting = [f"ckpt_path={baseline}", "pruning/metric=mi,l1_out", "pruning.target=0.5", f"hydra.sweep.dir={sweep}"]
    result = prune_py(["-m", "hydra/launcher=local_parallel", *setting], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = load_runs(sweep)
    assert sorted(r["metric"] for r in runs) == ["l1_out", "mi"]
    assert all(r["threads"] == max(1, os.cpu_count() // 2) for r in runs)  # two jobs share the cores
    table, figure = write_report(sweep, out=tmp_path / "report")
    assert figure.stat().st_size > 1000
    text = table.read_text()
    for run in runs:  # one seed each: the seeds column says 1 and the accuracy has no spread
        assert f"| {run['metric']} | layerwise | oneshot | 0.5 | 1 | {100 * run['acc_baseline']:.2f} |" in text

    finished = directory_digest(sweep)
    assert "0/csv/metrics.csv" in finished and "0/results.json" in finished and "0/overrides.yaml" in finished
    job = ["pruning/metric=mi", f"ckpt_path={baseline}", "finetune.max_epochs=1", "pruning.stats.num_images=512"]
    with pytest.raises(ConfigError, match="pruning.target"):  # a rerun with a bad setting
        prune(compose_config("prune", job + ["pruning.target=1.5"], sweep / "0"))
    with pytest.raises(ValueError, match="holds a finished run with other settings"):  # a rerun with other settings
        prune(compose_config("prune", job + ["pruning.target=0.3"], sweep / "0"))
    assert directory_digest(sweep) == finished
    shutil.rmtree(sweep / "1")  # an unfinished job: a rerun of the sweep (another launcher) fills in that one only
    rerun = prune_py(["-m", *setting], tmp_path)
    assert rerun.returncode == 0 and rerun.stdout.count("already holds this run's results; nothing to do") == 1
    now = directory_digest(sweep)
    assert {k: v for k, v in now.items() if k.startswith("0/")} == {k: v for k, v in finished.items()
                                                                     if k.startswith("0/")}
    assert json.loads((sweep / "1" / "results.json").read_text())["metric"] == "l1_out"


@pytest.mark.slow  # 20 s; the launcher plumbing is covered by the local multirun tests, this is submitit's own path
def test_submitit_local_launcher_runs_a_job(tmp_path, baseline):
    sweep = tmp_path / "sweep"
    result = prune_py(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"ckpt_path={baseline}",
                       "pruning/metric=l1_in", "pruning.target=0.3", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(load_runs(sweep)) == 1


def test_unknown_launcher_is_a_clear_error():
    """What ``python prune.py -m hydra/launcher=teleport`` prints: Hydra composes the launcher group before any
    job, so the error comes from composing (the message names the group, the option and the options there are)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF), pytest.raises(MissingConfigException) as error:
        compose(config_name="prune", overrides=["hydra/launcher=teleport", "pruning.target=0.3"],
                return_hydra_config=True)
    message = str(error.value)
    assert "hydra/launcher" in message and "teleport" in message and "local_parallel" in message


def test_wandb_offline_run_gets_summary_and_score_histograms(tmp_path, baseline, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    overrides = [o for o in QUICK if o != "logger=none"] + ["logger=wandb", f"ckpt_path={baseline}",
                                                             "pruning/metric=mi", "pruning.target=0.5"]
    prune(compose_config("prune", overrides, tmp_path / "run"))
    import wandb
    wandb.finish()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"summary/acc_finetuned", b"scores/step_0/features.0.conv")
    for _ in range(60):  # the W&B service writes its log asynchronously: slow on a loaded machine
        records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))  # protobuf log: key names stay readable
        if all(key in records for key in keys):
            break
        time.sleep(1)
    assert all(key in records for key in keys)
    assert any(runs[0].glob("files/media/table/pruning/channels_*.table.json"))


EXPERIMENTS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                     for p in (ROOT / "conf" / "experiment").rglob("*.yaml") if not p.stem.endswith("_base"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_config("prune", [f"experiment={experiment}"], tmp_path)
    assert cfg.task_name != "prune" and 0.0 < cfg.pruning.target < 1.0


def test_full_scale_paper_command_runs_fast_dev_run_sized(tmp_path):
    from tests import data_writers
    data_writers.write_cifar10(tmp_path / "data")
    overrides = FAST + ["experiment=paper/layerwise_cifar10", "trainer=cpu", "++trainer.fast_dev_run=true",
                        "trainer.precision=32", f"datamodule.data_dir={tmp_path / 'data'}", "datamodule.batch_size=8",
                        "model.net.width=0.125", "pruning.stats.num_images=40", "pruning.stats.batch_size=20"]
    results = prune(compose_config("prune", overrides, tmp_path / "run"))
    assert results["scope"] == "layerwise" and results["params_remaining"] < 0.4


def test_baseline_cache_trains_each_baseline_once_and_resumes_an_interrupted_training(tmp_path):
    cache = tmp_path / "baselines"
    base = QUICK + ["trainer.max_epochs=3", f"baseline_cache={cache}", "finetune.max_epochs=0"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_prune(tmp_path, base + ["pruning/metric=l1_in", "+callbacks.crash._target_=tests.test_prune.CrashAtEpochTwo"],
                  "crashed")
    assert not list(cache.glob("*.ckpt")) and len(list(cache.glob("*.partial/last.ckpt"))) == 1
    RecordEpochs.epochs.clear()
    first = run_prune(tmp_path, base + ["pruning/metric=l1_in", RECORD], "first")  # another job, same settings
    assert RecordEpochs.epochs == [2]  # resumed from the interrupted job's epoch-1 checkpoint
    assert len(list(cache.glob("*.ckpt"))) == 1 and not list(cache.glob("*.partial"))
    curve = json.loads(next(cache.glob("*.json")).read_text())["val_acc"]
    assert len(curve) == 3  # epochs 0-1 recorded by the interrupted job, restored from its checkpoint
    assert first["baseline_val_acc"] == curve and all(0 < acc <= 1 for acc in curve)
    second = run_prune(tmp_path, base + ["pruning/metric=mi", "pruning.target=0.3"], "second")
    assert not (tmp_path / "second" / "baseline").exists()  # reused, not retrained
    assert second["acc_baseline"] == first["acc_baseline"] and second["baseline_val_acc"] == curve
    assert "baseline_wait" in second["phase_s"]  # time spent on the cache's lock (another job training it)
    run_prune(tmp_path, base + ["pruning/metric=mi", "seed=1"], "other_seed")
    assert len(list(cache.glob("*.ckpt"))) == 2  # another seed is another baseline


def test_the_checkpoint_a_job_starts_from_is_read_once(tmp_path, baseline, monkeypatch):
    reads = []
    load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/metric=l1_in", "finetune.max_epochs=0"])
    assert reads.count(str(baseline)) == 1  # validation reads it; the job reuses what validation read
    train(compose_config("train", FAST + ["trainer.accelerator=cpu", f"init_from={baseline}", "train=false"],
                         tmp_path / "evaluated"))
    assert reads.count(str(baseline)) == 2


def test_prune_py_on_an_already_pruned_checkpoint(tmp_path, baseline):
    run_prune(tmp_path, [f"ckpt_path={baseline}", "pruning/metric=l1_in", "pruning.target=0.5"], "first")
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    again = run_prune(tmp_path, [f"ckpt_path={tmp_path / 'first' / 'final.ckpt'}", "pruning/metric=l1_in",
                                 "pruning.target=0.5"], "second")
    assert again["channels_before"] == first["channels_after"]  # widths read from the checkpoint, not the config
    assert all(again["channels_after"][n] < w for n, w in again["channels_before"].items() if w > 1)
