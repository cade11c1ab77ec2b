"""``mlflow run .`` (entry point main) end to end against a real tracking server."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
from helpers import REPO_ROOT, VENV_BIN, venv_env
from mlflow.tracking import MlflowClient


pytestmark = pytest.mark.slow


def mlflow_run(tracking_uri, experiment, tmp_path, *params, entry="main", check=True):
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO_ROOT), "-e", entry, "--env-manager", "local",
           "--experiment-name", experiment]
    for p in params:
        cmd += ["-P", p]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=venv_env(MLFLOW_TRACKING_URI=tracking_uri, MFREC_CACHE_DIR=str(tmp_path / "cache")))
    if check:
        assert proc.returncode == 0, f"mlflow run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def top_level(client, experiment_id):
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def children(client, experiment_id, parent_id):
    """A pipeline's step runs by step name (their runs are named ``<pipeline>/<step>``)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["mlflow.runName"].rsplit("/", 1)[1]: r for r in runs}


def test_two_invocations_compare_side_by_side_and_a_failure_registers_nothing(tracking_server, shared_zip, tmp_path):
    experiment = f"main-{uuid.uuid4().hex[:8]}"
    model_name = f"mfrec-{uuid.uuid4().hex[:6]}"
    client = MlflowClient(tracking_server)
    common = [f"data_path={shared_zip}", f"model_name={model_name}"]
    # Few epochs: the default model's accuracy is asserted in test_train.py on the same code.
    proc = mlflow_run(tracking_server, experiment, tmp_path, *common, "n_factors=8", "epochs=6")
    # A clean log: no Python warning (MLflow's type-hint and dataset hints were in every run).
    warned = [line for line in proc.stderr.splitlines() if "Warning" in line]
    assert not warned, proc.stderr
    assert "served model: fit on all 100,836 prepared ratings" in proc.stderr
    # The last line says where the time went, phase by phase, and the phases add up.
    line = next(line for line in proc.stderr.splitlines() if line.startswith("seconds: "))
    phases = {name.strip(" ;"): float(value) for name, value in re.findall(r"([a-z ;]+) ([\d.]+)", line[9:])}
    assert set(phases) == {"prepare", "settings search", "sweep count", "refit", "evaluate", "served refit",
                           "cluster", "register", "logging", "all"}, line
    # The rest ("logging") is what the named phases leave: never negative (no phase counted twice).
    assert all(v >= 0 for v in phases.values()) and phases["logging"] < phases["all"], line
    assert sum(v for k, v in phases.items() if k not in ("all", "logging")) <= phases["all"] + 0.5, line
    # The settings left auto are chosen on validation, and the console says so.
    assert "settings chosen on validation: reg=" in proc.stderr
    held_out = mlflow_run(tracking_server, experiment, tmp_path, *common, "n_factors=4", "epochs=4", "refit_all=false",
                          "search_trials=3", "reg=3", "rating_weight=0.2")
    assert "served model: fit on train + validation, 80,669 ratings (the held-out model" in held_out.stderr

    exp = client.get_experiment_by_name(experiment)
    first, second = top_level(client, exp.experiment_id)
    assert first.info.run_name != second.info.run_name
    for run, k in ((first, "8"), (second, "4")):
        assert run.info.status == "FINISHED"
        assert run.data.params["n_factors"] == k
        assert re.fullmatch(rf"k{k}-{'auto' if k == '8' else 'reg3'}-\d{{6}}", run.info.run_name), run.info.run_name
        for metric in ("test_rmse", "test_ndcg_at_10", "cluster_genre_purity", "train_seconds",
                       "baseline_bias_rmse", "cluster_genre_purity_shuffled", "epochs_run", "prepare_seconds",
                       "train_step_seconds", "cluster_seconds", "register_seconds", "pipeline_seconds"):
            assert metric in run.data.metrics, metric
        steps = children(client, exp.experiment_id, run.info.run_id)
        assert set(steps) == {"prepare", "train", "cluster"}
        assert all(s.info.status == "FINISHED" for s in steps.values())
        assert all(s.info.run_name == f"{run.info.run_name}/{step}" for step, s in steps.items())
        # No metric sits on both the pipeline's run and a step's: each chart shows a pipeline once.
        for step in steps.values():
            assert not set(step.data.metrics) & set(run.data.metrics), step.info.run_name
        assert "data_ratings" in steps["prepare"].data.metrics and "select_seconds" in steps["train"].data.metrics
        assert "evaluate_seconds" in steps["train"].data.metrics
        phases = [run.data.metrics[f"{p}_seconds"] for p in ("prepare", "train_step", "cluster", "register")]
        assert all(p > 0 for p in phases) and sum(phases) <= run.data.metrics["pipeline_seconds"]
        assert len(client.get_metric_history(run.info.run_id, "val_rmse")) == run.data.metrics["epochs_run"]
        assert run.data.tags["mfrec.champion_decision"]
        assert any(key.startswith("system/") for key in run.data.metrics)  # sampled every second
        assert f"test RMSE {run.data.metrics['test_rmse']:.4f}" in run.data.tags["mlflow.note.content"]
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "clusters")}
        assert {"clusters/report.md", "clusters/clusters.png"} <= artifacts
        assert {f.path for f in client.list_artifacts(run.info.run_id, "plots")} == {"plots/learning_curve.png"}
        # Dataset inputs on the pipeline's run, also when the prepared data were reused.
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"ml-latest-small-train", "ml-latest-small-val", "ml-latest-small-test"}
        # The schema the UI shows: every column, typed, none missing.
        schema = json.loads(inputs["ml-latest-small-train"].dataset.schema)["mlflow_colspec"]
        assert [(c["name"], c["type"], c["required"]) for c in schema] == [
            ("userId", "integer", True), ("movieId", "integer", True), ("rating", "float", True),
            ("timestamp", "long", True)]
    # One logged model per pipeline, on its top-level run, named for what it is.
    models = client.search_logged_models([exp.experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted([first.info.run_id, second.info.run_id])
    names = {m.name for m in models}
    assert "mfrec-k4-reg3-als-ml-latest-small" in names
    assert any(re.fullmatch(r"mfrec-k8-reg[0-9p]+-als-ml-latest-small", name) for name in names), names
    # What the search chose, where people compare runs: params, a table and the description.
    for run, searched in ((first, {"reg", "implicit_weight", "confidence", "rating_weight", "genre_weight"}),
                          (second, {"implicit_weight", "confidence", "genre_weight"})):
        chosen = {p[len("chosen_"):] for p in run.data.params if p.startswith("chosen_")}
        # The neighbour term's weight always; its reg only when the term is on.
        assert chosen - {"neighbour_reg"} == searched | {"neighbour_weight"}, chosen
        assert "search/trials.md" in {f.path for f in client.list_artifacts(run.info.run_id, "search")}
        assert "settings chosen on validation" in run.data.tags["mfrec.settings_choice"]
    assert second.data.params["chosen_implicit_weight"] and "chosen_reg" not in second.data.params
    # Each metric once on the pipeline's run (one point, not one per logging call).
    assert len(client.get_metric_history(first.info.run_id, "test_rmse")) == 1
    assert first.data.metrics["test_rmse"] < first.data.metrics["baseline_global_mean_rmse"]

    # The second invocation reused the first one's prepared data.
    first_prepare = children(client, exp.experiment_id, first.info.run_id)["prepare"]
    second_prepare = children(client, exp.experiment_id, second.info.run_id)["prepare"]
    assert "mfrec.reused_from" not in first_prepare.data.tags
    assert second_prepare.data.tags["mfrec.reused_from"] == first_prepare.info.run_id

    versions = client.search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 2
    # Each version says what the served model was fit on, with the recipe's held-out metrics.
    fit_on = {v.tags["run_id"]: v.tags["fit_on"] for v in versions}
    assert fit_on[first.info.run_id].startswith("all 100,836 prepared ratings")
    assert fit_on[second.info.run_id].startswith("train + validation, 80,669 ratings")
    for version in versions:
        run = first if version.tags["run_id"] == first.info.run_id else second
        full = client.get_model_version(model_name, version.version)
        assert f"test RMSE {run.data.metrics['test_rmse']:.4f}" in full.description
        assert version.tags["fit_on"] in full.description
    # The served model's embeddings cover every film of the ratings file (the held-out one's do not).
    import pandas as pd
    from mlflow.artifacts import download_artifacts

    n_items = {}
    for run in (first, second):
        train_run = children(client, exp.experiment_id, run.info.run_id)["train"]
        path = download_artifacts(f"runs:/{train_run.info.run_id}/embeddings/items.parquet",
                                  dst_path=str(tmp_path / run.info.run_id), tracking_uri=tracking_server)
        n_items[run.info.run_id] = len(pd.read_parquet(path))
    assert n_items[first.info.run_id] == 9724 > n_items[second.info.run_id]
    # The champion is the better ranking (champion_metric's default), and the decision says so.
    champion = client.get_model_version_by_alias(model_name, "champion")
    best = max((first, second), key=lambda r: r.data.metrics["test_ndcg_at_10"])
    assert champion.tags["run_id"] == best.info.run_id
    assert "test_ndcg_at_10" in best.data.tags["mfrec.champion_decision"]

    # A failing step fails the top-level run and registers nothing.
    failed = mlflow_run(tracking_server, experiment, tmp_path, f"data_path={tmp_path / 'nope.zip'}",
                        f"model_name={model_name}", check=False)
    assert failed.returncode != 0
    assert "nope.zip" in failed.stderr
    third = top_level(client, exp.experiment_id)[-1]
    assert third.info.status == "FAILED"
    # The reason, where people look: the run's description and a tag (the console's line).
    reason = third.data.tags["mfrec.failure"]
    assert "nope.zip" in reason and f"pipeline failed: {reason}" in failed.stderr
    assert third.data.tags["mlflow.note.content"].startswith(f"Failed: {reason}")
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 2


def test_tune_logs_every_trial_and_registers_only_the_chosen_pipeline(tracking_server, shared_zip, tmp_path):
    experiment = f"tune-{uuid.uuid4().hex[:8]}"
    model_name = f"mfrec-{uuid.uuid4().hex[:6]}"
    proc = mlflow_run(tracking_server, experiment, tmp_path, f"data_path={shared_zip}", f"model_name={model_name}",
                      "n_factors_list=8,16", "tune_trials=5", "epochs=6", entry="tune")
    client = MlflowClient(tracking_server)
    exp = client.get_experiment_by_name(experiment)
    (tune,) = top_level(client, exp.experiment_id)
    assert tune.info.status == "FINISHED" and tune.info.run_name.startswith("tune-ml-latest-small-")
    runs = {r.info.run_name.rsplit("/", 1)[1]: r for r in
            client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tune.info.run_id}'")}
    trials = {name: r for name, r in runs.items() if name.startswith("trial-")}
    assert sorted(trials) == [f"trial-{n}" for n in range(5)]
    # The first trials are the starting point at each n_factors, run to the end.
    assert {trials[f"trial-{n}"].data.params["n_factors"] for n in (0, 1)} == {"8", "16"}
    for run in trials.values():
        assert run.data.tags["mfrec.trial_state"] in ("complete", "pruned")
        assert len(client.get_metric_history(run.info.run_id, "val_ndcg_at_10")) == run.data.metrics["sweeps_run"]
    assert "final_val_ndcg_at_10" in trials["trial-0"].data.metrics
    (best,) = [r for name, r in runs.items() if name.startswith("best-")]
    k = tune.data.params["chosen_n_factors"]
    assert best.data.params["n_factors"] == k and tune.data.metrics["best_n_factors"] == float(k)
    assert best.data.params["reg"] == tune.data.params["chosen_reg"]  # run as a pipeline with the chosen values
    assert tune.data.metrics["best_test_ndcg_at_10"] == best.data.metrics["test_ndcg_at_10"]
    assert "search/trials.md" in {f.path for f in client.list_artifacts(tune.info.run_id, "search")}
    (version,) = client.search_model_versions(f"name = '{model_name}'")
    assert version.tags["run_id"] == best.info.run_id
    assert "settings chosen on validation" in proc.stderr and "(chosen)" in proc.stderr
    assert f"registered its model as version {version.version}" in proc.stderr


def test_the_readme_shared_server_section_runs_as_printed(shared_zip, tmp_path):
    """README's "A shared tracking server": its server command (paths and port moved to this
    test's), then its client commands -- pipeline, sweep, tune, serving from the registry --
    with the budgets cut (fewer trials and sweeps), and a ``recommend`` over HTTP."""
    import json
    import shlex
    import urllib.request

    from benchmarks.served import start_model_server, stop_model_server
    from helpers import free_port, stop_process, wait_http

    section = (REPO_ROOT / "README.md").read_text().split("## A shared tracking server", 1)[1].split("\n## ", 1)[0]
    server, client = (b.replace("\\\n", " ") for b in re.findall(r"```bash\n(.*?)```", section, re.S)[:2])
    port = free_port()
    words = shlex.split(server.replace("/srv/mlflow", str(tmp_path / "srv")).replace("--port 5000", f"--port {port}"))
    env = dict(kv.split("=", 1) for kv in words if re.fullmatch(r"[A-Z_]+=.*", kv))
    cmd = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
    assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd
    (tmp_path / "srv").mkdir()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "mlflow"), *cmd[1:]], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env=venv_env(**env))
    uri = f"http://127.0.0.1:{port}"
    cut = {"main": ["search_trials=3", "epochs=5"], "sweep": ["search_trials=2", "epochs=5"],
           "tune": ["tune_trials=3", "n_factors_list=4,8", "epochs=5"]}
    try:
        wait_http(f"{uri}/health", timeout=60, proc=proc)
        lines = [line.strip() for line in client.strip().splitlines()]
        assert lines[0] == "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000"
        for line in lines[1:-1]:
            words = shlex.split(line.replace("n_factors_list=8,32", "n_factors_list=4"))
            entry = words[words.index("-e") + 1] if "-e" in words else "main"
            params = [words[i + 1] for i, w in enumerate(words) if w == "-P"]
            mlflow_run(uri, "team", tmp_path, *params, f"data_path={shared_zip}", *cut[entry], entry=entry)
        serve = shlex.split(lines[-1])
        served = start_model_server(tmp_path, uri, model_uri=serve[serve.index("-m") + 1])
        try:
            body = json.dumps({"dataframe_records": [{"userId": 1}], "params": {"task": "recommend", "k": 5}}).encode()
            req = urllib.request.Request(f"{served.url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as response:
                rows = json.loads(response.read())["predictions"]
        finally:
            stop_model_server(served)
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5] and {r["userId"] for r in rows} == {1}
        client_api = MlflowClient(uri)
        versions = client_api.search_model_versions("name = 'mfrec'")
        assert len(versions) == 3  # the pipeline, the sweep's best child, tune's chosen pipeline
    finally:
        stop_process(proc, timeout=15)
        log.close()


def test_pipelines_side_by_side_into_one_sqlite_file(tmp_path):
    """Three pipelines at once into one sqlite file whose tables and experiment were created
    first (README: ``mlflow db upgrade``, ``mlflow experiments create``: ``mlflow run`` looks
    an experiment name up and creates it when missing, and three first runs at once race to
    create it); a relative sqlite URI from another folder is refused up front."""
    db = tmp_path / "mlflow.db"
    subprocess.run([str(VENV_BIN / "mlflow"), "db", "upgrade", f"sqlite:///{db}"], check=True, capture_output=True,
                   env=venv_env())
    subprocess.run([str(VENV_BIN / "mlflow"), "experiments", "create", "--experiment-name", "side"], check=True,
                   capture_output=True, env=venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}"))
    cmd = [str(VENV_BIN / "mlflow"), "run", str(REPO_ROOT), "--env-manager", "local", "--experiment-name", "side",
           "-P", "dataset=synthetic-3k", "-P", "search_trials=1", "-P", "epochs=3", "-P", "n_clusters=3"]
    procs = [subprocess.Popen(cmd + ["-P", f"seed={seed}"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}"))
             for seed in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    # A failure shows each failed run's first traceback, not the tail other output buries it under.
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(
        err[err.find("Traceback"):][:4000] for (_, err), p in zip(outs, procs) if p.returncode)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("side")
    tops = top_level(client, exp.experiment_id)
    assert len(tops) == 3 and {r.info.status for r in tops} == {"FINISHED"}
    assert len(client.search_model_versions("name = 'mfrec'")) == 3

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, timeout=300,
                             env=venv_env(MLFLOW_TRACKING_URI="sqlite:///mlflow.db"))
    assert refused.returncode != 0
    assert "is a relative path" in refused.stderr and "sqlite:////abs/path/mlflow.db" in refused.stderr
