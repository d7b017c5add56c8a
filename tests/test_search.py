"""The hyperparameter search: the value a job returns under a budget, its settings checked before any work, and the
README's Optuna search run end to end on digits with its best trial in the report."""
import pytest
from omegaconf import OmegaConf

from infoprune.pipeline import prune
from infoprune.search import returned_value, search_objective, search_trials
from infoprune.validation import ConfigError
from tests.conftest import compose_config
from tests.test_prune import QUICK, prune_py

RESULTS = {"val_acc_finetuned": 0.8, "acc_finetuned": 0.75, "flops_remaining": 0.6, "params_remaining": 0.3}


def test_a_job_within_its_budget_returns_its_objective():
    assert search_objective(RESULTS, "val_acc_finetuned", {}) == 0.8
    assert search_objective(RESULTS, "acc_finetuned", {"flops_remaining": 0.6, "params_remaining": 0.5}) == 0.75


def test_a_job_over_its_budget_returns_minus_its_largest_relative_excess():
    # flops 0.6 over 0.5: 20% excess; params 0.3 over 0.25: 20% excess too; over 0.2: 50%
    assert search_objective(RESULTS, "val_acc_finetuned", {"flops_remaining": 0.5}) == pytest.approx(-0.2)
    assert search_objective(RESULTS, "val_acc_finetuned",
                            {"flops_remaining": 0.5, "params_remaining": 0.2}) == pytest.approx(-0.5)
    # every job over the budget ranks below every job within it, the nearer one higher
    near = search_objective({**RESULTS, "flops_remaining": 0.51}, "val_acc_finetuned", {"flops_remaining": 0.5})
    far = search_objective(RESULTS, "val_acc_finetuned", {"flops_remaining": 0.5})
    assert far < near < 0 <= search_objective({**RESULTS, "val_acc_finetuned": 0.0}, "val_acc_finetuned", {})
    with pytest.raises(KeyError, match="latency_remaining"):
        search_objective(RESULTS, "val_acc_finetuned", {"latency_remaining": 0.5})


def test_a_record_from_before_the_objective_was_recorded_returns_nothing_to_a_plain_sweep():
    older = {key: value for key, value in RESULTS.items() if key != "val_acc_finetuned"}
    assert returned_value(older, "val_acc_finetuned", {}) is None
    assert returned_value(RESULTS, "val_acc_finetuned", {"flops_remaining": 0.5}) == pytest.approx(-0.2)


@pytest.mark.parametrize(("override", "key"), [
    ("search.objective=val/acc", "search.objective"),
    ("search.constraints={flops: 0.5}", "search.constraints"),
    ("search.constraints={flops_remaining: 0}", "search.constraints.flops_remaining"),
    ("search.constraints={flops_remaining: half}", "search.constraints.flops_remaining"),
])
def test_bad_search_settings_fail_before_any_work(override, key, tmp_path):
    cfg = compose_config("prune", QUICK + [override], tmp_path / "run")
    with pytest.raises(ConfigError, match=f"^{key}: "):
        prune(cfg)
    assert not (tmp_path / "run").exists()


def test_the_readme_optuna_search_runs_two_trials_and_reports_its_best(tmp_path, digits_baseline):
    from infoprune.report.page import write_report

    sweep = tmp_path / "search"
    result = prune_py(["-m", "hparams_search=prune_budget", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                       f"ckpt_path={digits_baseline}", "search.constraints.flops_remaining=0.3"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = search_trials(sweep)
    assert [trial["trial"] for trial in trials] == [0, 1]
    assert len({trial["results"]["acc_baseline"] for trial in trials}) == 1  # both pruned the same baseline
    summary = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(trials, key=lambda trial: trial["value"])
    assert summary.best_value == pytest.approx(best["value"])  # what prune.py returned is what the sweeper saw
    assert dict(summary.best_params) == {key: type(value)(chosen) for key, value in summary.best_params.items()
                                         for chosen in [next(o.split("=", 1)[1] for o in best["overrides"]
                                                             if o.startswith(f"{key}="))]}
    for trial in trials:
        results = trial["results"]
        expected = (results["val_acc_finetuned"] if results["flops_remaining"] <= 0.3
                    else -(results["flops_remaining"] - 0.3) / 0.3)
        assert trial["value"] == pytest.approx(expected) and results["scope"] == "global"
    table, _ = write_report(sweep, out=tmp_path / "report")
    text = table.read_text()
    assert f"## Search: best trial {best['trial']}" in text and f"| {best['trial']} **best** |" in text
    assert (tmp_path / "report_search.png").stat().st_size > 1000
