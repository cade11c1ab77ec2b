"""Pipeline runs as processes: a killed run ends FAILED and registers nothing; the sweep."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, venv_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def pipeline(tmp_path, uri, *args):
    return subprocess.Popen([sys.executable, "-m", "entrypoints.main", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=venv_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO_ROOT)))


def test_terminated_training_fails_the_run_and_registers_nothing(shared_zip, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = pipeline(tmp_path, uri, "--data-path", str(shared_zip), "--epochs", "40")
    client = MlflowClient(uri)
    deadline = time.monotonic() + 300
    training = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            runs = client.search_runs(["0"], filter_string="tags.mlflow.runName LIKE '%/train'")
            tops = [r for r in client.search_runs(["0"], filter_string="tags.mlflow.runName LIKE 'k8-%'")
                    if "mlflow.parentRunId" not in r.data.tags]
        except Exception:  # noqa: BLE001 - the store may not exist yet
            runs = tops = []
        # The pipeline's run carries the epochs' metrics.
        if runs and tops and client.get_metric_history(tops[0].info.run_id, "val_rmse"):
            training = runs[0]
            break
        time.sleep(0.2)
    assert training is not None, "training never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0

    runs = {r.data.tags.get("mlflow.runName").rsplit("/", 1)[-1]: r for r in client.search_runs(["0"])}
    assert runs["train"].info.status == "FAILED"
    top = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in top] == ["FAILED"]
    assert top[0].data.tags["mfrec.failure"] == "terminated (SIGTERM) before the run finished"
    assert client.search_registered_models() == []

    # The next run succeeds, reusing the prepared data of the interrupted one.
    again = pipeline(tmp_path, uri, "--data-path", str(shared_zip), "--epochs", "2")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    versions = client.search_model_versions("name = 'mfrec'")
    assert len(versions) == 1
    prepares = client.search_runs(["0"], filter_string="tags.mlflow.runName LIKE '%/prepare'",
                                  order_by=["attributes.start_time DESC"])
    assert prepares[0].data.tags["mfrec.reused_from"] == prepares[1].info.run_id


def test_sweep_runs_one_child_pipeline_per_factor_count(shared_zip, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "entrypoints.sweep", "--data-path", str(shared_zip),
                           "--n-factors-list", "2,3", "--epochs", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=venv_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs(["0"])
    (sweep,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sweep.info.status == "FINISHED" and sweep.data.params["n_factors_list"] == "2,3"
    assert re.fullmatch(r"sweep-k2-3-auto-\d{6}", sweep.info.run_name), sweep.info.run_name  # like a pipeline's
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.data.params["n_factors"] for r in children) == ["2", "3"]
    assert all("test_ndcg_at_10" in r.data.metrics and "cluster_genre_purity" in r.data.metrics for r in children)
    # The sweep's own run: the best k by validation, its table and plot; one version registered.
    assert sweep.data.metrics["best_n_factors"] == float(sweep.data.tags["mfrec.best_n_factors"])
    assert {f.path for f in client.list_artifacts(sweep.info.run_id, "sweep")} == {
        "sweep/results.md", "sweep/metrics_by_n_factors.png"}
    (version,) = client.search_model_versions("name = 'mfrec'")
    assert version.tags["run_id"] in {r.info.run_id for r in children}
    assert sweep.data.tags["mfrec.registered_version"] == str(version.version)
    assert f"registered its model as version {version.version}" in proc.stderr
    assert any(key.startswith("system/") for key in sweep.data.metrics)
    assert f"version {version.version}" in sweep.data.tags["mlflow.note.content"]
    assert len(sweep.inputs.dataset_inputs) == 3
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-m", "entrypoints.sweep", "--n-factors-list", "2,x"], cwd=tmp_path,
                       capture_output=True, check=True, timeout=120,
                       env=venv_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO_ROOT)))


def test_a_failing_entry_point_run_fails_its_whole_tree(tmp_path):
    """SIGTERM can land between MLflow popping a nested run and marking it terminated; the
    entry point's run then cleans up: every run of its tree still RUNNING ends FAILED, in
    whichever experiment it was created (a nested run goes to the current experiment, not
    necessarily its parent's), and the SIGTERM handler is put back."""
    import mlflow

    from mfrec.tracking import top_level_run
    from benchmarks.served import mlflow_uris

    saved = signal.getsignal(signal.SIGTERM)
    with mlflow_uris(f"sqlite:///{tmp_path / 'mlflow.db'}"), contextlib.ExitStack() as restore:
        restore.callback(signal.signal, signal.SIGTERM, saved)
        client = mlflow.MlflowClient()
        elsewhere = client.create_experiment("elsewhere")
        with pytest.raises(SystemExit):
            with top_level_run(run_name="pipeline") as top:
                with mlflow.start_run(run_name="done", nested=True):
                    pass
                # As left by the race: a child (and its own child) never marked terminated.
                orphan = client.create_run(top.info.experiment_id, tags={"mlflow.parentRunId": top.info.run_id})
                client.create_run(elsewhere, tags={"mlflow.parentRunId": orphan.info.run_id})
                raise SystemExit(143)
        assert signal.getsignal(signal.SIGTERM) is saved
        runs = client.search_runs([top.info.experiment_id, elsewhere])
        status = {r.info.run_name if r.info.run_name in ("pipeline", "done") else r.info.run_id: r.info.status
                  for r in runs}
        assert status.pop("pipeline") == "FAILED" and status.pop("done") == "FINISHED"
        assert list(status.values()) == ["FAILED", "FAILED"]


def test_sigterm_waits_for_a_database_call_to_return():
    """A SIGTERM landing inside a SQLAlchemy query (here: sent by a SQL function the query
    calls) exits once the query has returned, not from its middle, which left sqlite locked
    and the runs RUNNING."""
    import os

    import sqlalchemy

    from mfrec.tracking import fail_on_termination

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGALRM)}
    engine = sqlalchemy.create_engine("sqlite://")

    @sqlalchemy.event.listens_for(engine, "connect")
    def _add_function(connection, _record):
        connection.create_function("terminate", 0, lambda: os.kill(os.getpid(), signal.SIGTERM) or 7)

    returned = []
    try:
        fail_on_termination()
        with pytest.raises(SystemExit) as exited:
            with engine.connect() as connection:
                returned.append(connection.execute(sqlalchemy.text("select terminate()")).scalar())
            time.sleep(5)  # the deferred exit comes here, within 50 ms
        assert exited.value.code == 143
        assert returned == [7]  # the query finished before the exit
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        engine.dispose()


def test_bad_parameters_of_any_step_fail_before_the_first_step(shared_zip, tmp_path):
    """A bad cluster or training parameter is refused before anything is prepared or trained
    (it surfaced after training before), the run ends FAILED; a misspelt parameter is refused
    (argparse read `--n_factor` as `--n_factors` before)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for bad, message in ((["--n-clusters", "0"], "n_clusters must be >= 2, got 0"),
                         (["--n-factors", "0"], "n_factors must be >= 1, got 0")):
        proc = pipeline(tmp_path, uri, "--data-path", str(shared_zip), *bad)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and f"pipeline failed: {message}" in err, err
    runs = MlflowClient(uri).search_runs(["0"])
    assert sorted(r.info.run_name.split("-")[0] for r in runs) == ["k0", "k8"]
    assert {r.info.status for r in runs} == {"FAILED"}  # and no prepare/train/cluster child runs
    assert {r.data.tags["mfrec.failure"] for r in runs} == {"n_clusters must be >= 2, got 0",
                                                           "n_factors must be >= 1, got 0"}
    proc = pipeline(tmp_path, uri, "--data-path", str(shared_zip), "--n_factor", "16")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --n_factor 16" in err
