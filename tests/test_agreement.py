"""Kept-set agreement between calibrations: Jaccard index of top-k channel sets, per layer, against a reference."""
import json

import pytest
import torch

from infoprune.pruning.storage import save_channel_scores
from infoprune.report.agreement import agreement_table, jaccard, kept_channels, parse_reference
from infoprune.report.runs import load_runs


def test_jaccard_and_kept_channels():
    assert kept_channels(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2) == {1, 3}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard(set(), set()) == 1.0


def write_run(root, name, bins, seed, scores):
    out = root / name
    (out / "step_0").mkdir(parents=True)
    save_channel_scores(out / "step_0" / "channel_scores.pt", "mi", {"conv": torch.tensor(scores)}, None, {}, 10)
    (out / "results.json").write_text(json.dumps({"metric": "mi", "seed": seed, "channels_after": {"conv": 2}}))
    (out / "config_resolved.yaml").write_text(f"stats:\n  bins: {bins}\n")


def test_agreement_table_against_the_reference_setting(tmp_path):
    write_run(tmp_path, "ref0", 32, 0, [4.0, 3.0, 2.0, 1.0])      # keeps {0, 1}
    write_run(tmp_path, "same0", 8, 0, [9.0, 8.0, 0.0, 0.0])      # keeps {0, 1}: J = 1
    write_run(tmp_path, "half0", 128, 0, [9.0, 0.0, 8.0, 0.0])    # keeps {0, 2}: J = 1/3
    write_run(tmp_path, "orphan1", 8, 1, [1.0, 2.0, 3.0, 4.0])    # no reference for seed 1: skipped
    runs = load_runs(tmp_path, by=("stats.bins",))
    rows = agreement_table(runs, ("stats.bins",), parse_reference("stats.bins=32"))
    assert [(r["group"], r["seeds"], pytest.approx(r["mean"])) for r in rows] == [
        (("mi", 128), 1, pytest.approx(1 / 3)), (("mi", 8), 1, pytest.approx(1.0))]
    with pytest.raises(ValueError, match="no reference run"):
        agreement_table(runs, ("stats.bins",), parse_reference("stats.bins=64"))
    with pytest.raises(ValueError, match="key=value"):
        parse_reference("stats.bins")
