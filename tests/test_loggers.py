"""The loggers: the CSV logger keeps what an interrupted run logged when the run resumes in the same directory;
TensorBoard and MLflow get what W&B gets, read back with their own readers."""
import csv
import json

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


def test_mlflow_store_gets_the_curves_the_summary_the_channels_table_scores_and_record(tmp_path):
    from mlflow.tracking import MlflowClient

    from infoprune.pipeline import prune
    from tests.conftest import compose_config
    from tests.test_prune import QUICK

    overrides = [o for o in QUICK if o != "logger=none"] + ["logger=mlflow", "trainer.max_epochs=1",
                                                             "pruning/metric=mi", "pruning.target=0.5"]
    results = prune(compose_config("prune", overrides, tmp_path / "run"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'logs' / 'mlflow.db'}")  # MLflow's reader
    (run,) = client.search_runs([client.get_experiment_by_name("prune").experiment_id])
    assert run.data.metrics["summary/acc_finetuned"] == pytest.approx(results["acc_finetuned"], abs=1e-6)
    assert run.data.params["pruning.target"] == "0.5" and run.data.tags["dev"] == "true"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) >= 2  # baseline's and fine-tune's epochs
    channels = (tmp_path / "channels").mkdir() or client.download_artifacts(run.info.run_id, "pruning/channels.csv",
                                                                            str(tmp_path / "channels"))
    with open(channels, newline="") as file:
        rows = {row["layer"]: row for row in csv.DictReader(file)}
    assert int(rows["features.0.conv"]["after"]) == results["channels_after"]["features.0.conv"]
    scores = json.loads(open(client.download_artifacts(run.info.run_id, "scores/step_0.json", str(tmp_path))).read())
    assert len(scores["features.0.conv"]) == results["channels_before"]["features.0.conv"]
    record = json.loads(open(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))).read())
    assert record == results


def log_one_metric(database: str, value: float) -> None:
    """One job of a sweep: opens the store, logs ``m = value`` and closes its run."""
    from infoprune.loggers import mlflow_logger

    logger = mlflow_logger(f"sqlite:///{database}", "x", tags=["t"])
    logger.log_metrics({"m": value}, step=0)
    logger.finalize("success")


def test_parallel_jobs_opening_a_new_mlflow_store_all_get_their_run(tmp_path):
    import multiprocessing

    from mlflow.tracking import MlflowClient

    database = tmp_path / "store" / "mlflow.db"
    jobs = [multiprocessing.get_context("fork").Process(target=log_one_metric, args=(str(database), float(i)))
            for i in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0]

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert sorted(run.data.metrics["m"] for run in runs) == [0.0, 1.0]
