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

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from mfrec.datasets import FORMAT_FILES, DatasetSpec
from mfrec.errors import DataError

RATINGS_DTYPES = {"userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
MOVIES_COLUMNS = ("movieId", "title", "genres")
NO_GENRES = "(no genres listed)"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
MAX_EXAMPLES = 5

# Column kinds: how a column is typed on the fast path and checked on the diagnosis path.
_ARROW_TYPES = {
    "id": pa.int32(), "int64": pa.int64(), "rating": pa.float32(), "flag": pa.int8(),
    "text": pa.string(),
}
_INT_BOUNDS = {"id": (0, 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "flag": (0, 1)}
_NA_TOKENS = {"", "na", "n/a", "nan", "null", "none", "-nan", "#n/a"}
_RATINGS_KINDS = {"userId": "id", "movieId": "id", "rating": "rating", "timestamp": "int64"}
# Text is never an error: an empty title is kept (and counted), empty genres become NO_GENRES.
_MOVIES_KINDS = {"movieId": "id", "title": "text", "genres": "text"}


@dataclass
class Parsed:
    """A parsed dataset: ratings and movies in mfrec's schema plus what parsing found."""

    ratings: pd.DataFrame
    movies: pd.DataFrame
    report: dict = field(default_factory=dict)


class DataFiles:
    """Read-only access to dataset files in a zip or a folder.

    Files may sit at the top level or one folder down (MovieLens zips hold ``ml-1m/…``).

    Args:
        path: a ``.zip`` file or a directory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip_members: dict[str, str] | None = None
        if self.path.is_file():
            try:
                with zipfile.ZipFile(self.path) as zf:
                    infos = zf.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path} is not a readable zip archive: {exc}") from exc
            self._zip_members = _index_by_basename(
                (i.filename for i in infos if not i.is_dir()), str(self.path)
            )
        elif not self.path.is_dir():
            raise DataError(f"{self.path} does not exist or is neither a zip nor a folder")

    @property
    def is_zip(self) -> bool:
        return self._zip_members is not None

    def names(self) -> set[str]:
        """Base names of the files available (top level or one folder down)."""
        if self._zip_members is not None:
            return set(self._zip_members)
        return {p.name for p in self._dir_files()}

    def label(self, name: str) -> str:
        """Human-readable location of ``name`` for messages."""
        if self._zip_members is not None:
            return f"{self.path}:{self._zip_members.get(name, name)}"
        return str(self._dir_path(name))

    def member(self, name: str) -> str:
        """Path of ``name`` inside the zip."""
        if self._zip_members is None or name not in self._zip_members:
            raise DataError(f"{name} not found in {self.path}")
        return self._zip_members[name]

    def open(self, name: str) -> IO[bytes]:
        """Open ``name`` for binary reading (a streaming reader for zip members)."""
        if self._zip_members is not None:
            member = self.member(name)
            zf = zipfile.ZipFile(self.path)
            try:
                return _ClosingZipMember(zf, zf.open(member))
            except Exception:
                zf.close()
                raise
        return open(self._dir_path(name), "rb")

    def _dir_files(self) -> list[Path]:
        files = [p for p in self.path.iterdir() if p.is_file()]
        ratings_files = {r for r, _ in FORMAT_FILES.values()}
        if not any(p.name in ratings_files for p in files):
            # An extracted zip: the files sit in its one folder.
            subdirs = [p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if len(subdirs) == 1:
                files = [p for p in subdirs[0].iterdir() if p.is_file()]
        return files

    def _dir_path(self, name: str) -> Path:
        for p in self._dir_files():
            if p.name == name:
                return p
        raise DataError(f"{name} not found in {self.path}")


class _ClosingZipMember(io.RawIOBase):
    """A zip member stream that also closes its ZipFile."""

    def __init__(self, zf: zipfile.ZipFile, stream: IO[bytes]):
        self._zf, self._stream = zf, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._zf.close()
        super().close()


def _index_by_basename(names, where: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) > 2 or parts[-1].startswith("."):
            continue
        base = parts[-1]
        # A top-level file wins over one inside a folder; two folders with the same file are
        # ambiguous only if the file is one we read, so the first wins and detect_format checks.
        if base not in index or len(parts) < len(index[base].strip("/").split("/")):
            index[base] = name
    return index


def detect_format(files: DataFiles) -> str:
    """Name the format (``csv``, ``100k``, ``1m``) from the ratings file present.

    Raises:
        DataError: no known ratings file is present.
    """
    names = files.names()
    for fmt, (ratings_file, _) in FORMAT_FILES.items():
        if ratings_file in names:
            return fmt
    wanted = ", ".join(r for r, _ in FORMAT_FILES.values())
    raise DataError(
        f"{files.path} holds no MovieLens ratings file ({wanted}) at its top level or one "
        f"folder down; found: {', '.join(sorted(names)) or 'nothing'}"
    )


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
        layout = _Layout(",", header=True)
        opener = lambda: files.open(name)  # noqa: E731
    elif fmt == "100k":
        layout = _Layout("\t", header=False, names=tuple(_RATINGS_KINDS), quoted=False)
        opener = lambda: files.open(name)  # noqa: E731
    else:  # ml-1m: pyarrow splits on one character, so map "::" to a tab first (24 MB file).
        with files.open(name) as f:
            data = f.read().replace(b"::", b"\t")
        layout = _Layout("\t", header=False, names=tuple(_RATINGS_KINDS), quoted=False,
                         shown_delimiter="::")
        opener = lambda: io.BytesIO(data)  # noqa: E731
    df = _read_table(opener, files.label(name), _RATINGS_KINDS, layout, scale, step)
    return df.astype(RATINGS_DTYPES, copy=False)


def read_movies(files: DataFiles, fmt: str) -> pd.DataFrame:
    """Read the movies file of ``fmt`` into (movieId, title, genres), sorted by movieId."""
    name = FORMAT_FILES[fmt][1]
    label = files.label(name)
    if fmt == "csv":
        df = _read_table(lambda: files.open(name), label, _MOVIES_KINDS, _Layout(",", header=True))
    else:
        with files.open(name) as f:
            # latin-1 files, small (<4k movies): transcode once so pyarrow sees UTF-8.
            text = f.read().decode("latin-1")
        if fmt == "1m":
            data = text.replace("::", "\t").encode()
            layout = _Layout("\t", header=False, names=MOVIES_COLUMNS, quoted=False,
                             shown_delimiter="::")
            df = _read_table(lambda: io.BytesIO(data), label, _MOVIES_KINDS, layout)
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


@dataclass(frozen=True)
class _Layout:
    delimiter: str
    header: bool
    names: tuple[str, ...] = ()
    quoted: bool = True
    shown_delimiter: str | None = None  # how lines are quoted back in messages

    def parse_options(self, **kw) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter,
                                  quote_char='"' if self.quoted else False, **kw)

    def read_options(self, **kw) -> pacsv.ReadOptions:
        if self.header:
            return pacsv.ReadOptions(**kw)
        return pacsv.ReadOptions(column_names=list(self.names), **kw)


def _read_header(opener: Callable[[], IO[bytes]], layout: _Layout) -> list[str]:
    with opener() as f:
        line = f.readline().decode("utf-8-sig", errors="replace")
    row = next(csv.reader([line], delimiter=layout.delimiter), [])
    return [c.strip() for c in row]


def _read_table(opener, label, kinds: dict[str, str], layout: _Layout,
                scale=(0.5, 5.0), step=0.5) -> pd.DataFrame:
    if layout.header:
        header = _read_header(opener, layout)
        missing = [c for c in kinds if c not in header]
        if missing:
            raise DataError(
                f"{label}: missing required column(s) {', '.join(missing)}; "
                f"header has: {', '.join(header) or '(empty)'}"
            )
    try:
        with opener() as f:
            table = pacsv.read_csv(
                f,
                read_options=layout.read_options(),
                parse_options=layout.parse_options(),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: _ARROW_TYPES[k] for c, k in kinds.items()},
                    include_columns=list(kinds),
                ),
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        table, failure = None, exc  # diagnosed below, with line numbers
    if table is not None and not any(table.column(c).null_count for c in kinds):
        # Column by column, freeing each Arrow buffer once converted; then hand the freed
        # memory back (Arrow's pool keeps it otherwise: ~0.35 GB at 25M ratings).
        df = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        pa.default_memory_pool().release_unused()
        if not _typed_problems(df, kinds, scale, step):
            return df
        failure = None
    try:
        error = _diagnose(opener, label, kinds, layout, scale, step)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{label}: cannot be parsed: {exc}") from exc
    if error is None:
        raise DataError(f"{label}: cannot be parsed: {failure or 'unknown problem'}")
    raise error


def _typed_problems(df: pd.DataFrame, kinds, scale, step, chunk: int = 1 << 20) -> bool:
    """Whether any parsed value fails its range check; in chunks, so the checks' float
    temporaries stay small next to a 25M-row table."""
    for col, kind in kinds.items():
        if kind in ("id", "flag", "rating"):
            values = df[col].to_numpy()
            for start in range(0, len(values), chunk):
                bad = _value_problems(values[start:start + chunk], kind, scale, step)
                if any(mask.any() for mask in bad.values()):
                    return True
    return False


def _value_problems(values: np.ndarray, kind: str, scale, step) -> dict[str, np.ndarray]:
    """Range checks on parsed numbers (NaN rows are ignored here: reported as missing)."""
    if kind == "rating":
        lo, hi = scale
        outside = (values < lo) | (values > hi)
        with np.errstate(invalid="ignore"):
            q = values / step
            off_grid = ~outside & np.isfinite(values) & (np.abs(q - np.round(q)) > 1e-6)
        return {f"outside {float(lo)}..{float(hi)}": outside,
                f"not a multiple of {float(step)}": off_grid}
    if kind == "id":
        return {"negative": values < 0}
    if kind == "flag":
        return {"not 0 or 1": (values != 0) & (values != 1)}
    return {}


def _diagnose(opener, label, kinds, layout: _Layout, scale, step) -> DataError | None:
    """Re-read every field as text and describe each problem with example lines.

    Returns ``None`` if no row-level problem is found.
    """
    invalid: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    n_columns = len(layout.names) if not layout.header else None
    with opener() as f:
        table = pacsv.read_csv(
            f,
            # Single-threaded so that the handler sees physical line numbers.
            read_options=layout.read_options(use_threads=False),
            parse_options=layout.parse_options(ignore_empty_lines=False,
                                               invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in kinds},
                include_columns=list(kinds),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    df = table.to_pandas()
    stripped = {c: df[c].astype("str").str.strip() for c in kinds}
    blank = np.logical_and.reduce([stripped[c].eq("").to_numpy() for c in kinds])
    problems: dict[str, np.ndarray] = {}
    for col, kind in kinds.items():
        s = stripped[col]
        if kind == "text":
            continue
        missing = s.str.lower().isin(_NA_TOKENS).to_numpy() & ~blank
        problems[f"missing or NaN {col}"] = missing
        if kind == "rating":
            values = pd.to_numeric(s.where(~missing, None), errors="coerce").to_numpy(np.float64)
            problems[f"non-numeric {col}"] = ~missing & ~blank & np.isnan(values)
        else:
            is_int = s.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
            problems[f"non-integer {col}"] = ~missing & ~blank & ~is_int
            values = pd.to_numeric(s.where(is_int, None), errors="coerce").to_numpy(np.float64)
            lo, hi = _INT_BOUNDS[kind]
            problems[f"{col} out of range {lo}..{hi}"] = is_int & ((values < lo) | (values > hi))
            continue  # the bounds cover the typed checks of integer columns
        for what, mask in _value_problems(values, kind, scale, step).items():
            problems[f"{col} {what}"] = mask & ~blank
    line_of = _line_mapper(1 if layout.header else 0, sorted(n for n, _ in invalid))
    sep = layout.shown_delimiter or layout.delimiter

    def content(i: int) -> str:
        return sep.join(str(df[c].iat[i]) for c in kinds)

    report: dict[str, dict] = {}
    if invalid:
        expected = n_columns or len(_read_header(opener, layout))
        report[f"wrong number of fields (expected {expected})"] = {
            "count": len(invalid),
            "examples": [(n, t.replace(layout.delimiter, sep)) for n, t in invalid[:MAX_EXAMPLES]],
        }
    bad_rows = np.zeros(len(df), dtype=bool)
    for what, mask in problems.items():
        idx = np.flatnonzero(mask)
        if len(idx):
            bad_rows |= mask
            report[what] = {
                "count": int(len(idx)),
                "examples": [(line_of(int(i)), content(int(i))) for i in idx[:MAX_EXAMPLES]],
            }
    return _problems_error(label, report, int(bad_rows.sum()) + len(invalid))


def _line_mapper(header_lines: int, skipped: list[int]) -> Callable[[int], int]:
    """Map a table row index to its 1-based file line, given the lines pyarrow skipped."""
    skipped_arr = np.asarray(skipped, dtype=np.int64)

    def line_of(row: int) -> int:
        line = header_lines + 1 + row
        # Each skipped line at or before the candidate pushes the row one line further down.
        while True:
            shifted = header_lines + 1 + row + int(np.searchsorted(skipped_arr, line, "right"))
            if shifted == line:
                return line
            line = shifted

    return line_of


def _problems_error(label: str, report: dict, n_bad: int) -> DataError | None:
    if not report:
        return None
    lines = [f"{label}: {n_bad:,} bad row(s) found; nothing was loaded. Fix or remove them:"]
    for what, info in report.items():
        shown = "; ".join(f"line {n}: {text!r}" for n, text in info["examples"])
        lines.append(f"  - {what}: {info['count']:,} row(s), e.g. {shown}")
    err = DataError("\n".join(lines))
    err.problems = report  # type: ignore[attr-defined]
    return err


def _read_100k_items(data: bytes, label: str) -> pd.DataFrame:
    flag_names = [f"g{i}" for i in range(len(GENRES_100K))]
    names = ("movieId", "title", "release_date", "video_release_date", "imdb_url", *flag_names)
    kinds = {"movieId": "id", "title": "text", **{g: "flag" for g in flag_names}}
    layout = _Layout("|", header=False, names=names, quoted=False)
    df = _read_table(lambda: io.BytesIO(data), label, kinds, layout)
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
