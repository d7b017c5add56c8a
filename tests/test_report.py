"""The sweep report: runs from several directories aggregated per (metric, scope, schedule, target) with mean and
sample std over seeds (checked against numpy), best fine-tuned first, and written where --out says."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from infoprune.report.page import write_report
from infoprune.report.plots import bar_plot
from infoprune.report.runs import aggregate, grouped_phases, label, load_runs, plateau_gain
from infoprune.report.stat_tests import order_changes, pairwise_tests
from infoprune.report.tables import markdown_table

ACC = {("mi", 0.5): [0.61, 0.65, 0.60], ("l1_out", 0.5): [0.70, 0.72, 0.69], ("mi", 0.7): [0.50, 0.52, 0.47],
       ("l1_out", 0.7): [0.58, 0.57, 0.60]}


def write_sweeps(root):
    """Two sweep directories (one per target), three seeds each, with made-up accuracies."""
    dirs = []
    for target in (0.5, 0.7):
        sweep = root / f"sweep_{target}"
        for job, ((metric, t), accs) in enumerate((k, v) for k, v in ACC.items() if k[1] == target):
            for seed, acc in enumerate(accs):
                out = sweep / f"{job}_{seed}"
                out.mkdir(parents=True)
                run = {"metric": metric, "scope": "layerwise", "schedule": "oneshot", "target": t, "seed": seed,
                       "acc_baseline": 0.8, "acc_pruned": acc - 0.2, "acc_finetuned": acc,
                       "params_remaining": 1 - t, "flops_remaining": 1 - t, "wall_s": 60.0 * (seed + 1)}
                (out / "results.json").write_text(json.dumps(run))
                (out / "config_resolved.yaml").write_text(f"pruning:\n  stats:\n    bins: {8 * (1 + seed % 2)}\n")
        dirs.append(sweep)
    return dirs


def test_aggregate_over_directories_matches_numpy(tmp_path):
    rows = aggregate(load_runs(*write_sweeps(tmp_path)))
    assert [(r["metric"], r["target"]) for r in rows] == [("l1_out", 0.5), ("mi", 0.5), ("l1_out", 0.7), ("mi", 0.7)]
    for row in rows:
        accs = np.array(ACC[(row["metric"], row["target"])])
        assert row["acc_finetuned"] == pytest.approx((accs.mean(), accs.std(ddof=1)))
        assert row["seeds"] == [0, 1, 2] and row["wall_s"][0] == pytest.approx(120.0)


def test_report_cli_writes_table_and_line_plot_to_out(tmp_path):
    dirs = write_sweeps(tmp_path)
    prefix = tmp_path / "docs" / "table"
    result = subprocess.run([sys.executable, "-m", "infoprune.report", *map(str, dirs), "--out", str(prefix),
                             "--metrics", "l1_out"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "docs" / "table.md").read_text()
    assert "| l1_out | layerwise | oneshot | 0.5 | 3 | 80.00 ± 0.00 | 50.33 ± 1.53 | 70.33 ± 1.53 |" in text
    assert "| mi |" not in text
    assert "minutes per job" in text and "(table.png)" in text
    assert (tmp_path / "docs" / "table.png").stat().st_size > 1000


def test_report_on_a_directory_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_runs(tmp_path)
    with pytest.raises(ValueError, match=r"no runs of metric\(s\) \['entropy'\].*\['l1_out', 'mi'\]"):
        write_report(*write_sweeps(tmp_path), metrics=("entropy",))


def test_report_cli_names_the_metrics_present_instead_of_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "infoprune.report", *map(str, write_sweeps(tmp_path)), "--metrics",
                             "wmi"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "['wmi']" in result.stderr and "['l1_out', 'mi']" in result.stderr


def test_seeds_column_counts_distinct_seeds_and_a_single_seed_shows_no_spread():
    base = {"metric": "mi", "scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8,
            "params_remaining": 0.3, "flops_remaining": 0.3, "acc_pruned": 0.5, "finetune_epochs": 1}
    row = aggregate([dict(base, seed=0, acc_finetuned=0.6), dict(base, seed=0, acc_finetuned=0.7)])[0]
    assert row["seeds"] == [0] and row["runs"] == 2
    line = markdown_table([row]).splitlines()[-1]
    assert "| 1 (2 runs) | 80.00 | 50.00 | 65.00 |" in line and "±" not in line


def test_grouping_by_a_config_key_splits_rows_and_labels_them(tmp_path):
    dirs = write_sweeps(tmp_path)
    runs = load_runs(*dirs, by=("pruning.stats.bins",))
    rows = aggregate(runs, by=("pruning.stats.bins",))
    mi = {r["pruning.stats.bins"]: r for r in rows if r["metric"] == "mi" and r["target"] == 0.5}
    assert mi[8]["seeds"] == [0, 2] and mi[16]["seeds"] == [1]
    assert mi[8]["acc_finetuned"][0] == pytest.approx(np.mean([0.61, 0.60]))
    assert label(mi[16]) == "mi (layerwise, oneshot, bins=16)"
    assert "| pruning.stats.bins |" in markdown_table(rows)
    table, figure = write_report(dirs[0], out=tmp_path / "one_target", by=("pruning.stats.bins",))
    assert figure.stat().st_size > 1000 and "bins=16" not in table.read_text()  # bars, labelled in the plot only
    with pytest.raises(KeyError, match="pruning.stats.nope"):
        load_runs(*dirs, by=("pruning.stats.nope",))


def test_rows_without_fine_tuning_are_marked_and_mixed_rows_average_only_tuned_runs():
    base = {"scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8,
            "params_remaining": 0.3, "flops_remaining": 0.3}
    runs = [dict(base, metric="mi", seed=0, acc_pruned=0.3, acc_finetuned=0.3),
            dict(base, metric="l1_out", seed=0, acc_pruned=0.3, acc_finetuned=0.6),
            dict(base, metric="l1_out", seed=1, acc_pruned=0.4, acc_finetuned=0.4)]
    rows = {r["metric"]: r for r in aggregate(runs)}
    assert not rows["mi"]["finetuned"] and rows["l1_out"]["finetuned"]
    assert rows["l1_out"]["acc_finetuned"] == (pytest.approx(0.6), 0.0)
    assert rows["l1_out"]["acc_pruned"][0] == pytest.approx(0.35)
    assert "| 30.00 | - |" in markdown_table(list(rows.values()))  # one seed: no spread to show


def test_recorded_fine_tune_epochs_decide_over_equal_accuracies():
    base = {"metric": "mi", "scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8,
            "params_remaining": 0.3, "flops_remaining": 0.3, "acc_pruned": 0.5}
    tuned_to_same_accuracy = dict(base, seed=0, acc_finetuned=0.5, finetune_epochs=1)
    untuned = dict(base, seed=1, acc_finetuned=0.5, finetune_epochs=0)
    assert aggregate([tuned_to_same_accuracy])[0]["finetuned"]
    assert not aggregate([untuned])[0]["finetuned"]


def test_drop_is_paired_by_run():
    base = {"metric": "cep", "scope": "connection", "schedule": "iterative", "target": 0.84, "acc_pruned": 0.9,
            "params_remaining": 0.16, "flops_remaining": 0.2, "finetune_epochs": 8}
    runs = [dict(base, seed=0, acc_baseline=0.993, acc_finetuned=0.992),
            dict(base, seed=1, acc_baseline=0.990, acc_finetuned=0.989)]
    row = aggregate(runs)[0]
    assert row["drop"] == (pytest.approx(0.001), pytest.approx(0.0, abs=1e-12))  # each seed loses one image in 1,000
    assert row["acc_finetuned"][1] > 0.002  # while the accuracies themselves spread with their baselines
    assert "| 0.10 ± 0.00 |" in markdown_table([row])


def test_connection_runs_from_before_the_scope_named_the_threshold_rule_get_it_from_their_config(tmp_path):
    old = {"metric": "cep", "scope": "connection", "schedule": "iterative", "target": 0.84}
    for name, run in (("oldest", old), ("old_global", old), ("new", dict(old, scope="connection/layer"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(run))
    (tmp_path / "old_global" / "config_resolved.yaml").write_text("pruning:\n  metric:\n    threshold: global\n")
    (tmp_path / "oldest" / "config_resolved.yaml").write_text("pruning:\n  metric:\n    order: 1\n")
    scopes = {Path(r["run_dir"]).name: r["scope"] for r in load_runs(tmp_path)}
    assert scopes == {"oldest": "connection/group", "old_global": "connection/global", "new": "connection/layer"}


def test_tables_say_what_they_count_and_what_right_after_pruning_includes():
    from infoprune.pruning.summary import PruningSummary
    from infoprune.results import pruned_row_label
    table = PruningSummary({"fc": 100}, {"fc": 16}, 100, 16, 200, 32, unit="weights").table()
    assert table.title == "Connection pruning" and table.columns[1].header == "weights before"
    assert PruningSummary({"c": 8}, {"c": 4}, 10, 5, 20, 10).table().title == "Channel pruning"
    assert pruned_row_label({"schedule": "layer_by_layer", "step_finetune_epochs": 1}) == \
        "pruned, per-layer fine-tunes only"
    assert pruned_row_label({"schedule": "iterative", "step_finetune_epochs": 2}) == "pruned, per-step fine-tunes only"
    assert pruned_row_label({"schedule": "iterative", "step_finetune_epochs": 0}) == "pruned, no fine-tune"


def test_a_report_page_leads_with_its_question_and_the_command(tmp_path):
    page, _ = write_report(*write_sweeps(tmp_path), out=tmp_path / "page", question="Which criterion wins?",
                           discussion="[main](main.md)", command="python -m infoprune.report x")
    lines = page.read_text().splitlines()
    assert lines[0] == "# Which criterion wins?"
    assert "discussion: [main](main.md)" in lines[2] and "`python -m infoprune.report x`" in lines[2]


def test_paired_differences_match_seed_by_seed_numpy(tmp_path):
    runs = load_runs(*write_sweeps(tmp_path))
    del runs[[r["metric"] == "l1_out" and r["target"] == 0.7 and r["seed"] == 2 for r in runs].index(True)]
    rows = {(r["metric"], r["target"]): r for r in aggregate(runs, reference="l1_out")}
    for target, seeds in ((0.5, [0, 1, 2]), (0.7, [0, 1])):  # only the seeds both metrics ran are paired
        diff = np.array(ACC[("mi", target)])[seeds] - np.array(ACC[("l1_out", target)])[seeds]
        assert rows[("mi", target)]["vs_reference"] == pytest.approx((diff.mean(), diff.std(ddof=1), len(seeds)))
        assert rows[("l1_out", target)]["vs_reference"][:2] == (0.0, 0.0)
    line = [x for x in markdown_table(list(rows.values()), "l1_out").splitlines() if x.startswith("| mi | layerwise |")]
    assert "| -8.33 ± 1.15 (3) |" in line[0]  # target 0.5: -0.09, -0.07, -0.09


def test_plateau_gain_is_the_rise_of_the_best_accuracy_over_the_last_fifth():
    assert plateau_gain([0.5, 0.6, 0.7, 0.72, 0.71, 0.74, 0.73, 0.745, 0.75, 0.748]) == pytest.approx(0.75 - 0.745)  # k = 2
    assert plateau_gain([0.5, 0.6, 0.7, 0.69, 0.68]) == pytest.approx(-0.02)  # k = 1: best before it is higher
    assert plateau_gain([0.6]) == 0.0


def test_report_shows_each_baseline_once_with_its_plateau_gain_and_curve_plot(tmp_path):
    dirs = write_sweeps(tmp_path)
    curves = {0: [0.5, 0.6, 0.7, 0.7, 0.72], 1: [0.4, 0.6, 0.65, 0.66, 0.66], 2: [0.7] * 5}
    for file in sorted(Path(tmp_path).rglob("results.json")):
        run = json.loads(file.read_text())
        file.write_text(json.dumps(dict(run, network="infoprune.models.SimpleNet", datamodule="cifar10",
                                        baseline_val_acc=curves[run["seed"]])))
    table, _ = write_report(*dirs, out=tmp_path / "page", reference="mi")
    text = table.read_text()
    assert "| SimpleNet | cifar10 | 0 | 5 | 72.00 | 72.00 | 2.00 | no | 80.00 | 4 |" in text  # every seed-0 run
    assert "| SimpleNet | cifar10 | 1 | 5 | 66.00 | 66.00 | 0.00 | yes | 80.00 | 4 |" in text
    assert (tmp_path / "page_baselines.png").stat().st_size > 1000 and "vs mi, paired (points)" in text
    assert (tmp_path / "page_paired.png").stat().st_size > 1000 and "(page_paired.png)" in text


def test_kept_table_averages_each_layer_over_the_runs_of_a_row():
    base = {"metric": "cep", "scope": "connection/global", "schedule": "iterative", "target": 0.84,
            "acc_baseline": 0.99, "acc_pruned": 0.98, "acc_finetuned": 0.99, "params_remaining": 0.16,
            "flops_remaining": 0.4, "channels_before": {"conv1": 500, "fc": 1000}}
    runs = [dict(base, seed=0, channels_after={"conv1": 450, "fc": 100}),
            dict(base, seed=1, channels_after={"conv1": 400, "fc": 140})]
    text = markdown_table(aggregate(runs))
    assert "Fraction of each layer's connections kept" in text and "| conv1 | fc |" in text
    assert "| cep | connection/global | 0.84 | 0.85 | 0.12 |" in text  # (0.9 + 0.8) / 2, (0.1 + 0.14) / 2


def test_ranking_table_ranks_each_fine_tuning_length_and_counts_agreeing_pairs():
    base = {"scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8, "acc_pruned": 0.3,
            "params_remaining": 0.3, "flops_remaining": 0.3, "seed": 0}
    accs = {1: {"a": 0.70, "b": 0.60, "c": 0.50}, 3: {"a": 0.72, "b": 0.73, "c": 0.55}}
    runs = [dict(base, metric=m, acc_finetuned=acc, finetune_epochs=e, **{"finetune.max_epochs": e})
            for e, by_metric in accs.items() for m, acc in by_metric.items()]
    text = markdown_table(aggregate(runs, by=("finetune.max_epochs",)))
    assert "Rank by accuracy at each finetune.max_epochs" in text and "| metric | 1 | 3 |" in text
    assert "| b | 2 | 1 |" in text and "| a | 1 | 2 |" in text and "| c | 3 | 3 |" in text
    # pairs (a, b) swap, (a, c) and (b, c) keep their order: (2 - 1) / 3
    assert "Kendall's tau between the rankings at finetune.max_epochs 1 and 3: 0.33 (3 metrics)" in text
    one_metric = markdown_table(aggregate([r for r in runs if r["metric"] == "a"], by=("finetune.max_epochs",)))
    assert "Rank by accuracy" not in one_metric and "Kendall" not in one_metric


def test_pairs_that_change_order_are_listed_with_their_gap_against_the_seed_spread():
    base = {"scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8, "acc_pruned": 0.3,
            "params_remaining": 0.3, "flops_remaining": 0.3}
    # per length and metric, one accuracy per seed: at 3 epochs a > b > c > d; at 6, b overtakes a by 0.2 points
    # within a 1-point spread and d overtakes c by 5 points with a spread near 0.1
    accs = {3: {"a": [0.70, 0.70, 0.70], "b": [0.69, 0.69, 0.69], "c": [0.60, 0.60, 0.60], "d": [0.50, 0.50, 0.50]},
            6: {"a": [0.720, 0.720, 0.720], "b": [0.732, 0.722, 0.712], "c": [0.600, 0.601, 0.599],
                "d": [0.650, 0.650, 0.650]}}
    runs = [dict(base, metric=m, seed=s, acc_finetuned=acc, finetune_epochs=e, **{"finetune.max_epochs": e})
            for e, by_metric in accs.items() for m, seeds in by_metric.items() for s, acc in enumerate(seeds)]
    text = markdown_table(aggregate(runs, by=("finetune.max_epochs",)))
    assert ("Pairs in a different order at finetune.max_epochs 3 and finetune.max_epochs 6: 2, of which 1 with p < "
            "0.05 at finetune.max_epochs 6 (paired t-test over the seeds; 0.1 expected by chance if none differed)") in text
    # paired differences: d - c = 5.0, 4.9, 5.1 points (std 0.10), b - a = 1.2, 0.2, -0.8 (std 1.00); p from scipy
    p_dc, p_ba = (stats.ttest_1samp(d, 0).pvalue for d in ([5.0, 4.9, 5.1], [1.2, 0.2, -0.8]))
    assert p_dc < 0.05 < p_ba
    assert f"| d | c | 5.00 | 0.10 | {p_dc:.3f} |" in text and f"| b | a | 0.20 | 1.00 | {p_ba:.3f} |" in text
    assert text.index("| d | c |") < text.index("| b | a |")  # largest gap first
    # equal accuracies are no change; of three reordered metrics only the pairs that swapped are listed
    assert order_changes({"x": 1, "y": 2}, {"x": (0.5,), "y": (0.5,)}) == []
    assert [c[:2] for c in order_changes({"x": 1, "y": 2, "z": 3}, {"x": (0.1,), "y": (0.3,), "z": (0.2,)})] \
        == [("y", "x"), ("z", "x")]
    one_seed = markdown_table(aggregate([r for r in runs if r["seed"] == 0], by=("finetune.max_epochs",)))
    assert "6: 2 (one seed: no spread to compare the gaps with):" in one_seed and "| d | c | 5.00 | - | - |" in one_seed
    unchanged = markdown_table(aggregate([r for r in runs if r["metric"] in "ac"], by=("finetune.max_epochs",)))
    assert "Every pair of metrics keeps its order from finetune.max_epochs 3 to finetune.max_epochs 6." in unchanged


def test_a_swap_that_every_seed_agrees_on_is_significant_though_within_the_seeds_spread():
    # the seeds' baselines differ by 2 points, and on every seed y now leads x, by 0.2-0.4 points
    after = {"x": (0.70, {0: 0.68, 1: 0.70, 2: 0.72}), "y": (0.703, {0: 0.682, 1: 0.703, 2: 0.724})}
    ((ahead, behind, gap, std, p),) = order_changes({"x": 1, "y": 2}, after)
    assert (ahead, behind) == ("y", "x") and gap == pytest.approx(0.003)
    assert std == pytest.approx(np.std([0.002, 0.003, 0.004], ddof=1))
    assert p == pytest.approx(stats.ttest_1samp([0.002, 0.003, 0.004], 0).pvalue) and p < 0.05
    # every seed the same difference: p 0; no per-seed accuracies, or one shared seed: no test
    assert order_changes({"x": 1, "y": 2}, {"x": (0.5, {0: 0.25, 1: 0.75}), "y": (0.75, {0: 0.5, 1: 1.0})})[0][3:] \
        == (0.0, 0.0)
    assert order_changes({"x": 1, "y": 2}, {"x": (0.70,), "y": (0.71,)})[0][3:] == (None, None)
    assert order_changes({"x": 1, "y": 2}, {"x": (0.7, {0: 0.7}), "y": (0.71, {1: 0.71})})[0][3:] == (None, None)


def test_pairwise_tests_compare_every_two_metrics_of_a_setting_seed_by_seed_as_scipy_does(tmp_path):
    base = {"scope": "layerwise", "schedule": "oneshot", "target": 0.7, "acc_baseline": 0.8, "acc_pruned": 0.3,
            "params_remaining": 0.3, "flops_remaining": 0.3}
    # b leads c by 3, 2 and 4 points; a ran seed 0 alone, so it pairs with neither
    accs = {"a": [0.9], "b": [0.63, 0.52, 0.74], "c": [0.60, 0.50, 0.70]}
    runs = [dict(base, metric=m, seed=s, acc_finetuned=acc, finetune_epochs=e, **{"finetune.max_epochs": e})
            for e in (3, 6) for m, seeds in accs.items() for s, acc in enumerate(seeds)]
    tests = pairwise_tests(aggregate(runs, by=("finetune.max_epochs",)))
    assert list(tests) == [f"layerwise, oneshot, target 0.7, max_epochs={e}" for e in (3, 6)]
    d = np.array([0.03, 0.02, 0.04])
    for pairs in tests.values():
        ((first, second, mean, std, p),) = pairs
        assert (first, second) == ("b", "c")
        assert (mean, std) == pytest.approx((d.mean(), d.std(ddof=1)))
        assert p == pytest.approx(stats.ttest_1samp(d, 0).pvalue) and p < 0.05
    sweep = tmp_path / "sweep"
    for i, run in enumerate(runs):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "results.json").write_text(json.dumps(run))
        (sweep / str(i) / "config_resolved.yaml").write_text(f"finetune:\n  max_epochs: {run['finetune.max_epochs']}\n")
    table, _ = write_report(sweep, out=tmp_path / "page", by=("finetune.max_epochs",))
    text = table.read_text()
    assert ("- layerwise, oneshot, target 0.7, max_epochs=6: 1 of 1 (0.1 expected by chance if no metric differed)"
            in text)
    assert "(page_pairwise.png)" in text and (tmp_path / "page_pairwise.png").stat().st_size > 0
    single = [r for r in runs if r["seed"] == 0]
    assert pairwise_tests(aggregate(single, by=("finetune.max_epochs",))) == {}


def test_waiting_for_a_shared_baseline_is_its_own_phase_column_not_other():
    run = {"wall_s": 100.0, "phase_s": {"baseline_wait": 30.0, "baseline_test": 5.0, "finetune": 60.0}}
    phases = grouped_phases(run)
    assert phases["waiting for a shared baseline"] == 30.0 and phases["tests"] == 5.0
    assert phases["other"] == pytest.approx(5.0)


def test_the_time_table_names_the_grouping_value_of_each_row():
    base = {"metric": "a", "scope": "layerwise", "schedule": "oneshot", "target": 0.7, "seed": 0, "acc_baseline": 0.8,
            "acc_pruned": 0.3, "acc_finetuned": 0.7, "params_remaining": 0.3, "flops_remaining": 0.3}
    runs = [dict(base, wall_s=60.0 * e, phase_s={"finetune": 60.0 * e}, **{"finetune.max_epochs": e}) for e in (3, 6)]
    text = markdown_table(aggregate(runs, by=("finetune.max_epochs",)))
    times = text[text.index("Wall time per job"):]
    assert "| metric | scope | schedule | target | finetune.max_epochs | final fine-tune | total |" in times
    assert "| a | layerwise | oneshot | 0.7 | 3 | 180.0 | 180.0 |" in times
    assert "| a | layerwise | oneshot | 0.7 | 6 | 360.0 | 360.0 |" in times


def test_the_plot_can_put_flops_on_its_x_axis_and_an_unknown_axis_fails_before_writing(tmp_path, monkeypatch):
    import matplotlib.axes
    dirs = write_sweeps(tmp_path)
    for file in tmp_path.rglob("results.json"):  # FLOPs remaining different from parameters remaining
        run = json.loads(file.read_text())
        file.write_text(json.dumps({**run, "flops_remaining": run["params_remaining"] / 2}))
    plotted, errorbar = [], matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, *args, **kwargs: plotted.append(list(x)) or errorbar(self, x, *args, **kwargs))
    table, _ = write_report(*dirs, out=tmp_path / "flops", x="flops")
    assert "![accuracy vs FLOPs](flops.png)" in table.read_text()
    assert plotted and all(np.allclose(x, [15.0, 25.0]) for x in plotted)
    with pytest.raises(ValueError, match="x must be one of"):
        write_report(*dirs, out=tmp_path / "latency", x="latency")
    assert not list(tmp_path.glob("latency*"))


def test_rows_at_one_budget_under_different_targets_are_drawn_as_bars(tmp_path, monkeypatch):
    import matplotlib.axes
    import matplotlib.figure
    dirs = write_sweeps(tmp_path)
    for file in tmp_path.rglob("results.json"):  # targets 0.5 and 0.7, every run keeping 31.8-31.9% of the FLOPs
        run = json.loads(file.read_text())
        file.write_text(json.dumps({**run, "flops_remaining": 0.318 + 0.001 * (run["target"] == 0.7)}))
    titles = []
    for owner, name in ((matplotlib.axes.Axes, "set_title"), (matplotlib.figure.Figure, "suptitle")):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda self, text, *args, _original=original, **kwargs:
                            titles.append(text) or _original(self, text, *args, **kwargs))
    pairwise = ["layerwise, oneshot, target 0.5", "layerwise, oneshot, target 0.7"]  # the heat maps' panels
    write_report(*dirs, out=tmp_path / "flops", x="flops")
    assert titles == [*pairwise, "target 0.5, 0.7: 31.8-31.9% of the FLOPs remain; mean ± std over seeds"]
    titles.clear()
    write_report(*dirs, out=tmp_path / "params", x="params")  # 50% and 30% of the parameters: a line plot
    assert titles == [*pairwise, "after fine-tuning", "right after pruning"]


def test_fine_tuned_accuracies_get_an_axis_spanning_only_them_and_the_baseline(tmp_path, monkeypatch):
    import matplotlib.axes
    limits, set_xlim = [], matplotlib.axes.Axes.set_xlim
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlim",
                        lambda self, *args, **kwargs: limits.append(args) or set_xlim(self, *args, **kwargs))
    rows = [{"metric": metric, "scope": "layerwise", "schedule": "oneshot", "target": 0.7, "by": (), "finetuned": True,
             "acc_pruned": (pruned, 0.01), "acc_finetuned": (tuned, 0.002), "acc_baseline": (0.8544, 0.0),
             "params_remaining": (0.315, 0.0)} for metric, pruned, tuned in
            (("fpgm", 0.283, 0.8208), ("l1_in", 0.207, 0.8164), ("apoz", 0.244, 0.8046))]
    assert bar_plot(rows, tmp_path / "bars.png").stat().st_size > 1000
    chosen = [args for args in limits if len(args) == 2]  # matplotlib's own autoscaling passes one sequence
    assert chosen[0] == (0, 100) and len(chosen) == 2  # bars after pruning on 0-100%, then the fine-tuned points
    low, high = chosen[1]
    assert 80.46 - 0.2 - 1 < low < 80.46 - 0.2 and 85.44 < high < 85.44 + 1  # a 1-point gap spans a fifth of it
