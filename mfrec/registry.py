"""The MLflow edge's model side: what a served model is logged with (signature, pinned
requirements, the code serving imports) and the registry's champion rule. Runs and logging
live in :mod:`mfrec.tracking`.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from mfrec.errors import ConfigError
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
    with champion_lock(client, name):  # from the version to the alias: one registration at a time
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
        promote, reason = _decide(_champion(client, name), measured.get(metric), prepare_key, metric)
        if promote:
            client.set_registered_model_alias(name, "champion", version.version)
    decision = f"{'promoted' if promote else 'kept champion'}: {reason}"
    client.set_model_version_tag(name, version.version, "champion_decision", decision)
    client.set_tag(run_id, "mfrec.champion_decision", decision)
    client.set_tag(run_id, "mfrec.registered_version", str(version.version))
    return {"version": int(version.version), "promoted": promote, "decision": decision, "metric": metric}


# How long a registration waits for another's lock, and how long one lock must be seen held
# (by the waiter's own clock) to be taken for a killed pipeline's: a lock lives for the few
# calls of one registration.
LOCK_WAIT_S, LOCK_STALE_S = 900.0, 600.0
# What "exists" and "not found" are called by MLflow's own stores and by Databricks'.
_TAKEN, _GONE = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}, {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


@contextmanager
def champion_lock(client, name: str):
    """Hold the registered model ``<name>_champion_lock`` while a registration reads and moves
    alias ``champion``: MLflow's registry has no compare-and-set, and two pipelines registering
    at once would both see the same champion and the later write would win, better or not.
    Creating a registered model is atomic in the database stores (a unique name), directly or
    behind a tracking server. The lock carries its holder's ``owner`` tag, so a create whose
    answer was lost (the client retries it) is recognised, and only the holder releases it."""
    lock = f"{name}_champion_lock"  # a valid name wherever the model's is (Unity Catalog: no "-")
    owner = uuid.uuid4().hex
    started, seen = time.monotonic(), {}  # seen: another owner's lock -> when first seen held
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": owner},
                                           description=f"held while mfrec moves alias champion of {name}")
            break
        except MlflowException as error:
            # Taken; or taken and released while the store looked the holder up after a refusal.
            if error.error_code not in _TAKEN | _GONE:
                raise
        holder = _owner(client, lock)
        if holder == owner:  # our create went through; its answer was lost and the retry refused
            break
        now = time.monotonic()
        if holder is not None and now - seen.setdefault(holder, now) > LOCK_STALE_S:
            _release(client, lock, holder, strict=True)  # a killed pipeline's
            continue
        if now - started > LOCK_WAIT_S:
            raise MlflowException(f"registered model {lock!r} (a lock) stayed held for {LOCK_WAIT_S:.0f} s: if no "
                                  f"mfrec pipeline is registering a model, delete it (MlflowClient()."
                                  f"delete_registered_model({lock!r})) and run again")
        time.sleep(0.05 + 0.1 * random.random())
    try:
        yield
    finally:
        _release(client, lock, owner)


def _owner(client, lock: str):
    """The lock's holder (its ``owner`` tag; "" without one), or None when there is no lock."""
    try:
        return client.get_registered_model(lock).tags.get("owner", "")
    except MlflowException as error:
        if error.error_code in _GONE:
            return None
        raise


def _release(client, lock: str, owner: str, strict: bool = False) -> None:
    """Delete the lock if ``owner`` still holds it. ``strict``: a failure (e.g. no permission to
    delete another user's lock) raises instead of being reported."""
    try:
        if _owner(client, lock) == owner:
            client.delete_registered_model(lock)
    except MlflowException as error:
        if error.error_code in _GONE:
            return
        if strict:
            raise MlflowException(f"could not delete the stale lock {lock!r}: {error.message}") from error
        print(f"mfrec: could not release the lock {lock!r} ({error.message}); delete it "
              f"(MlflowClient().delete_registered_model({lock!r}))", file=sys.stderr)


def _champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException as error:
        if error.error_code in _GONE | {"INVALID_PARAMETER_VALUE"}:  # no alias (the stores' way of saying so)
            return None
        raise  # an error must not read as "no champion yet": a worse model would be promoted


def _decide(champion, value: float | None, prepare_key: str, metric: str) -> tuple[bool, str]:
    """Whether a model measuring ``value`` on ``prepare_key`` takes the alias from ``champion``."""
    if value is None:
        return False, (f"{metric} was not measured for this model (implicit feedback has no ratings to predict): "
                       "choose another champion_metric")
    if champion is None:
        return True, f"no champion yet ({metric} {value:.4f})"
    if "prepare_key" not in champion.tags:
        return False, (f"champion v{champion.version} has no prepare_key tag (registered by an older mfrec, "
                       "which compared models across splits): move the alias by hand")
    if not prepare_key or champion.tags["prepare_key"] != prepare_key:
        return False, f"champion v{champion.version} was evaluated on other prepared data (another dataset or split)"
    if metric not in champion.tags:
        return False, f"champion v{champion.version} has no {metric} tag to compare with"
    best, lower = float(champion.tags[metric]), CHAMPION_METRICS[metric] == "lower"
    promote = value < best if lower else value > best
    sign = ("<" if promote else ">=") if lower else (">" if promote else "<=")
    return promote, f"{metric} {value:.4f} {sign} champion v{champion.version}'s {best:.4f}"
