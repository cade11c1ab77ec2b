"""MLflow entry point ``prepare``: download/verify/parse/split and log the prepared dataset.

    python -m entrypoints.prepare --dataset ml-latest-small --data-path "" --split random \\
        --test-fraction 0.2 --val-fraction 0.1 --seed 0 [--output-json result.json]

Runs inside the active MLflow run (``mlflow run`` creates one; ``main`` opens a nested one) or
starts its own. A preparation with the same data content and split parameters that an earlier
FINISHED run of this experiment logged, and whose artifacts are still there, is reused instead of
redone: the run is tagged ``mfrec.reused_from`` and ``mfrec.prepared_uri`` points at the earlier
run's ``prepared/`` folder. The last stdout line is the prepared folder's URI.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from entrypoints.common import parser_for
from entrypoints.params import COLUMN_PARAMS, PREPARE_DEFAULTS, prepare_config
from mfrec import tracking
from mfrec.data.custom import Columns
from mfrec.data.prepare import (MANIFEST, MOVIES_FILE, RATING_FILES, Loaded, PrepareConfig, load_dataset,
                                load_prepared, prepare_key, prepare_loaded)
from mfrec.errors import MfrecError

ARTIFACT_DIR = "prepared"
TAG_KEY, TAG_URI, TAG_REUSED = "mfrec.prepare_key", "mfrec.prepared_uri", "mfrec.reused_from"
CONTEXTS = {"train.parquet": "training", "val.parquet": "validation", "test.parquet": "test"}


def run_prepare(config: PrepareConfig, progress: bool = True) -> dict:
    """Prepare (or reuse) the dataset ``config`` describes inside the active MLflow run.

    Returns ``{"run_id", "prepared_uri", "reused_from", "manifest"}``; ``reused_from`` is
    ``None`` when this run did the work.
    """
    with tracking.active_or_new_run() as run:
        run_id = run.info.run_id
        split = config.split
        tracking.log_new_params({"dataset": config.dataset, "data_path": config.data_path, "split": split.method,
                                 "test_fraction": split.test_fraction, "val_fraction": split.val_fraction,
                                 "seed": split.seed})
        if config.columns != Columns():
            tracking.log_new_params({param: getattr(config.columns, field) for param, field in COLUMN_PARAMS.items()})
        loaded = load_dataset(config.dataset, config.data_path, progress=progress, columns=config.columns)
        key = prepare_key(loaded.data_sha256, config.split)
        earlier = find_reusable(MlflowClient(), run.info.experiment_id, key, exclude_run=run_id)
        if earlier:
            reused_from, manifest = earlier
            prepared_uri = f"runs:/{reused_from}/{ARTIFACT_DIR}"
            mlflow.set_tag(TAG_REUSED, reused_from)
            # The earlier run holds the data; this run keeps a copy of its manifest for the record.
            mlflow.log_dict(manifest, f"reused/{MANIFEST}")
        else:
            reused_from = None
            prepared_uri = f"runs:/{run_id}/{ARTIFACT_DIR}"
            manifest = _prepare_and_log(loaded, config)
        mlflow.set_tags({TAG_KEY: key, TAG_URI: prepared_uri,
                         "mfrec.data_sha256": manifest["data_sha256"],
                         "mfrec.dataset": manifest["dataset"]})
        mlflow.log_metrics(_count_metrics(manifest))
        inputs = dataset_inputs(prepared_uri)
        log_inputs(inputs)
    return {"run_id": run_id, "prepared_uri": prepared_uri, "reused_from": reused_from, "inputs": inputs,
            "manifest": manifest}


def find_reusable(client: MlflowClient, experiment_id: str, key: str,
                  exclude_run: str | None = None) -> tuple[str, dict] | None:
    """Latest FINISHED run of the experiment that logged a preparation with ``key``.

    Runs that themselves reused another run are skipped (they hold no data files), as are runs whose
    ``prepared/`` artifacts are incomplete or no longer downloadable.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_KEY}` = '{key}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=50,
    )
    wanted = {*RATING_FILES, MOVIES_FILE, MANIFEST}
    for candidate in runs:
        run_id = candidate.info.run_id
        if run_id == exclude_run or TAG_REUSED in candidate.data.tags:
            continue
        try:
            present = {Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
            if not wanted <= present:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{MANIFEST}", tmp)
                manifest = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            continue  # artifacts gone or unreadable: not reusable
        if manifest.get("prepare_key") == key:
            return run_id, manifest
    return None


def _prepare_and_log(loaded: Loaded, config: PrepareConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="mfrec-prepare-") as tmp:
        out = Path(tmp) / ARTIFACT_DIR
        manifest = prepare_loaded(loaded, config.split, out)
        mlflow.log_artifacts(str(out), artifact_path=ARTIFACT_DIR)
    return manifest


def log_inputs(inputs: list) -> None:
    """Link ``(dataset, context)`` pairs (:func:`dataset_inputs`) to the active run."""
    with _quiet_dataset_hints():
        for dataset, context in inputs:
            mlflow.log_input(dataset, context=context)


@contextlib.contextmanager
def _quiet_dataset_hints():
    """Two MLflow hints that do not apply here: a local path "can be interpreted in multiple
    ways", and integer columns "cannot represent missing values" (ours have none)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        yield


def dataset_inputs(prepared_uri: str) -> list:
    """The prepared train, validation and test sets as MLflow datasets with their contexts
    (``training``, ``validation``, ``test``), named by data and split, digested by file."""
    with tempfile.TemporaryDirectory(prefix="mfrec-inputs-") as tmp:
        prepared = load_prepared(tracking.resolve_local(prepared_uri, tmp), verify=False)
    manifest = prepared.manifest
    frames = {"train.parquet": prepared.train, "val.parquet": prepared.val, "test.parquet": prepared.test}
    with _quiet_dataset_hints():
        source = _dataset_source(manifest)
        inputs = []
        for name, context in CONTEXTS.items():
            # Digest column is 36 characters wide; 32 hex digits of sha256 name the file.
            dataset = mlflow.data.from_pandas(frames[name], source=source,
                                              name=f"{manifest['dataset']}-{name.removesuffix('.parquet')}",
                                              digest=manifest["files"][name]["sha256"][:32])
            # MLflow infers a frame's schema value by value in Python (about 30 s a table at 25M
            # ratings); its first rows, plus a row with a missing value of each column that has
            # one, give the same schema. (The schema is a cached property: this fills its cache.)
            frame = frames[name]
            missing = frame.isna()
            sample = pd.concat([frame.head(1000), frame.loc[missing.idxmax()[missing.any()].unique()]])
            dataset.__dict__["schema"] = infer_signature(sample).inputs
            inputs.append((dataset, context))
        return inputs


def _dataset_source(manifest: dict):
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    source = manifest["source"]
    if source["kind"] == "download":
        return HTTPDatasetSource(source["url"])
    if source["kind"] in ("zip", "dir", "file"):
        return resolve_dataset_source(source["path"])
    return CodeDatasetSource(tags={"mfrec.generator": source["verification"], "mfrec.dataset": manifest["dataset"]})


def _count_metrics(manifest: dict) -> dict[str, float]:
    numbers = {**manifest["counts"], **manifest["unseen"]}
    return {f"data_{k}": float(v) for k, v in numbers.items()}


def main(argv: list[str] | None = None) -> int:
    tracking.fail_on_termination()
    parser = parser_for("python -m entrypoints.prepare", __doc__.split("\n\n")[0], PREPARE_DEFAULTS,
                        output_help="write {run_id, prepared_uri, reused_from, manifest} here")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no download progress bar")
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in PREPARE_DEFAULTS}
    try:
        # Named like main's runs (a standalone step otherwise gets a random name).
        with tracking.top_level_run(run_name=f"prepare-{values['dataset']}-{values['split']}-s{values['seed']}"):
            tracking.log_new_params(values)  # as received, like `mlflow run` logs them
            result = run_prepare(prepare_config(values), progress=args.progress)
    except MfrecError as exc:
        print(f"prepare failed: {exc}", file=sys.stderr)
        return 1
    result = {k: v for k, v in result.items() if k != "inputs"}  # the rest is JSON
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    reused = f" (reused from run {result['reused_from']})" if result["reused_from"] else ""
    print(f"prepared data{reused}: {result['manifest']['counts']}", file=sys.stderr)
    print(result["prepared_uri"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
