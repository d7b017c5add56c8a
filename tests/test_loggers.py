"""The CSV logger keeps what an interrupted run logged when the run resumes in the same directory."""
import csv

import pytest

from infoprune.loggers import ResumableCSVLogger


def log_rows(save_dir, rows: list[dict]) -> None:
    logger = ResumableCSVLogger(save_dir=save_dir, name="csv", version="")
    for step, row in enumerate(rows):
        logger.log_metrics(row, step=step)
    logger.save()


def test_a_rerun_appends_to_the_metrics_file_and_widens_its_columns(tmp_path):
    log_rows(tmp_path, [{"val/acc": 0.5}, {"val/acc": 0.6}])
    log_rows(tmp_path, [{"val/acc": 0.7, "test/acc": 0.65}])
    with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["val/acc"] for row in rows] == ["0.5", "0.6", "0.7"]
    assert [row["test/acc"] for row in rows] == ["", "", "0.65"]


def test_tensorboard_gets_the_summary_the_score_histograms_and_the_channels_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from infoprune.pipeline import prune
    from tests.conftest import compose_config
    from tests.test_prune import QUICK

    overrides = [o for o in QUICK if o != "logger=none"] + ["logger=tensorboard", "trainer.max_epochs=1",
                                                             "pruning/metric=mi", "pruning.target=0.5"]
    results = prune(compose_config("prune", overrides, tmp_path / "run"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()  # TensorBoard's own reader of the event files
    tags = events.Tags()
    assert events.Scalars("summary/acc_finetuned")[-1].value == pytest.approx(results["acc_finetuned"], abs=1e-6)
    assert events.Scalars("summary/params_remaining")[-1].value == pytest.approx(results["params_remaining"])
    assert {"train/loss", "val/acc", "model/params"} <= set(tags["scalars"])  # per-epoch curves, as every logger gets
    histogram = events.Histograms("scores/step_0/features.0.conv")[0].histogram_value
    assert histogram.num == results["channels_before"]["features.0.conv"]  # one value per channel
    table = events.Tensors("pruning/channels/text_summary")[0].tensor_proto.string_val[0].decode()
    after = results["channels_after"]["features.0.conv"]
    assert f"| features.0.conv | {results['channels_before']['features.0.conv']} | {after} |" in table
