"""REST latency and throughput of a served model, next to MLflow's own cost.

:func:`rest_benchmark` serves the recommender and an identity pyfunc (returns its input) in
turn with ``mlflow models serve`` and load-tests ``recommend`` (one known user, k=10) on each:
the identity model's figures are MLflow's own cost (HTTP, JSON, schema enforcement, pandas).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import json
import mlflow
import numpy as np

from benchmarks import served as fixture
from benchmarks.machine import load_average
from mfrec import registry

CONCURRENCY = (1, 4)

# A pyfunc that returns its input: what MLflow's server costs without any model work.
IDENTITY_MODEL = '''\
import mlflow
from mlflow.pyfunc import PythonModel


class Identity(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Identity())
'''


def recommend_bodies(user_ids: Sequence[int], k: int = 10) -> list[bytes]:
    """One ``recommend`` request body per user (one user each)."""
    return [json.dumps({"dataframe_records": [{"userId": int(u)}],
                        "params": {"task": "recommend", "k": int(k)}}).encode() for u in user_ids]


def load_test(url: str, bodies: Sequence[bytes], n_requests: int, concurrency: int = 1,
              warmup: int = 20, timeout: float = 60.0) -> dict:
    """POST ``bodies`` (cycled) to ``url`` from ``concurrency`` threads, each on a keep-alive
    connection; ``n_requests`` in all after ``warmup`` untimed ones.

    Latency is per request (send to full response read); requests/s is ``n_requests`` over the
    wall time of the timed phase. Non-200 answers count as errors (and are timed).
    """
    if n_requests < 1 or concurrency < 1 or not bodies:
        raise ValueError("load_test needs n_requests >= 1, concurrency >= 1 and at least one body")
    parts = urlsplit(url)
    path = parts.path or "/"
    headers = {"Content-Type": "application/json"}

    def post(conn, body):
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def connect():
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    conn = connect()
    try:
        for i in range(warmup):
            post(conn, bodies[i % len(bodies)])
    finally:
        conn.close()

    latencies = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    shares = [n_requests // concurrency + (1 if t < n_requests % concurrency else 0) for t in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    failures = []

    def worker(t):
        conn = connect()
        try:
            barrier.wait()
            for j in range(shares[t]):
                body = bodies[(t + j * concurrency) % len(bodies)]
                t0 = time.perf_counter()
                try:
                    status = post(conn, body)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = connect()
                    status = -1
                latencies[t].append(time.perf_counter() - t0)
                if status != 200:
                    errors[t] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    barrier.wait()
    started = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"load test client failed: {failures[0]!r}")
    lat = np.array([x for part in latencies for x in part]) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": int(len(lat)),
        "errors": int(sum(errors)),
        "wall_seconds": wall,
        "requests_per_second": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
    }


def rest_benchmark(recommender, root: Path, n_requests: int, concurrency=CONCURRENCY, seed: int = 0,
                   n_users: int = 500, workers=(1,)) -> dict:
    """Serve the recommender and an identity pyfunc in turn; load-test ``recommend`` on each.

    Both get the same bodies (one known user each, ``task=recommend``, ``k=10``) and the same
    signature, so the identity model's figures are MLflow's own cost (HTTP, JSON, schema
    enforcement, pandas) and the difference is ours.
    """
    with _outside_any_run():
        return _rest_benchmark(recommender, root, n_requests, concurrency, seed, n_users, workers)


@contextlib.contextmanager
def _outside_any_run():
    """Hide ``mlflow run``'s run and experiment from MLflow while the REST part logs models
    into its own sqlite stores (``start_run`` would otherwise try to resume that run there)."""
    keys = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    saved = {k: os.environ.pop(k) for k in keys if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _rest_benchmark(recommender, root: Path, n_requests: int, concurrency, seed: int, n_users: int,
                    workers) -> dict:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = rng.choice(recommender.user_index.ids, size=min(n_users, len(recommender.user_index)), replace=False)
    bodies = recommend_bodies(users, k=10)
    warmup = min(50, max(5, n_requests // 20))
    out = {"requests_per_run": n_requests, "warmup": warmup, "distinct_users": int(len(users)),
           "server": "mlflow models serve --env-manager local -w WORKERS (uvicorn worker processes)",
           "client": "same machine, one http.client keep-alive connection per client thread"}

    (root / "mfrec").mkdir(exist_ok=True)
    uri = fixture.register_recommender(recommender, root / "mfrec")
    identity_uri, identity_model = _log_identity(root / "identity")
    for name, store, model_uri in (("mfrec", uri, fixture.CHAMPION_URI), ("identity", identity_uri, identity_model)):
        folder = root / name
        runs = []
        for n_workers in workers:
            served = fixture.start_model_server(folder, store, model_uri=model_uri, workers=n_workers)
            try:
                for c in concurrency:
                    before = load_average()
                    # Warm every worker: the server spreads connections over its processes.
                    run = load_test(served.invocations, bodies, n_requests, concurrency=c,
                                          warmup=warmup * n_workers)
                    run.update(load_average_before=before, workers=int(n_workers))
                    runs.append(run)
            finally:
                fixture.stop_model_server(served)
        out[name] = runs
    return out


def _log_identity(root: Path) -> tuple[str, str]:
    """Log the identity pyfunc (models-from-code, mfrec's signature) in its own sqlite store."""
    root.mkdir(parents=True, exist_ok=True)
    code = root / "identity_model.py"
    code.write_text(IDENTITY_MODEL)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with fixture.mlflow_uris(uri):
        client = mlflow.MlflowClient()
        experiment_id = client.create_experiment("mfrec-bench-identity", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment_id, run_name="identity"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "add type hints", "no input example"
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                           signature=registry.signature(),
                                           pip_requirements=registry.pip_requirements()[:1])
    return uri, info.model_uri
