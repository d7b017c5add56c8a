"""The CSV logger keeps what an interrupted run logged when the run resumes in the same directory."""
import csv

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
