"""Recommendations for every user of a fitted model (or a list of users), written to parquet in
blocks: what a team that scores offline loads into its own systems.

The ranking is :meth:`~mfrec.serving.ranker.Ranker.top_items`, the one ``recommend`` answers
REST requests with, so a row here is what the served model would say. Users are ranked a block
at a time and each block is written as its own row group, so memory stays at one block's
scores and rows whatever the number of users.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mfrec.errors import DataError

BLOCK_USERS = 8192  # users ranked and written together (a row group of BLOCK_USERS * k rows)


def write_recommendations(rec, path, users=None, k: int = 100, exclude_seen: bool = True,
                          progress: bool | None = None) -> dict:
    """Write ``k`` recommendations per user to the parquet file ``path`` (columns userId, rank,
    movieId, score, source), replacing it only once complete.

    ``users``: the ids to recommend for (the data's own ids for a custom dataset); ``None``:
    every user the model knows. An id the model does not know gets the popular list (``source``
    ``popular``), as over REST. Returns counts and seconds.
    """
    started = time.perf_counter()
    codec = rec.codecs["users"] if rec.codecs else None
    items_out = rec.codecs["items"].ids[rec.item_index.ids] if rec.codecs else rec.item_index.ids
    if users is None:
        rows = np.arange(len(rec.user_index))
        given = (codec.ids[rec.user_index.ids] if codec is not None else rec.user_index.ids)
    else:
        given = _user_ids(users, text=codec is not None and codec.kind == "string")
        codes = codec.encode(given)[0] if codec is not None else given
        rows = rec.user_index.index(codes)
    schema = pa.schema([("userId", pa.string() if given.dtype == object else pa.int64()), ("rank", pa.int16()),
                        ("movieId", pa.string() if items_out.dtype == object else pa.int64()),
                        ("score", pa.float32()), ("source", pa.string())])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    show = progress if progress is not None else sys.stderr.isatty()
    written = unknown = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            blocks = tqdm(range(0, len(rows), BLOCK_USERS), desc="recommend", unit="block", leave=False,
                          disable=not show)
            for start in blocks:
                part, ids = rows[start:start + BLOCK_USERS], given[start:start + BLOCK_USERS]
                table, n_unknown = _block(rec, part, ids, items_out, k, exclude_seen, schema)
                writer.write_table(table)
                written += table.num_rows
                unknown += n_unknown
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"users": int(len(rows)), "unknown_users": int(unknown), "rows": int(written), "k": int(k),
            "seconds": time.perf_counter() - started}


def _block(rec, rows: np.ndarray, ids: np.ndarray, items_out: np.ndarray, k: int, exclude_seen: bool,
           schema: pa.Schema) -> tuple[pa.Table, int]:
    known = rows >= 0
    n_known = int(known.sum())
    width = min(k, len(items_out))
    idx = np.empty((len(rows), width), np.int64)
    val = np.empty((len(rows), width), np.float32)
    if n_known:
        idx[known], val[known] = rec.ranker.top_items(rows[known], k, exclude_seen, parallel=True)
    if n_known < len(rows):  # the popular list, scored by its rating counts as over REST
        popular = rec.ranker.popular_order[:width]
        idx[~known] = popular
        val[~known] = rec.column("n_ratings")[popular].astype(np.float32)
    source = np.where(known, "personal", "popular").repeat(width)
    keep = np.isfinite(val).ravel()  # fewer unseen items than k: drop the fillers
    columns = [np.repeat(ids, width), np.tile(np.arange(1, width + 1, dtype=np.int16), len(rows)),
               items_out[idx.ravel()], val.ravel(), source]
    arrays = [pa.array(c[keep], type=f.type) for c, f in zip(columns, schema)]
    return pa.Table.from_arrays(arrays, schema=schema), len(rows) - n_known


def _user_ids(users, text: bool) -> np.ndarray:
    """``users`` as the model's ids: text, or integers (written plainly; a float only when whole),
    else a :class:`DataError` naming the first bad one, as a REST request would be refused."""
    out = []
    for row, user in enumerate(users):
        if isinstance(user, (bool, np.bool_)) or user is None:
            value = None
        elif text:
            value = user if isinstance(user, str) else str(user) if isinstance(user, (int, np.integer)) else None
        elif isinstance(user, (int, np.integer)):
            value = int(user)
        elif isinstance(user, str) and re.fullmatch(r"\s*[+-]?\d+\s*", user):
            value = int(user)
        elif isinstance(user, (float, np.floating)) and float(user).is_integer() and abs(user) < 2**53:
            value = int(user)
        else:
            value = None
        if value is None or (not text and not -(2**63) <= value < 2**63):
            raise DataError(f"user {user!r} (row {row + 1} of the users) is not {'a text' if text else 'an integer'} id")
        out.append(value)
    return np.asarray(out, dtype=object if text else np.int64)


def read_users(path) -> list:
    """The ``userId`` column of a CSV or parquet file (a CSV's as written: ``007`` stays ``007``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"users file {path} cannot be read: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"userId": pa.string()}, null_values=[""], strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"users file {path} cannot be read: {exc}") from exc
    if "userId" not in table.column_names:
        raise DataError(f"users file {path} needs a userId column; it has {', '.join(table.column_names) or 'none'}")
    column = table.column("userId")
    if column.null_count:
        raise DataError(f"users file {path}: {column.null_count} row(s) without a userId")
    return column.to_pylist()
