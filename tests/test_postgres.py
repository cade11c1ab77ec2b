"""A team's tracking server on PostgreSQL (pgserver: a PostgreSQL that pip installs and starts
in about a second): a pipeline runs against it and registers its model there (serving from a
server's registry: tests/test_pipeline.py)."""

from __future__ import annotations

import subprocess

import pytest
from helpers import REPO_ROOT, VENV_BIN, free_port, stop_process, venv_env, wait_http
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_pipeline_against_a_postgresql_backed_server(tmp_path):
    pgserver = pytest.importorskip("pgserver", reason="pip install -e '.[test]' brings pgserver")
    pytest.importorskip("psycopg2", reason="MLflow's PostgreSQL store needs psycopg2")

    db = pgserver.get_server(str(tmp_path / "pg"), cleanup_mode="stop")
    try:
        db.psql("CREATE DATABASE mlflow;")
        port = free_port()
        log = open(tmp_path / "server.log", "wb")
        server = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             # psycopg2 named: SQLAlchemy's default PostgreSQL driver is psycopg 3, not installed here
             "--backend-store-uri", db.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1),
             "--serve-artifacts",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env=venv_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{uri}/health", timeout=90, proc=server)
            done = subprocess.run(
                [str(VENV_BIN / "mlflow"), "run", str(REPO_ROOT), "--env-manager", "local", "--experiment-name", "pg",
                 "-P", "dataset=synthetic-3k", "-P", "search_trials=2", "-P", "epochs=4", "-P", "n_clusters=3"],
                cwd=tmp_path, capture_output=True, text=True, timeout=600, env=venv_env(MLFLOW_TRACKING_URI=uri))
            assert done.returncode == 0, done.stderr[-3000:]
            client = MlflowClient(uri)
            (version,) = client.search_model_versions("name = 'mfrec'")
            assert version.tags["champion_decision"].startswith("promoted")
        finally:
            stop_process(server, timeout=15)
            log.close()
    finally:
        db.cleanup()
