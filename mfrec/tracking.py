"""The MLflow edge: logging, run bookkeeping, the logged model and the registry.

The rest of :mod:`mfrec` works without MLflow; the served model itself lives in
:mod:`mfrec.serving.pyfunc`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from mfrec.errors import ConfigError, DataError
from mfrec.imports import PACKAGE_DIR, closure, module_path

PYFUNC = "mfrec.serving.pyfunc"


# Every column an answer may have (each task has some of them: docs/serving.md).
OUTPUT_COLUMNS = {"userId": "long", "movieId": "long", "prediction": "double", "known": "boolean", "rank": "long",
                  "similar_movieId": "long", "title": "string", "genres": "string", "score": "double",
                  "source": "string", "cluster": "long"}


ID_OUTPUTS = {"userId": "users", "movieId": "items", "similar_movieId": "items"}


def signature(id_kinds: dict | None = None) -> ModelSignature:
    """The served model's signature; ``id_kinds`` (``{"users": "string", "items": "int64"}``,
    a custom dataset's) types the answer's id columns ("string" or "long")."""
    # Inputs typed "any": the model checks values itself (mfrec.serving.contract).
    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in ("userId", "movieId", "rating")])
    types = dict(OUTPUT_COLUMNS)
    for name, side in ID_OUTPUTS.items() if id_kinds else ():
        types[name] = "string" if id_kinds[side] == "string" else "long"
    outputs = Schema([ColSpec(dtype, name, required=False) for name, dtype in types.items()])
    params = ParamSchema([
        ParamSpec("task", "string", "predict"),
        ParamSpec("k", "long", 10),
        ParamSpec("exclude_seen", "boolean", True),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """Pinned to what this process runs, without local build tags (``+cpu``).

    With ``$MFREC_TORCH_INDEX_URL`` set (e.g. ``https://download.pytorch.org/whl/cpu``) the
    requirements name that index and its build of torch (``torch==2.13.0+cpu``), so that an
    environment built from them (``mlflow models build-docker``, ``--env-manager virtualenv``
    or ``uv``) gets the CPU build instead of PyPI's several-GB CUDA one.
    """
    from importlib.metadata import version

    def pin(name):
        return f"{name}=={version(name).split('+')[0]}"

    index = os.environ.get("MFREC_TORCH_INDEX_URL", "").strip()
    torch = pin("torch")
    if index:
        build = index.rstrip("/").rsplit("/", 1)[-1]  # .../whl/cpu -> cpu
        return [f"--extra-index-url {index}", pin("mlflow"), f"{torch}+{build}", pin("numpy"), pin("pandas"),
                pin("pyarrow")]
    return [pin("mlflow"), torch, pin("numpy"), pin("pandas"), pin("pyarrow")]


def log_pyfunc(bundle_dir, name: str = "mfrec-recommender", registered_model_name: str | None = None):
    """Log a saved bundle folder as a pyfunc model (models from code: no pickle), carrying
    only the part of mfrec that serving imports."""
    example, id_kinds = _example(Path(bundle_dir))
    with tempfile.TemporaryDirectory(prefix="mfrec-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(module_path(PYFUNC)),
            artifacts={"recommender": str(bundle_dir)},
            code_paths=[str(served_code(Path(tmp)))],
            pip_requirements=pip_requirements(),
            signature=signature(id_kinds),
            input_example=example,
            registered_model_name=registered_model_name,
        )


def _example(bundle_dir: Path) -> tuple:
    """An input example in the model's own ids, and their kinds (``None``: MovieLens ids)."""
    from mfrec.data.ids import read_id_file
    from mfrec.serving.bundle import ID_FILES

    params = {"task": "predict", "k": 10, "exclude_seen": True}
    kinds = json.loads((bundle_dir / "meta.json").read_text()).get("ids")
    if not kinds:
        return (pd.DataFrame({"userId": [1, 1], "movieId": [1, 50]}), params), None
    users, items = (read_id_file(bundle_dir / ID_FILES[side]) for side in ("users", "items"))
    frame = pd.DataFrame({"userId": [users[0], users[0]], "movieId": [items[0], items[-1]]})
    return (frame, params), kinds


def served_code(folder: Path) -> Path:
    """A copy of the mfrec modules the pyfunc imports, as the package ``folder/mfrec``."""
    for name in closure(PYFUNC):
        source = module_path(name)
        target = folder / source.relative_to(PACKAGE_DIR.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return folder / "mfrec"


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


# Held-out metrics the champion rule may compare (``champion_metric``), and which way is better.
CHAMPION_METRICS = {"test_ndcg_at_10": "higher", "test_precision_at_10": "higher", "test_recall_at_10": "higher",
                    "test_rmse": "lower", "test_mae": "lower"}
DEFAULT_CHAMPION_METRIC = "test_ndcg_at_10"  # what recommend, the main task, is judged by


def check_champion_metric(metric: str) -> str:
    if metric not in CHAMPION_METRICS:
        raise ConfigError(f"champion_metric must be one of {', '.join(CHAMPION_METRICS)}, got {metric!r}")
    return metric


def register(model_uri: str, name: str, held_out: dict, prepare_key: str, run_id: str,
             data_sha256: str = "", description: str = "", tags: dict | None = None,
             metric: str = DEFAULT_CHAMPION_METRIC) -> dict:
    """Register a version and move alias ``champion`` to it only if it beats the champion.

    It must beat the current champion's held-out ``metric`` (one of ``CHAMPION_METRICS``:
    NDCG@10 by default, higher is better; RMSE and MAE lower) on the same prepared data: the
    same ``prepare_key`` (the data's content *and* the split: method, fractions, seed; a test
    figure on another split measures another test set). Without a champion, it becomes one.
    ``held_out`` (metric -> value) is tagged on the version. The decision, naming the metric,
    is tagged on the run and on the version; ``description`` and ``tags`` go on the version.
    """
    check_champion_metric(metric)
    client = mlflow.MlflowClient()
    measured = {k: float(v) for k, v in held_out.items() if k in CHAMPION_METRICS and math.isfinite(float(v))}
    version = mlflow.register_model(model_uri, name, tags={**{k: repr(v) for k, v in measured.items()},
                                                            "prepare_key": prepare_key, "champion_metric": metric,
                                                            "data_sha256": data_sha256, "run_id": run_id,
                                                            **(tags or {})})
    if description:
        client.update_model_version(name, version.version, description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=(
            "mfrec: a matrix-factorisation recommender (pyfunc; tasks predict, recommend, similar, fold_in). "
            "Alias champion: the best version by a held-out metric (champion_metric; each version's tag "
            "champion_decision says which) on the same prepared data."))
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    value = measured.get(metric)
    lower = CHAMPION_METRICS[metric] == "lower"
    if value is None:
        promote, reason = False, (f"{metric} was not measured for this model (implicit feedback has no ratings "
                                  "to predict): choose another champion_metric")
    elif champion is None:
        promote, reason = True, f"no champion yet ({metric} {value:.4f})"
    elif "prepare_key" not in champion.tags:
        promote, reason = False, (f"champion v{champion.version} has no prepare_key tag (registered by an older "
                                  "mfrec, which compared models across splits): move the alias by hand")
    elif not prepare_key or champion.tags["prepare_key"] != prepare_key:
        promote, reason = False, (f"champion v{champion.version} was evaluated on other prepared data "
                                  "(another dataset or split)")
    elif metric not in champion.tags:
        promote, reason = False, f"champion v{champion.version} has no {metric} tag to compare with"
    else:
        best = float(champion.tags[metric])
        promote = value < best if lower else value > best
        sign = ("<" if promote else ">=") if lower else (">" if promote else "<=")
        reason = f"{metric} {value:.4f} {sign} champion v{champion.version}'s {best:.4f}"
    if promote:
        client.set_registered_model_alias(name, "champion", version.version)
    decision = f"{'promoted' if promote else 'kept champion'}: {reason}"
    client.set_model_version_tag(name, version.version, "champion_decision", decision)
    client.set_tag(run_id, "mfrec.champion_decision", decision)
    client.set_tag(run_id, "mfrec.registered_version", str(version.version))
    return {"version": int(version.version), "promoted": promote, "decision": decision, "metric": metric}


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
    if kwargs.get("log_system_metrics"):
        # Runs take seconds: sample every second and log each sample (MLflow's default is 10 s).
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(**kwargs)
    root = run.info.run_id
    try:
        with run:
            yield run
    except BaseException:
        # The run is failing already: finish its bookkeeping, briefly and uninterrupted (a
        # tracking server that is down gets one short try, not MLflow's minutes of retries).
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with restored_environ(_QUICK_HTTP):
                os.environ.update(_QUICK_HTTP)
                _fail_running_tree(root)
        finally:
            signal.signal(signal.SIGTERM, previous)
        raise


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


def _fail_running_tree(root: str) -> None:
    """Mark ``root`` and its descendants FAILED where they are still RUNNING (best effort:
    the original error is what the caller reports). Children are looked for in every
    experiment: a nested run goes to the current experiment, which need not be its parent's."""
    try:
        client = mlflow.MlflowClient()
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
