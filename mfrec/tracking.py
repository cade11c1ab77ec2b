"""The MLflow edge: logging and run bookkeeping (the logged model and the registry:
:mod:`mfrec.registry`).

The rest of :mod:`mfrec` works without MLflow; the served model itself lives in
:mod:`mfrec.serving.pyfunc`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from mfrec.errors import ConfigError, DataError

def log_new_params(params: dict) -> None:
    """Log params the active run does not have yet (``mlflow run`` logs its own, as given)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


class EpochMetrics:
    """``on_epoch`` callback: each epoch's metrics (step = epoch, timestamp = when it ended)
    go to a run in batches, at most every ``interval`` seconds and on :meth:`flush`.

    A store write per epoch would cost more than an ALS sweep; batches keep long trainings
    live in the UI at a negligible cost.
    """

    def __init__(self, run_id: str, interval: float = 2.0, tracking_uri: str | None = None):
        self.run_id, self.interval = run_id, interval
        self.client = mlflow.tracking.MlflowClient(tracking_uri)  # None: the current tracking URI
        self.pending = []
        self.written = time.monotonic()

    def __call__(self, record: dict) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), stamp, int(record["epoch"]))
                         for key, value in record.items() if key != "epoch"]
        if time.monotonic() - self.written >= self.interval:
            self.flush()

    def flush(self) -> None:
        while self.pending:  # log_batch takes up to 1000 metrics; a failed batch stays pending
            self.client.log_batch(self.run_id, metrics=self.pending[:1000])
            del self.pending[:1000]
        self.written = time.monotonic()


def log_metrics_split(metrics: dict, headline: tuple, headline_run: str, own_run: str) -> None:
    """Log the finite ``metrics``: those named in ``headline`` to ``headline_run`` (a pipeline's
    run), the others to ``own_run`` (a step's); all to ``own_run`` when the two are one run."""
    metrics = finite_metrics(metrics)
    top = {k: v for k, v in metrics.items() if k in headline or headline_run == own_run}
    mlflow.log_metrics(top, run_id=headline_run)
    mlflow.log_metrics({k: v for k, v in metrics.items() if k not in top}, run_id=own_run)


def log_choice(choice, run_ids) -> None:
    """A settings search on the runs in ``run_ids``: the chosen values as ``chosen_*`` params,
    a description of the choice as a tag, and (on each run) ``search/trials.md`` and
    ``search/trials.json``."""
    client = mlflow.MlflowClient()
    chosen = {f"chosen_{k}": v for k, v in choice.chosen().items()}
    for run_id in run_ids:
        existing = client.get_run(run_id).data.params
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in chosen.items() if k not in existing])
        client.set_tag(run_id, "mfrec.settings_choice", choice.summary()[:5000])
        client.log_text(run_id, choice.table() + "\n\n" + choice.summary() + "\n", "search/trials.md")
        client.log_text(run_id, json.dumps(choice.rows(), indent=2, default=float) + "\n", "search/trials.json")


def finite_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))
            and math.isfinite(float(v))}


def resolve_local(uri_or_path: str, dst: str | None = None) -> Path:
    """A local folder for a path or an MLflow artifact URI (``runs:/...``, ``mlflow-artifacts:/...``)."""
    if os.path.exists(uri_or_path):
        return Path(uri_or_path)
    if "://" in uri_or_path or uri_or_path.startswith("runs:/"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri_or_path, dst_path=dst))
    raise DataError(f"{uri_or_path!r} is neither an existing path nor an MLflow artifact URI")


# ---------------------------------------------------------------------------- runs

def fail_on_termination() -> None:
    """Make SIGTERM unwind the stack, so every open run ends FAILED instead of staying RUNNING.

    Not from the middle of a tracking-database call: SQLAlchemy is not safe against an
    exception raised between its statements (sqlite stays locked and the runs RUNNING). There
    the exit waits, looked at again every 50 ms, until the call has returned; at most
    ``TERMINATION_GRACE`` seconds.
    """
    deadline = []

    def _raise(signum, frame):
        if not deadline:
            deadline.append(time.monotonic() + TERMINATION_GRACE)
        if _in_database_call(frame) and time.monotonic() < deadline[0] and hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, _raise)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)  # no later alarm during the unwinding
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, _raise)


# Longest a SIGTERM waits for a tracking-database call to return.
TERMINATION_GRACE = 30.0


def _in_database_call(frame) -> bool:
    """Whether ``frame`` or a caller runs SQLAlchemy or MLflow's database store."""
    while frame is not None:
        name = frame.f_code.co_filename.replace(os.sep, "/")
        if "/sqlalchemy/" in name or "/mlflow/store/db/" in name or name.endswith("/sqlalchemy_store.py"):
            return True
        frame = frame.f_back
    return False


def system_metrics_available() -> bool:
    """MLflow's system metrics (CPU, memory, GPU) need psutil, an optional dependency."""
    return importlib.util.find_spec("psutil") is not None


@contextlib.contextmanager
def top_level_run(**kwargs):
    """``mlflow.start_run(**kwargs)`` for an entry point's own run; if the block ends early
    (an error, SIGTERM), every run of its tree still RUNNING afterwards ends FAILED.

    MLflow's own unwinding is not enough: ``end_run`` pops a run off the active stack before
    it marks it terminated, so a SIGTERM landing in between would leave that run RUNNING.
    """
    check_tracking_store()
    if kwargs.get("log_system_metrics"):
        # Runs take seconds: sample every second and log each sample (MLflow's default is 10 s).
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(**kwargs)
    root = run.info.run_id
    try:
        with run:
            yield run
    except BaseException as exc:
        # The run is failing already: finish its bookkeeping, briefly and uninterrupted (a
        # tracking server that is down gets one short try, not MLflow's minutes of retries).
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with restored_environ(_QUICK_HTTP):
                os.environ.update(_QUICK_HTTP)
                _fail_running_tree(root, failure_reason(exc))
        finally:
            signal.signal(signal.SIGTERM, previous)
        raise


def check_tracking_store() -> None:
    """Refuse, with what to do, a relative sqlite URI that names another database here than
    where ``mlflow run`` created this run: it runs the project in the project's folder, so
    ``sqlite:///mlflow.db`` exported in another folder resolves to the project's own file."""
    uri = mlflow.get_tracking_uri()
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not (run_id and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")):
        return
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    try:
        if not os.path.exists(path):  # refused without creating a stray database here
            raise MlflowException(f"{path} does not exist")
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri} is a relative path, and from the project's folder ({os.getcwd()}), where "
            f"mlflow run runs it, it names another database than the one run {run_id} was started in: export an "
            "absolute one, e.g. MLFLOW_TRACKING_URI=sqlite:////abs/path/mlflow.db") from None


_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def restored_environ(keys):
    """Put environment variables ``keys`` back as they were (set or unset) after the block."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def failure_reason(exc: BaseException) -> str:
    """What a failed run says about why: the error's message (what the console prints), or
    its kind when it has none (an interrupt)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C) before the run finished"
    if isinstance(exc, SystemExit):
        return ("terminated (SIGTERM) before the run finished" if exc.code == 128 + signal.SIGTERM
                else f"exited with code {exc.code} before the run finished")
    return str(exc).strip() or type(exc).__name__


def _fail_running_tree(root: str, reason: str = "") -> None:
    """Mark ``root`` and its descendants FAILED where they are still RUNNING (best effort:
    the original error is what the caller reports), with ``reason`` where people look: the
    root's description and its tag ``mfrec.failure`` (the first line). Children are looked for
    in every experiment: a nested run goes to the current experiment, which need not be its
    parent's."""
    try:
        client = mlflow.MlflowClient()
        if reason:
            client.set_tag(root, "mfrec.failure", reason.splitlines()[0][:1000])
            client.set_tag(root, "mlflow.note.content", f"Failed: {reason[:4000]}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        pending = [root]
        while pending:
            run_id = pending.pop()
            token = None
            while True:
                page = client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                          page_token=token)
                pending += [child.info.run_id for child in page]
                token = page.token
                if not token:
                    break
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - never mask the error being raised
        print(f"warning: could not mark unfinished runs of {root} FAILED: {exc}", file=sys.stderr)


@contextlib.contextmanager
def active_or_new_run(**kwargs):
    """The active run (``mlflow run`` made one, or a pipeline opened a nested one), else a new one."""
    active = mlflow.active_run()
    if active is not None:
        yield active
    else:
        with mlflow.start_run(**kwargs) as run:
            yield run
