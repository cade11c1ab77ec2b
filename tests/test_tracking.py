"""MLflow logging helpers (mfrec/tracking.py) against a real sqlite tracking store."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from mfrec import tracking


def test_epoch_metrics_arrive_in_batches_with_their_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    batched = tracking.EpochMetrics(run_id, interval=float("inf"), tracking_uri=uri)
    for epoch in range(1, 1201):  # more than one log_batch call (1000 metrics each) on flush
        batched({"epoch": epoch, "train_loss": 1.0 / epoch})
    assert client.get_metric_history(run_id, "train_loss") == []  # nothing written yet
    batched.flush()
    history = sorted(client.get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 1201))
    assert history[9].value == 0.1
    live = tracking.EpochMetrics(run_id, interval=0.0, tracking_uri=uri)  # every epoch written as it ends
    live({"epoch": 1, "val_rmse": 0.9})
    assert [m.value for m in client.get_metric_history(run_id, "val_rmse")] == [0.9]


def test_importing_the_pyfunc_model_prints_no_warning():
    """MLflow warns about a PythonModel.predict without type hints, in every `mlflow run` and
    every server's log; the hint it gets (pd.DataFrame) is one it infers nothing from."""
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import mfrec.tracking"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
