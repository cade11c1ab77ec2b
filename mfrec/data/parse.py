"""Parse MovieLens files (csv, ml-100k, ml-1m layouts) into one schema, with strict validation.

Output schema:
    ratings: userId int32, movieId int32, rating float32, timestamp int64, sorted by
        (userId, movieId), one row per pair.
    movies: movieId int32, title str, genres str (``|``-separated), sorted by movieId.

Files are read straight from a zip or a folder with pyarrow and explicit dtypes, so an ml-25m
sized file costs about its final arrays in memory. Bad rows are never dropped silently: the whole
file is rejected with a :class:`~mfrec.errors.DataError` that counts each problem and quotes up to
five example lines (1-based line numbers, header included). Duplicate (user, movie) ratings are
not an error: the latest one is kept and the number removed is reported.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mfrec.data.datasets import FORMAT_FILES, DatasetSpec
from mfrec.data.files import DataFiles, detect_format
from mfrec.data.table import MAX_EXAMPLES, Layout, read_table
from mfrec.errors import DataError

RATINGS_DTYPES = {"userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
MOVIES_COLUMNS = ("movieId", "title", "genres")
NO_GENRES = "(no genres listed)"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
_RATINGS_KINDS = {"userId": "id", "movieId": "id", "rating": "rating", "timestamp": "int64"}
# Text is never an error: an empty title is kept (and counted), empty genres become NO_GENRES.
_MOVIES_KINDS = {"movieId": "id", "title": "text", "genres": "text"}


@dataclass
class Parsed:
    """A parsed dataset: ratings and movies in mfrec's schema plus what parsing found."""

    ratings: pd.DataFrame
    movies: pd.DataFrame
    report: dict = field(default_factory=dict)


def read_dataset(path: str | Path | DataFiles, spec: DatasetSpec | None = None) -> Parsed:
    """Read ratings and movies from a zip or folder.

    Args:
        path: zip, folder, or an open :class:`DataFiles`.
        spec: the dataset's spec (format and rating scale). ``None`` detects the format and uses
            MovieLens' usual scale for it (0.5-5 in half stars for csv, 1-5 otherwise).

    Raises:
        DataError: missing files or columns, or bad rows (with counts and example lines), or a
            format that is not the one ``spec`` expects.
    """
    files = path if isinstance(path, DataFiles) else DataFiles(path)
    fmt = detect_format(files)
    if spec is not None and fmt != spec.format:
        raise DataError(
            f"{files.path} looks like the {fmt!r} MovieLens layout "
            f"({FORMAT_FILES[fmt][0]}), but dataset {spec.name!r} expects "
            f"{FORMAT_FILES[spec.format][0]}; pass the matching dataset name"
        )
    if spec is not None:
        scale, step = spec.rating_scale, spec.rating_step
    else:
        scale, step = ((0.5, 5.0), 0.5) if fmt == "csv" else ((1.0, 5.0), 1.0)
    ratings_file, movies_file = FORMAT_FILES[fmt]
    for name in (ratings_file, movies_file):
        if name not in files.names():
            raise DataError(f"{files.path} has {ratings_file} but no {name}")
    raw = read_ratings(files, fmt, scale, step)
    movies = read_movies(files, fmt)
    ratings, removed, examples = dedupe_ratings(raw)
    report = {
        "format": fmt,
        "ratings_rows_read": int(len(raw)),
        "duplicates_removed": int(removed),
        "duplicate_examples": examples,
        **summarize(ratings, movies, scale, step),
    }
    return Parsed(ratings=ratings, movies=movies, report=report)


def summarize(ratings: pd.DataFrame, movies: pd.DataFrame, scale: tuple[float, float],
              step: float) -> dict:
    """Counts that describe a parsed (deduplicated) dataset."""
    rated = pd.unique(ratings["movieId"].to_numpy())
    return {
        "ratings": int(len(ratings)),
        "users": int(len(pd.unique(ratings["userId"].to_numpy()))),
        "rated_movies": int(len(rated)),
        "catalogue_movies": int(len(movies)),
        "rated_movies_not_in_catalogue": int((~np.isin(rated, movies["movieId"].to_numpy())).sum()),
        "movies_without_title": int((movies["title"].str.strip() == "").sum()),
        "rating_scale": [float(scale[0]), float(scale[1])],
        "rating_step": float(step),
    }


def read_ratings(
    files: DataFiles, fmt: str, scale: tuple[float, float] = (0.5, 5.0), step: float = 0.5
) -> pd.DataFrame:
    """Read the ratings file of ``fmt`` in file order, validated, duplicates not yet removed."""
    name = FORMAT_FILES[fmt][0]
    if fmt == "csv":
        layout = Layout(",", header=True)
        opener = lambda: files.open(name)  # noqa: E731
    elif fmt == "100k":
        layout = Layout("\t", header=False, names=tuple(_RATINGS_KINDS), quoted=False)
        opener = lambda: files.open(name)  # noqa: E731
    else:  # ml-1m: pyarrow splits on one character, so map "::" to a tab first (24 MB file).
        with files.open(name) as f:
            data = f.read().replace(b"::", b"\t")
        layout = Layout("\t", header=False, names=tuple(_RATINGS_KINDS), quoted=False,
                         shown_delimiter="::")
        opener = lambda: io.BytesIO(data)  # noqa: E731
    df = read_table(opener, files.label(name), _RATINGS_KINDS, layout, scale, step)
    return df.astype(RATINGS_DTYPES, copy=False)


def read_movies(files: DataFiles, fmt: str) -> pd.DataFrame:
    """Read the movies file of ``fmt`` into (movieId, title, genres), sorted by movieId."""
    name = FORMAT_FILES[fmt][1]
    label = files.label(name)
    if fmt == "csv":
        df = read_table(lambda: files.open(name), label, _MOVIES_KINDS, Layout(",", header=True))
    else:
        with files.open(name) as f:
            # latin-1 files, small (<4k movies): transcode once so pyarrow sees UTF-8.
            text = f.read().decode("latin-1")
        if fmt == "1m":
            data = text.replace("::", "\t").encode()
            layout = Layout("\t", header=False, names=MOVIES_COLUMNS, quoted=False,
                             shown_delimiter="::")
            df = read_table(lambda: io.BytesIO(data), label, _MOVIES_KINDS, layout)
        else:
            df = _read_100k_items(text.encode(), label)
    df["genres"] = df["genres"].where(df["genres"].str.strip() != "", NO_GENRES)
    _reject_duplicate_movies(df, label)
    df = df.sort_values("movieId", kind="stable", ignore_index=True)
    return df.astype({"movieId": "int32", "title": "str", "genres": "str"})


def dedupe_ratings(ratings: pd.DataFrame) -> tuple[pd.DataFrame, int, list[list[int]]]:
    """Keep one rating per (userId, movieId): the latest timestamp, ties to the later line.

    Returns:
        (ratings sorted by userId then movieId, number of rows removed, up to five duplicated
        ``[userId, movieId]`` pairs as examples).
    """
    u = ratings["userId"].to_numpy()
    m = ratings["movieId"].to_numpy()
    if _sorted_unique(u, m):
        # Already sorted and unique (the usual MovieLens file order): nothing to move.
        return ratings.reset_index(drop=True), 0, []
    key = (u.astype(np.int64) << 32) | m.astype(np.int64)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    same = sk[1:] == sk[:-1]
    if not same.any():
        return ratings.take(order).reset_index(drop=True), 0, []
    in_dup = np.zeros(len(sk), dtype=bool)
    in_dup[1:] |= same
    in_dup[:-1] |= same
    dup_pos = np.flatnonzero(in_dup)
    t = ratings["timestamp"].to_numpy()[order[dup_pos]]
    # Within each duplicated pair: sort by timestamp then file position and keep the last.
    sub = np.lexsort((order[dup_pos], t, sk[dup_pos]))
    dup_sorted = dup_pos[sub]
    last = np.ones(len(dup_sorted), dtype=bool)
    last[:-1] = sk[dup_sorted[1:]] != sk[dup_sorted[:-1]]
    keep = ~in_dup
    keep[dup_sorted[last]] = True
    removed = int(len(sk) - keep.sum())
    dup_keys = np.unique(sk[dup_pos])[:MAX_EXAMPLES]
    examples = [[int(k >> 32), int(k & 0xFFFFFFFF)] for k in dup_keys]
    return ratings.take(order[keep]).reset_index(drop=True), removed, examples


def _sorted_unique(u: np.ndarray, m: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether (userId, movieId) pairs strictly increase, checked in chunks (no n-sized key)."""
    n = len(u)
    for start in range(0, max(n - 1, 0), chunk):
        stop = min(start + chunk + 1, n)
        key = (u[start:stop].astype(np.int64) << 32) | m[start:stop].astype(np.int64)
        if not bool(np.all(key[1:] > key[:-1])):
            return False
    return True


def _read_100k_items(data: bytes, label: str) -> pd.DataFrame:
    flag_names = [f"g{i}" for i in range(len(GENRES_100K))]
    names = ("movieId", "title", "release_date", "video_release_date", "imdb_url", *flag_names)
    kinds = {"movieId": "id", "title": "text", **{g: "flag" for g in flag_names}}
    layout = Layout("|", header=False, names=names, quoted=False)
    df = read_table(lambda: io.BytesIO(data), label, kinds, layout)
    flags = df[flag_names].to_numpy(dtype=bool)
    genre_names = np.array(GENRES_100K, dtype=object)
    genres = ["|".join(genre_names[row]) for row in flags]  # ~1.7k movies: cheap
    return pd.DataFrame({"movieId": df["movieId"], "title": df["title"], "genres": genres})


def _reject_duplicate_movies(movies: pd.DataFrame, label: str) -> None:
    dup = movies["movieId"].duplicated(keep=False)
    if dup.any():
        ids = sorted(set(movies.loc[dup, "movieId"].tolist()))
        raise DataError(
            f"{label}: movieId listed more than once: {len(ids)} id(s), e.g. "
            f"{', '.join(map(str, ids[:MAX_EXAMPLES]))}; each movie needs exactly one row"
        )
