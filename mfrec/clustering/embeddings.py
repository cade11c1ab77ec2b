"""The ``embeddings/`` artifact: learned item and user vectors as parquet.

``items.parquet``: movieId (int64), title, genres, n_ratings (int64, training ratings),
bias (float64), vector (list<float32>, length n_factors).
``users.parquet``: userId (int64), bias, vector.

Downstream steps (clustering, notebooks) read these without torch or the model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mfrec.errors import DataError

ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
ITEM_COLUMNS = ("movieId", "title", "genres", "n_ratings", "bias", "vector")


def _vector_array(matrix: np.ndarray) -> pa.Array:
    """A list<float32> arrow column from a 2-D array (one list per row)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, k = matrix.shape
    offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.ravel()))


def item_frame(recommender) -> pd.DataFrame:
    """Item embeddings and metadata of a :class:`~mfrec.serving.recommender.Recommender`, one row per movie."""
    model = recommender.model
    items = recommender.items
    vectors = model.item_factors.detach().cpu().numpy().astype(np.float32)
    return pd.DataFrame({
        "movieId": items["movieId"].to_numpy(np.int64),
        "title": items["title"].astype(str).to_numpy(),
        "genres": items["genres"].astype(str).to_numpy(),
        "n_ratings": items["n_ratings"].to_numpy(np.int64),
        "bias": model.item_bias.detach().cpu().numpy().astype(np.float64),
        "vector": list(vectors),
    })


def user_frame(recommender) -> pd.DataFrame:
    """User embeddings of a :class:`~mfrec.serving.recommender.Recommender`, one row per user."""
    model = recommender.model
    vectors = model.user_factors.detach().cpu().numpy().astype(np.float32)
    return pd.DataFrame({
        "userId": np.asarray(recommender.user_index.ids, dtype=np.int64),
        "bias": model.user_bias.detach().cpu().numpy().astype(np.float64),
        "vector": list(vectors),
    })


def _to_table(frame: pd.DataFrame) -> pa.Table:
    # Build the vector column explicitly: pandas would infer list<float> only after a
    # per-row conversion, and an empty frame would lose the element type.
    rest = pa.Table.from_pandas(frame.drop(columns="vector"), preserve_index=False)
    matrix = np.stack(frame["vector"].to_numpy()) if len(frame) else np.zeros((0, 0), np.float32)
    return rest.append_column("vector", _vector_array(matrix))


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_embeddings(recommender, folder) -> Path:
    """Write ``items.parquet`` and ``users.parquet`` into ``folder`` (created); returns the folder.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(_to_table(item_frame(recommender)), folder / ITEMS_FILE)
    _write_atomic(_to_table(user_frame(recommender)), folder / USERS_FILE)
    return folder


def read_item_embeddings(path_or_folder) -> tuple[pd.DataFrame, np.ndarray]:
    """Read and validate item embeddings.

    Parameters
    ----------
    path_or_folder:
        ``items.parquet`` itself or the ``embeddings/`` folder holding it.

    Returns
    -------
    (meta, vectors):
        ``meta`` has every column but ``vector`` (index 0..n-1); ``vectors`` is float32 (n, k).

    Raises
    ------
    DataError
        The file is missing or unreadable, columns are missing, vectors differ in length,
        or a vector holds NaN/inf.
    """
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / ITEMS_FILE
    if not path.is_file():
        raise DataError(f"item embeddings not found: {path} does not exist "
                        f"(expected an embeddings folder holding {ITEMS_FILE}, or the file itself)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad artifact
        raise DataError(f"item embeddings {path} could not be read as parquet: {exc}") from exc
    missing = [c for c in ITEM_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"item embeddings {path} lack column(s) {', '.join(missing)}; "
                        f"expected {', '.join(ITEM_COLUMNS)}")
    vectors = _stack_vectors(frame["vector"], path)
    meta = frame.drop(columns="vector").reset_index(drop=True)
    meta["movieId"] = meta["movieId"].astype(np.int64)
    meta["n_ratings"] = meta["n_ratings"].astype(np.int64)
    meta["title"] = meta["title"].fillna("").astype(str)
    meta["genres"] = meta["genres"].fillna("(no genres listed)").astype(str)
    return meta, vectors


def _stack_vectors(column: pd.Series, path: Path) -> np.ndarray:
    """The ``vector`` column as a float32 matrix, refusing ragged, null or non-finite vectors."""
    if len(column) == 0:
        raise DataError(f"item embeddings {path} hold no movies")
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())[:5].tolist()
        raise DataError(f"item embeddings {path}: vector is null in row(s) {rows}")
    try:
        lengths = column.map(len).to_numpy()
    except TypeError:
        raise DataError(f"item embeddings {path}: vector must hold a list of numbers per movie, "
                        f"got {type(column.iloc[0]).__name__}") from None
    if (lengths != lengths[0]).any():
        raise DataError(f"item embeddings {path}: vectors have unequal lengths "
                        f"{sorted(set(lengths.tolist()))[:10]}")
    if lengths[0] == 0:
        raise DataError(f"item embeddings {path}: vectors are empty")
    try:
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v in column])
    except (TypeError, ValueError) as exc:
        raise DataError(f"item embeddings {path}: vector holds non-numeric values ({exc})") from None
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"item embeddings {path}: {len(rows)} vector(s) contain NaN or inf "
                        f"(first rows {rows[:5].tolist()})")
    return vectors
