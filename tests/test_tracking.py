"""MLflow logging helpers (mfrec/tracking.py) against a real sqlite tracking store."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
import pandas as pd
from mlflow.tracking import MlflowClient

from mfrec import registry, tracking
from mfrec.errors import ConfigError


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
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import mfrec.serving.pyfunc"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> list:
        return [0.0] * len(model_input)


def test_the_champion_is_challenged_only_on_the_same_prepared_data(tmp_path, monkeypatch):
    """A held-out figure on another split (seed, method, fractions) or dataset measures another
    test set: such a model is registered but does not take the alias, however good its figure.
    The metric compared is ``champion_metric``: NDCG@10 by default (higher wins), RMSE on request
    (lower wins); the decision names it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        uri = mlflow.pyfunc.log_model(name="m", python_model=_Constant(), pip_requirements=["mlflow"]).model_uri

    def challenge(rmse, ndcg, key, **kw):
        return registry.register(uri, "mfrec", {"test_rmse": rmse, "test_ndcg_at_10": ndcg}, key, run.info.run_id,
                                 data_sha256="d", **kw)

    assert challenge(0.90, 0.25, "split-A")["decision"] == "promoted: no champion yet (test_ndcg_at_10 0.2500)"
    assert challenge(0.85, 0.24, "split-A")["decision"] == \
        "kept champion: test_ndcg_at_10 0.2400 <= champion v1's 0.2500"
    assert challenge(0.95, 0.24, "split-A", metric="test_rmse")["decision"] == \
        "kept champion: test_rmse 0.9500 >= champion v1's 0.9000"
    other = challenge(0.50, 0.50, "split-B")  # e.g. seed=2: better figures on an easier test set
    assert not other["promoted"] and "other prepared data" in other["decision"]
    assert challenge(0.95, 0.26, "split-A")["promoted"]
    champion = client.get_model_version_by_alias("mfrec", "champion")
    assert str(champion.version) == "5" and champion.tags["prepare_key"] == "split-A"
    assert champion.tags["champion_metric"] == "test_ndcg_at_10"
    assert client.get_model_version("mfrec", "4").tags["champion_decision"] == other["decision"]
    unmeasured = challenge(float("nan"), 0.9, "split-A", metric="test_rmse")  # implicit feedback: no RMSE
    assert not unmeasured["promoted"] and "not measured" in unmeasured["decision"]
    client.delete_model_version_tag("mfrec", "5", "prepare_key")  # as an older mfrec registered it
    legacy = challenge(0.10, 0.9, "split-A")
    assert not legacy["promoted"] and "no prepare_key tag" in legacy["decision"]
    with pytest.raises(ConfigError, match="champion_metric"):
        challenge(0.1, 0.9, "split-A", metric="accuracy")


def test_pipelines_registering_at_once_leave_the_best_as_champion(tmp_path, monkeypatch):
    """Registrations at once (pipelines side by side into one store) race to create and move
    the alias: none fails, and the alias ends on the best figure, whose version says promoted."""
    import threading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        uri = mlflow.pyfunc.log_model(name="m", python_model=_Constant(), pip_requirements=["mlflow"]).model_uri
    registry.register(uri, "mfrec", {}, "", run.info.run_id)  # the registered model exists; no alias yet
    for rounds in range(3):  # the best figure starts at another place among the threads each round
        if rounds:
            client.delete_registered_model_alias("mfrec", "champion")
        figures = [0.30 + 0.01 * ((7 * i + rounds) % 8) for i in range(8)]
        start, results, errors = threading.Barrier(len(figures)), {}, []

        def challenge(ndcg):
            start.wait()
            try:
                results[ndcg] = registry.register(uri, "mfrec", {"test_ndcg_at_10": ndcg}, "split-A", run.info.run_id)
            except Exception as error:  # noqa: BLE001 -- collected: a thread's exception would be lost
                errors.append(error)

        threads = [threading.Thread(target=challenge, args=(f,)) for f in figures]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        best = results[max(figures)]
        champion = client.get_model_version_by_alias("mfrec", "champion")
        assert int(champion.version) == best["version"] and best["promoted"], [r["decision"] for r in results.values()]
    assert [m.name for m in client.search_registered_models()] == ["mfrec"]  # the lock is gone

    client.create_registered_model("mfrec_champion_lock")  # as a pipeline killed mid-registration leaves it
    monkeypatch.setattr(registry, "LOCK_WAIT_S", 0.5)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"'mfrec_champion_lock' \(a lock\).*delete it"):
        registry.register(uri, "mfrec", {"test_ndcg_at_10": 0.5}, "split-A", run.info.run_id)
    monkeypatch.setattr(registry, "LOCK_STALE_S", 0.0)  # seen held long enough to be taken for a dead holder's
    assert registry.register(uri, "mfrec", {"test_ndcg_at_10": 0.5}, "split-A", run.info.run_id)["promoted"]
    assert [m.name for m in client.search_registered_models()] == ["mfrec"]
    # A holder whose lock was taken over does not release the next holder's.
    with registry.champion_lock(client, "mfrec"):
        registry._release(client, "mfrec_champion_lock", "an-earlier-holder")
        assert client.get_registered_model("mfrec_champion_lock").tags["owner"]
    assert [m.name for m in client.search_registered_models()] == ["mfrec"]


def test_a_cpu_torch_index_goes_into_the_logged_requirements(tmp_path, monkeypatch, trained_small):
    """MFREC_TORCH_INDEX_URL makes the logged model ask for that index's torch build (what
    `mlflow models build-docker` and virtualenv/uv environments then install)."""
    from mfrec.registry import log_pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    trained_small.recommender.save(tmp_path / "bundle")
    client = MlflowClient()
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    logged = {}
    for index in ("", "https://download.pytorch.org/whl/cpu"):
        monkeypatch.setenv("MFREC_TORCH_INDEX_URL", index)
        with mlflow.start_run(experiment_id=experiment):
            info = log_pyfunc(tmp_path / "bundle")
        logged[index] = open(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read().splitlines()
    torch_version = __import__("torch").__version__.split("+")[0]
    assert f"torch=={torch_version}" in logged[""] and not any(line.startswith("--") for line in logged[""])
    cpu = logged["https://download.pytorch.org/whl/cpu"]
    assert cpu[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert f"torch=={torch_version}+cpu" in cpu
