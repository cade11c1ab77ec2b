"""``mlflow run . -e prepare`` end to end against a real tracking server, including reuse."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from helpers import REPO_ROOT, VENV_BIN, venv_env
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def mlflow_run(tracking_uri, experiment, data_path, tmp_path, *params):
    cmd = [str(VENV_BIN / "mlflow"), "run", ".", "-e", "prepare", "--env-manager", "local",
           "--experiment-name", experiment, "-P", f"data_path={data_path}"]
    for p in params:
        cmd += ["-P", p]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
        env=venv_env(MLFLOW_TRACKING_URI=tracking_uri, MFREC_CACHE_DIR=str(tmp_path / "cache")),
    )
    assert proc.returncode == 0, f"mlflow run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # The entry point prints the URI last; `mlflow run` itself may append "View run" links.
    return [line for line in proc.stdout.splitlines() if line.startswith("runs:/")][-1]


def test_prepare_entry_point_logs_and_reuses(tracking_server, shared_zip, tmp_path):
    experiment = f"prepare-test-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_server)

    first_uri = mlflow_run(tracking_server, experiment, shared_zip, tmp_path)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "prepare-ml-latest-small-random-s0"  # not a random name
    assert first_uri == f"runs:/{run_id}/prepared" == run.data.tags["mfrec.prepared_uri"]
    assert "mfrec.reused_from" not in run.data.tags
    assert run.data.params["data_path"] == str(shared_zip)
    assert run.data.metrics["data_ratings"] == 100_836 and run.data.metrics["data_users"] == 610

    inputs = run.inputs.dataset_inputs
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                for i in inputs}
    assert sorted(contexts) == ["test", "training", "validation"]
    assert contexts["training"].name == "ml-latest-small-train"
    assert json.loads(contexts["test"].profile)["num_rows"] == 20_167

    names = {f.path for f in client.list_artifacts(run_id, "prepared")}
    assert {"prepared/manifest.json", "prepared/train.parquet", "prepared/val.parquet",
            "prepared/test.parquet", "prepared/movies.parquet"} <= names
    local = client.download_artifacts(run_id, "prepared/manifest.json", str(tmp_path))
    manifest = json.loads(open(local).read())
    assert manifest["counts"]["ratings"] == 100_836 and manifest["counts"]["users"] == 610
    assert manifest["counts"]["rated_movies"] == 9_724
    assert run.data.tags["mfrec.prepare_key"] == manifest["prepare_key"]

    # Same data and split again: reused, not redone.
    second_uri = mlflow_run(tracking_server, experiment, shared_zip, tmp_path)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2
    again = runs[0]
    assert again.info.status == "FINISHED"
    assert again.data.tags["mfrec.reused_from"] == run_id
    assert second_uri == first_uri == again.data.tags["mfrec.prepared_uri"]
    assert not client.list_artifacts(again.info.run_id, "prepared")


def run_python(args, tracking_uri, experiment, tmp_path):
    return subprocess.run(
        [str(VENV_BIN / "python"), *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120,
        env=venv_env(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_EXPERIMENT_NAME=experiment,
                     MFREC_CACHE_DIR=str(tmp_path / "cache")),
    )


def test_cli_output_json_failure_and_nested_use(tracking_server, tmp_path):
    experiment = f"prepare-cli-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_server)
    out = tmp_path / "result.json"
    proc = run_python(["-m", "entrypoints.prepare", "--dataset", "synthetic-20k", "--data_path",
                       "", "--test_fraction", "0.25", "--output-json", str(out)],
                      tracking_server, experiment, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"run_id", "prepared_uri", "reused_from", "manifest"}
    assert result["reused_from"] is None and result["manifest"]["counts"]["ratings"] == 20_000
    assert proc.stdout.strip().splitlines()[-1] == result["prepared_uri"]
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["test_fraction"] == "0.25"  # logged exactly as received

    # A bad parameter: clear message, non-zero exit, the run marked FAILED.
    proc = run_python(["-m", "entrypoints.prepare", "--split", "sideways"],
                      tracking_server, experiment, tmp_path)
    assert proc.returncode == 1 and "split must be one of random, temporal" in proc.stderr
    exp = client.get_experiment_by_name(experiment)
    latest = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert latest.info.status == "FAILED"

    # As `main` calls it: inside a nested run, reusing the CLI run's preparation.
    script = (
        "import json, mlflow\n"
        "from entrypoints.prepare import run_prepare\n"
        "from mfrec.data.prepare import PrepareConfig\n"
        "from mfrec.data.split import SplitConfig\n"
        "with mlflow.start_run(run_name='pipeline'):\n"
        "    with mlflow.start_run(run_name='prepare', nested=True):\n"
        "        r = run_prepare(PrepareConfig('synthetic-20k', split=SplitConfig(test_fraction=0.25)),"
        " progress=False)\n"
        "print(json.dumps({'run_id': r['run_id'], 'reused_from': r['reused_from']}))\n"
    )
    proc = run_python(["-c", script], tracking_server, experiment, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nested = json.loads(proc.stdout.strip().splitlines()[-1])
    assert nested["reused_from"] == result["run_id"]
    child = client.get_run(nested["run_id"])
    assert child.data.tags["mlflow.parentRunId"]
    assert child.data.params["dataset"] == "synthetic-20k"
    assert child.data.tags["mfrec.prepared_uri"] == result["prepared_uri"]
