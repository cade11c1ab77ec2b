"""The MLflow edge of mfrec: the pyfunc model, model logging, registry and logging helpers.

Everything else in :mod:`mfrec` works without MLflow; this module is the one that imports it.
The served model wraps :class:`~mfrec.recommender.Recommender`, the same object whose
ranking produced the test metrics.
"""

from __future__ import annotations

import gc
import math
import os
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

TASKS = ("predict", "recommend", "similar", "fold_in")
TASK_COLUMNS = {"predict": ("userId", "movieId"), "recommend": ("userId",), "similar": ("movieId",),
                "fold_in": ("movieId", "rating")}
MAX_ROWS = 100_000
MAX_K = 1000
# Fold-in solves all of a request's customers in one batch; the cap bounds what one request
# may ask (the ranking of each customer scores the whole catalogue).
MAX_FOLD_IN_CUSTOMERS = 1000
# Columns are typed "any" in the signature so raw values reach the model, which checks them
# itself: with a long column MLflow silently truncates 12.7 to 12, and with a double column
# it refuses plain JSON integers. Ids are checked as float64, exact only below 2**53: an id of
# 2**53 + 1 reads as 2**53, so valid ids are 0 <= id < MAX_ID (exclusive, or 2**53 + 1 would
# pass as a different id).
MAX_ID = 2**53
PACKAGE_DIR = Path(__file__).resolve().parent


# Longest echo of the request that an error message keeps (BadRequest).
ECHO_LIMIT = 1000


class BadRequest(MlflowException):
    """A refused request: MLflow's scoring server answers it with HTTP 400 and the message.

    The server rewrites the message to ``Failed to predict data '<the request>'. Error: ...``,
    the request printed whole for an ``inputs`` payload: a 100,001-row request, refused for
    its size, came back as a 0.6-2.9 MB error. A rewrite that long keeps the request's length
    instead of its text.
    """

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        original = getattr(self, "_message", None)
        if original is not None and len(value) > len(original) + ECHO_LIMIT:
            value = f"Failed to predict data ({len(value) - len(original):,} characters, not echoed). \nError: {original}"
        self._message = value


def bad_request(message: str) -> MlflowException:
    """An error MLflow's scoring server turns into HTTP 400 with ``message``."""
    return BadRequest(message, error_code=INVALID_PARAMETER_VALUE)


class MfrecPyfunc(mlflow.pyfunc.PythonModel):
    """Answers ``predict``, ``recommend``, ``similar`` and ``fold_in`` requests (docs/serving.md)."""

    def load_context(self, context):
        import torch

        from mfrec.recommender import Recommender

        # A request is one small matrix product and the server runs requests in threads, so
        # per-request intra-op threads would only compete for the cores. (The 4-client REST
        # benchmark moved within its noise with this: 125 -> 133 req/s.)
        torch.set_num_threads(1)
        self.rec = Recommender.load(context.artifacts["recommender"])
        self.rec.known_lists(exclude_seen=True)  # ranked now, not in the first requests
        self.rec.similar_lists()
        # Move everything loaded so far (MLflow, pandas, torch, the model: ~500k objects) out
        # of the cyclic garbage collector's reach: its full collections otherwise walk them
        # all, a ~10 ms stall every few thousand requests. (Process-wide: cycles among those
        # objects are never collected, fine for a server that loads one model.)
        gc.collect()
        gc.freeze()

    # The hint is one MLflow infers no schema from (it keeps the explicit signature() below
    # and does no conversion of its own): without any, every process that imports this
    # module prints MLflow's "add type hints" warning.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        return answer(self.rec, model_input, params)


def answer(rec, frame, params=None) -> list[dict]:
    """Validate one request and answer it with ``rec``: a list of row dicts.

    Rows rather than a DataFrame: MLflow serialises a list as is, and for a typical 10-row
    answer building and serialising a DataFrame cost more than the recommendation itself.
    ``pd.DataFrame(answer(...))`` gives the table.
    """
    from mfrec.recommender import to_records

    task, k, exclude_seen = _params(params or {})
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except Exception as exc:  # noqa: BLE001
            raise bad_request(f"input must be a table with columns userId, movieId, rating: {exc}") from exc
    # Each column fetched once and by position: a lookup by name first builds the column
    # index's hash table, and frame.dtypes builds a Series, each costing more than ranking
    # a user's catalogue (MLflow hands every request a new frame).
    columns = dict(frame.items())
    if len(columns) != frame.shape[1]:  # a name given twice: which value was meant is unknown
        names = [str(c) for c in frame.columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise bad_request(f"input has repeated column name(s): {', '.join(repeated)}")
    columns = _unwrap_columns(columns, len(frame))
    n_rows = len(next(iter(columns.values()))) if columns else len(frame)
    if n_rows > MAX_ROWS:
        raise bad_request(f"too many input rows: {n_rows} (at most {MAX_ROWS:,} per request)")
    needed = TASK_COLUMNS[task]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise bad_request(f"task {task!r} needs column(s) {', '.join(needed)}; missing: {', '.join(missing)}")
    if task == "predict":
        return to_records(rec.predict_columns(_ids(columns, "userId"), _ids(columns, "movieId")))
    if task == "recommend":
        return to_records(rec.recommend_columns(_ids(columns, "userId"), k, exclude_seen))
    if task == "similar":
        return to_records(rec.similar_columns(_ids(columns, "movieId"), k))
    ratings = _ratings(columns, rec.rating_range)
    named = "userId" in columns and columns["userId"].notna().any()
    users = _ids(columns, "userId") if named else np.zeros(n_rows, np.int64)
    n_customers = len(np.unique(users))
    if n_customers > MAX_FOLD_IN_CUSTOMERS:
        raise bad_request(f"too many fold_in customers: {n_customers} distinct userId values "
                          f"(at most {MAX_FOLD_IN_CUSTOMERS} per request)")
    return to_records(rec.fold_in_columns(users, _ids(columns, "movieId"), ratings, k, exclude_seen))


def _unwrap_columns(columns: dict, n_rows: int) -> dict:
    """Undo MLflow wrapping ``{"inputs": {"userId": []}}`` into ONE row whose cells are lists.

    MLflow does that when every column list is empty or holds only strings; the client meant
    a table with those columns, so give it back (an empty one answers 200 with no rows).
    ``columns`` maps names to the frame's Series.
    """
    if n_rows != 1 or not columns or any(series.dtype != object for series in columns.values()):
        return columns  # list cells live in object columns; numeric ones need no look (fast path)
    cells = [series.iloc[0] for series in columns.values()]
    if all(isinstance(c, (list, tuple, np.ndarray)) for c in cells) and len({len(c) for c in cells}) == 1:
        return {name: pd.Series(list(c), dtype=object) for name, c in zip(columns, cells)}
    return columns


def _params(params: dict) -> tuple[str, int, bool]:
    task = params.get("task", "predict")
    if not isinstance(task, str) or task not in TASKS:
        raise bad_request(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    k = params.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise bad_request(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    exclude_seen = params.get("exclude_seen", True)
    if not isinstance(exclude_seen, (bool, np.bool_)):
        raise bad_request(f"exclude_seen must be true or false, got {exclude_seen!r}")
    return task, int(k), bool(exclude_seen)


def _ids(columns: dict, column: str) -> np.ndarray:
    series = columns[column]
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":  # plain integers: a range check
        values = series.to_numpy()
        if not len(values) or (values.min() >= 0 and values.max() < MAX_ID):
            return values.astype(np.int64, copy=False)
    values = _checked(series, column, "non-negative integer ids below 2**53",
                      lambda v: (v != np.round(v)) | (v < 0) | (v >= MAX_ID))
    return values.astype(np.int64)


def _ratings(columns: dict, rating_range) -> np.ndarray:
    low, high = rating_range
    values = _checked(columns["rating"], "rating", f"ratings between {low} and {high}",
                      lambda v: (v < low) | (v > high))
    return values.astype(np.float32)


def _checked(series: pd.Series, column: str, requirement: str, out_of_range) -> np.ndarray:
    """``series`` as float64, or a 400 naming the first value that is not a finite number
    meeting ``requirement`` (``out_of_range`` flags the finite ones that miss it)."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "iuf":  # plain numpy numbers: no NaN mask to build
        values = series.to_numpy().astype(np.float64, copy=False)
    elif dtype.kind in "iuf":  # nullable extension numbers (Int64, Float64)
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    bad = ~finite | _bools(series)
    bad[finite] |= out_of_range(values[finite])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise bad_request(f"column {column!r} must hold {requirement}; row {row} has "
                          f"{_show(series.iloc[row])} ({int(bad.sum())} bad value(s))")
    return values


def _bools(column: pd.Series) -> np.ndarray:
    """Where ``column`` holds JSON true/false, which pandas would otherwise read as 1/0."""
    if column.dtype == object:
        return np.fromiter((isinstance(v, (bool, np.bool_)) for v in column), dtype=bool, count=len(column))
    if pd.api.types.is_bool_dtype(column.dtype):
        return np.ones(len(column), dtype=bool)
    return np.zeros(len(column), dtype=bool)


# ---------------------------------------------------------------------------- logging helpers

def signature() -> ModelSignature:
    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in ("userId", "movieId", "rating")])
    params = ParamSchema([
        ParamSpec("task", "string", "predict"),
        ParamSpec("k", "long", 10),
        ParamSpec("exclude_seen", "boolean", True),
    ])
    return ModelSignature(inputs=inputs, params=params)


def pip_requirements() -> list[str]:
    """Pinned to what this process runs, without local build tags (``+cpu``)."""
    from importlib.metadata import version

    def pin(name):
        return f"{name}=={version(name).split('+')[0]}"

    return [pin("mlflow"), pin("torch"), pin("numpy"), pin("pandas"), pin("pyarrow"), pin("scikit-learn")]


def log_pyfunc(recommender_dir, name: str = "model", registered_model_name: str | None = None):
    """Log the saved recommender folder as a pyfunc model (models-from-code: no pickle)."""
    example = pd.DataFrame({"userId": [1, 1], "movieId": [1, 50]})
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PACKAGE_DIR / "serving.py"),
        artifacts={"recommender": str(recommender_dir)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=pip_requirements(),
        signature=signature(),
        input_example=example,
        registered_model_name=registered_model_name,
    )


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

    One tracking-store write per epoch costs ~5 ms on sqlite (more on a remote server): on
    ml-latest-small that doubled ``train_seconds`` (68 to 134 ms; queued asynchronous logging
    145 ms, its writer thread competing for the cores). Batches keep long trainings live in
    the UI at a negligible cost.
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


def finite_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating, np.integer))
            and math.isfinite(float(v))}


def register(model_uri: str, name: str, test_rmse: float, prepare_key: str, run_id: str,
             data_sha256: str = "") -> dict:
    """Register a version and move alias ``champion`` to it only if it beats the champion.

    It must beat the current champion's ``test_rmse`` on the same prepared data: the same
    ``prepare_key`` (the data's content *and* the split: method, fractions, seed; a test RMSE
    on another split measures another test set). Without a champion, it becomes one. The
    decision is tagged on the run and on the version.
    """
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name, tags={"test_rmse": repr(float(test_rmse)),
                                                            "prepare_key": prepare_key,
                                                            "data_sha256": data_sha256, "run_id": run_id})
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is None:
        promote, reason = True, "no champion yet"
    elif "prepare_key" not in champion.tags:
        promote, reason = False, (f"champion v{champion.version} has no prepare_key tag (registered by an older "
                                  "mfrec, which compared models across splits): move the alias by hand")
    elif not prepare_key or champion.tags["prepare_key"] != prepare_key:
        promote, reason = False, (f"champion v{champion.version} was evaluated on other prepared data "
                                  "(another dataset or split)")
    else:
        best = float(champion.tags.get("test_rmse", "inf"))
        promote = test_rmse < best
        reason = (f"test_rmse {test_rmse:.4f} {'<' if promote else '>='} champion v{champion.version}'s "
                  f"{best:.4f}")
    if promote:
        client.set_registered_model_alias(name, "champion", version.version)
    decision = f"{'promoted' if promote else 'kept champion'}: {reason}"
    client.set_model_version_tag(name, version.version, "champion_decision", decision)
    client.set_tag(run_id, "mfrec.champion_decision", decision)
    client.set_tag(run_id, "mfrec.registered_version", str(version.version))
    return {"version": int(version.version), "promoted": promote, "decision": decision}


def resolve_local(uri_or_path: str, dst: str | None = None) -> Path:
    """A local folder for a path or an MLflow artifact URI (``runs:/...``, ``mlflow-artifacts:/...``)."""
    if os.path.exists(uri_or_path):
        return Path(uri_or_path)
    if "://" in uri_or_path or uri_or_path.startswith("runs:/"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri_or_path, dst_path=dst))
    from mfrec.errors import DataError

    raise DataError(f"{uri_or_path!r} is neither an existing path nor an MLflow artifact URI")


def _show(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)
