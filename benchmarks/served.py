"""Serve a registered model the way users do: ``mlflow models serve`` as a child process.

The benchmark and the serving tests share this fixture: log and register a fitted
recommender in a sqlite store, start ``mlflow models serve`` on loopback, wait until it
answers, stop it and its workers. As a command it builds the model that
``benchmarks/load_test.py`` measures::

    python -m benchmarks.served --zip ../shared/data/ml-latest-small.zip --out /tmp/mfrec-served

and prints the tracking URI to export before ``mlflow models serve -m models:/mfrec@champion``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "mfrec"
CHAMPION_URI = f"models:/{MODEL_NAME}@champion"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc=None) -> None:
    """Poll ``url`` until it answers 200, ``proc`` exits, or ``timeout`` seconds pass.

    Raises:
        RuntimeError: the process died or the service never answered.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s (last error: {last})")


def stop_process(proc, timeout: float = 10.0) -> None:
    """Terminate ``proc`` by its PID, killing it if it does not exit within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _bin_dir() -> Path:
    """The folder of this interpreter's scripts (the venv's ``bin``), where ``mlflow`` lives."""
    return Path(sys.executable).parent


def _mlflow_cli() -> str:
    local = _bin_dir() / "mlflow"
    return str(local) if local.exists() else (shutil.which("mlflow") or "mlflow")


@dataclass
class ServedModel:
    """A running ``mlflow models serve`` process and where its model came from."""

    url: str
    proc: subprocess.Popen
    root: Path
    tracking_uri: str
    model_uri: str
    log_path: Path

    @property
    def invocations(self) -> str:
        return f"{self.url}/invocations"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@contextlib.contextmanager
def mlflow_uris(uri: str):
    """Point this process's MLflow tracking and registry at ``uri``; restore both afterwards.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, so the
    environment variables are restored too (callers may rely on their own settings).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from mfrec.tracking import restored_environ

    saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
    saved_registry = getattr(registry_utils, "_registry_uri", None)
    with restored_environ(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")):
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield
        finally:
            tracking_utils._tracking_uri = saved_tracking
            registry_utils._registry_uri = saved_registry


def register_recommender(rec, root: Path, name: str = MODEL_NAME, clusters: bool = True,
                         test_rmse: float = 1.0, prepare_key: str = "test") -> str:
    """Save ``rec`` (plus KMeans clusters, as the pipeline does), log and register it.

    Everything lives under ``root``: ``mlflow.db`` and ``artifacts/``. Returns the sqlite
    tracking URI; alias ``champion`` of ``name`` points at the new version.
    """
    import mlflow

    from mfrec import registry
    root = Path(root)
    folder = root / "recommender"
    rec.save(folder)
    if clusters:
        from mfrec.clustering.embeddings import item_frame
        from mfrec.clustering.kmeans import ClusterConfig, cluster_movies

        vectors = rec.model.item_factors.detach().cpu().numpy()
        result = cluster_movies(item_frame(rec), vectors, ClusterConfig(n_init=2), n_shuffles=1)
        folder = root / "recommender-clustered"
        rec.with_clusters(result.assignments).save(folder)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with mlflow_uris(uri):
        client = mlflow.MlflowClient()
        experiment_id = client.create_experiment("mfrec-serving", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment_id, run_name="serving-fixture") as run:
            info = registry.log_pyfunc(folder)
            registry.register(info.model_uri, name, {"test_rmse": test_rmse}, prepare_key, run.info.run_id,
                              metric="test_rmse")
    return uri


def start_model_server(root: Path, tracking_uri: str, model_uri: str = CHAMPION_URI, port: int | None = None,
                       timeout: float = 120.0, extra_env: dict | None = None, workers: int = 1) -> ServedModel:
    """``mlflow models serve -m MODEL --env-manager local -w WORKERS`` on 127.0.0.1, ready on ``/ping``."""
    root = Path(root)
    port = port or free_port()
    cmd = [_mlflow_cli(), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-p", str(port), "--host", "127.0.0.1", "-w", str(int(workers))]
    log_path = root / f"serve-{port}.log"
    log = open(log_path, "wb")
    env = dict(os.environ)
    # --env-manager local runs the model in whatever python PATH finds first: make it ours.
    env["PATH"] = f"{_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri, **(extra_env or {}))
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()  # the child holds its own descriptor
    served = ServedModel(f"http://127.0.0.1:{port}", proc, root, tracking_uri, model_uri, log_path)
    try:
        wait_http(f"{served.url}/ping", timeout=timeout, proc=proc)
    except RuntimeError as exc:
        stop_process(proc, timeout=10)
        raise RuntimeError(f"mlflow models serve did not start: {exc}\n{served.log_tail()}") from exc
    return served


def stop_model_server(served: ServedModel) -> None:
    """Stop the CLI process by PID; its uvicorn child gets SIGTERM on parent death (prctl)."""
    import psutil

    try:
        children = psutil.Process(served.proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    stop_process(served.proc, timeout=15)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:  # only processes this server started
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def served_recommender(rec, root: Path, **kwargs):
    """Register ``rec`` under ``root`` and serve ``models:/mfrec@champion`` for the block."""
    uri = register_recommender(rec, root, **kwargs)
    served = start_model_server(root, uri)
    try:
        yield served
    finally:
        stop_model_server(served)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served",
                                     description="Train the default model on ml-latest-small and register it "
                                                 "as models:/mfrec@champion in a sqlite store under --out.")
    parser.add_argument("--zip", required=True, help="ml-latest-small.zip (or extracted folder)")
    parser.add_argument("--out", required=True, help="empty folder for the store, artifacts and the prepared data")
    args = parser.parse_args(argv)
    from mfrec.data.prepare import PrepareConfig, load_prepared, prepare
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import train_and_evaluate

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare(PrepareConfig(data_path=args.zip), out / "prepared", progress=False)
    p = load_prepared(out / "prepared")
    outcome = train_and_evaluate(p.train, p.val, p.test, p.movies, TrainConfig(progress=False))
    uri = register_recommender(outcome.recommender, out, test_rmse=outcome.metrics["test_rmse"])
    print(f"test_rmse={outcome.metrics['test_rmse']:.4f}")
    print(f"export MLFLOW_TRACKING_URI={uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
