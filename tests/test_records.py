"""Run records: which files are records, copying them without losing anything, and reading the copies back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from infoprune.records import copy_records, main, record_files
from infoprune.report.runs import load_runs


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def logs(tmp_path) -> Path:
    """A sweep with one finished and one unfinished job, a sensitivity table, and a baseline cache with one
    finished and one interrupted entry."""
    root = tmp_path / "logs"
    for name in ("results.json", "config_resolved.yaml", "overrides.yaml", "csv/metrics.csv", "final.ckpt"):
        write(root / "sweep" / "0" / name, json.dumps({"metric": "mi", "acc_finetuned": 0.5}) if
              name == "results.json" else "finetune:\n  max_epochs: 3\n")
    write(root / "sweep" / "1" / "overrides.yaml", "- pruning/metric=l1_in\n")  # unfinished
    write(root / "table" / "sensitivity.csv", "group,ratio,val_acc\n")
    for name in ("baseline-ab.ckpt", "baseline-ab.json", "baseline-cd.lock", "baseline-cd.partial/last.ckpt",
                 "baseline-cd.partial/baseline-x.ckpt"):
        write(root / "baselines" / name, name)
    return root


def test_records_are_finished_jobs_and_finished_baselines_only(logs):
    assert [str(f) for f in record_files(logs)] == [
        "baselines/baseline-ab.ckpt", "baselines/baseline-ab.json", "sweep/0/config_resolved.yaml",
        "sweep/0/overrides.yaml", "sweep/0/results.json", "table/sensitivity.csv"]


def test_copied_records_report_like_the_originals_and_a_second_copy_changes_nothing(logs, tmp_path, capsys):
    published = tmp_path / "published"
    main([str(logs), str(published)])
    assert "6 record file(s) copied" in capsys.readouterr().out
    assert sorted(str(f.relative_to(published)) for f in published.rglob("*") if f.is_file()) == [
        str(f) for f in record_files(logs)]
    original, copy = load_runs(logs / "sweep", by=("finetune.max_epochs",)), load_runs(published / "sweep",
                                                                                       by=("finetune.max_epochs",))
    assert [{k: v for k, v in r.items() if k != "run_dir"} for r in copy] == [
        {k: v for k, v in r.items() if k != "run_dir"} for r in original]
    assert copy_records(published, logs) == {"copied": 0, "unchanged": 6}


def test_a_differing_record_at_the_target_stops_the_copy_before_any_file_is_written(logs, tmp_path):
    target = tmp_path / "target"
    write(target / "sweep" / "0" / "results.json", "{}")
    with pytest.raises(FileExistsError, match=r"1 record\(s\) under .* differ.*results.json; nothing was copied"):
        copy_records(logs, target)
    assert [str(f.relative_to(target)) for f in target.rglob("*") if f.is_file()] == ["sweep/0/results.json"]
    assert (target / "sweep" / "0" / "results.json").read_text() == "{}"


def test_a_directory_without_records_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished job"):
        copy_records(tmp_path, tmp_path / "target")
