"""Your own interaction table in mfrec's schema: any CSV or parquet, a file or a folder of parts.

``dataset=custom`` reads a ratings table whose columns :class:`Columns` names (user, item, rating
and timestamp; the MovieLens names by default) and, optionally, an items table (the item column,
a title and a category column whose values are split on ``separator``). Ids may be strings or
64-bit integers: each side's distinct ids, sorted, become mfrec's codes (``userId`` / ``movieId``
in the prepared files are row numbers into that list), and the lists travel with the prepared
folder and the served model, which answers with the ids it was given.

Every row is checked: a missing id, a rating that is not a finite number or a timestamp that is
neither an integer nor a date rejects the whole table with the file, line (CSV; the header is
line 1) or row (parquet, 1-based) and column of up to five examples. Rating scale: the lowest
and highest rating in the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mfrec.data.ids import ExternalIds, distinct as distinct_values
from mfrec.data.parse import NO_GENRES
from mfrec.data.parts import Where, bad, files_sha256, no_nulls, read_parts, table_files
from mfrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class Columns:
    """Which columns of your tables mean what. ``rating=""``: implicit feedback (every row is a
    choice); ``timestamp=""``: none (a temporal split is then refused); ``category=""``: none."""

    user: str = "userId"
    item: str = "movieId"
    rating: str = "rating"
    timestamp: str = "timestamp"
    items_path: str = ""  # an items table (CSV or parquet) keyed by the ``item`` column; "" for none
    title: str = "title"
    category: str = "genres"
    separator: str = "|"

    def __post_init__(self) -> None:
        for name in ("user", "item"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{name}_column must name a column of the ratings table")
        named = [c for c in (self.user, self.item, self.rating, self.timestamp) if c]
        if len(set(named)) != len(named):
            raise ConfigError(f"the column parameters name one column twice: {', '.join(named)}")
        if not self.separator:
            raise ConfigError("category_separator must not be empty")

    @property
    def implicit(self) -> bool:
        return not self.rating

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Custom:
    """A custom table read and coded: ratings and items in mfrec's schema plus the id lists."""

    ratings: pd.DataFrame  # userId int32 code, movieId int32 code, rating float32, timestamp int64
    items: pd.DataFrame  # movieId code, title, genres ("|"-separated)
    ids: ExternalIds
    report: dict
    source_sha256: str
    files: list


def read_custom(path: str | Path, columns: Columns = Columns()) -> Custom:
    """Read, check and code a ratings table (and the items table ``columns`` names).

    Raises:
        DataError: a file, column or row problem, named with its file, line or row and column.
    """
    files = table_files(path)
    wanted = [c for c in (columns.user, columns.item, columns.rating, columns.timestamp) if c]
    table, where = read_parts(files, wanted, "ratings table")
    # Column by column, each Arrow column dropped once converted: at 25M rows the text ids
    # are the largest thing in memory, so no two forms of one are kept longer than needed.
    pending, n_rows = {name: table.column(name) for name in wanted}, table.num_rows
    del table
    items, item_kind = _ids(pending.pop(columns.item), columns.item, where)
    catalogue, item_files = _read_items(columns, item_kind) if columns.items_path else (None, [])
    if catalogue is not None and catalogue["item"].dtype == object and item_kind != "string":
        items, item_kind = _as_text(items), "string"  # e.g. integer ids in parquet, text in a CSV
    item_list = items if catalogue is None else _concat(items, catalogue["item"].to_numpy())
    item_ids, _ = _code(item_list, codes=False)
    del item_list
    item_codes = _positions(item_ids, items)
    del items
    users, user_kind = _ids(pending.pop(columns.user), columns.user, where)
    user_ids, user_codes = _code(users)
    del users
    if columns.implicit:
        rating = np.ones(n_rows, dtype=np.float32)
    else:
        rating = _ratings(pending.pop(columns.rating), columns.rating, where)
    stamps = (_timestamps(pending.pop(columns.timestamp), columns.timestamp, where) if columns.timestamp
              else np.zeros(n_rows, dtype=np.int64))
    ratings = pd.DataFrame({"userId": user_codes, "movieId": item_codes, "rating": rating, "timestamp": stamps},
                           copy=False)
    titled = _items_frame(item_ids, catalogue)
    report = {"ids": {"users": user_kind, "items": item_kind}, "columns": columns.as_dict(),
              "files": [str(f) for f in files],
              "items_without_row": int(titled.attrs.pop("placeholders")),
              "feedback": "implicit" if columns.implicit else "explicit"}
    sources = files + item_files
    return Custom(ratings, titled, ExternalIds(user_ids, item_ids), report, files_sha256(sources),
                  [str(f) for f in sources])


def _is_text(kind) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _ids(column: pa.ChunkedArray, name: str, where: Where):
    """A column of ids: an int64 numpy array (kind ``int64``) or an Arrow string array (kind
    ``string``; kept in Arrow: 25M Python strings would cost gigabytes)."""
    kind = column.type
    if pa.types.is_integer(kind):
        no_nulls(column, name, "no id", where)
        if pa.types.is_uint64(kind) and column.num_chunks and pc.max(column).as_py() >= 2**63:
            return column.cast(pa.string()), "string"
        return column.cast(pa.int64()).to_numpy(), "int64"
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if not _is_text(kind):
        raise DataError(f"column {name!r} holds {kind} values: ids must be integers or text")
    # CSV fields are trimmed (a space after a comma is no part of an id); parquet text is as written.
    text = (pc.utf8_trim_whitespace(column) if where.csv else column).cast(pa.string())
    missing = pc.fill_null(pc.equal(text, ""), True).to_numpy()
    bad(missing, column.to_pylist() if missing.any() else [], name, "no id", where)
    # Integers only where every id is one written plainly, so that "007" stays "007".
    try:
        numbers = text.cast(pa.int64())
        if pc.all(pc.equal(numbers.cast(pa.string()), text)).as_py():
            return numbers.to_numpy(), "int64"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return text, "string"


def _ratings(column: pa.ChunkedArray, name: str, where: Where) -> np.ndarray:
    kind = column.type
    if _is_text(kind):
        try:
            values = pc.utf8_trim_whitespace(column).cast(pa.float64()).to_numpy()
        except pa.ArrowInvalid:  # some row is not a number: find which, by row
            text = column.to_numpy(zero_copy_only=False)
            values = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(np.float64)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).to_numpy()
    else:
        raise DataError(f"column {name!r} holds {kind} values: ratings must be numbers")
    broken = ~np.isfinite(values)
    if broken.any():
        bad(broken, column.to_pylist(), name, "no rating, or not a finite number", where)
    low, high = float(values.min()) if len(values) else 0.0, float(values.max()) if len(values) else 0.0
    if len(values) and low == high:
        raise DataError(f"column {name!r}: every rating is {low:g}, so there is nothing to learn about how people "
                        "rate: pass rating_column= (empty) to train on the rows as choices (implicit feedback)")
    return values.astype(np.float32)


def _timestamps(column: pa.ChunkedArray, name: str, where: Where) -> np.ndarray:
    """Seconds since the epoch, from integers, dates/times, or their text (integers or ISO 8601)."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        no_nulls(column, name, "no timestamp", where)
        return column.cast(pa.timestamp("s"), safe=False).cast(pa.int64()).to_numpy()  # fractions dropped
    if pa.types.is_integer(kind):
        no_nulls(column, name, "no timestamp", where)
        return column.cast(pa.int64()).to_numpy()
    if not _is_text(kind):
        raise DataError(f"column {name!r} holds {kind} values: timestamps must be integers (seconds) or dates")
    no_nulls(column, name, "no timestamp", where)
    text = pc.utf8_trim_whitespace(column)
    for target in (pa.int64(), pa.timestamp("s", tz="UTC"), pa.timestamp("s")):  # Arrow's strict parsers first
        try:
            return text.cast(target).cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
    plain = series.str.fullmatch(r"[+-]?\d+").fillna(False).to_numpy(bool)
    parsed = pd.to_datetime(series.where(~plain), utc=True, errors="coerce", format="ISO8601")
    numbers = pd.to_numeric(series.where(plain), errors="coerce").fillna(0).to_numpy(np.float64)
    broken = (~plain & parsed.isna().to_numpy()) | (plain & (np.abs(numbers) >= 2.0**63))
    bad(broken, column.to_pylist(), name, "neither an integer (seconds, within 64 bits) nor a date", where)
    since = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.float64, na_value=0)
    return np.where(plain, numbers, since).astype(np.int64)


def _read_items(columns: Columns, ratings_kind: str) -> tuple[pd.DataFrame, list[Path]]:
    """The items table as (item, title, genres), one row per id (text ids when either table's
    are), and its files."""
    files = table_files(columns.items_path)
    wanted = [c for c in (columns.item, columns.title, columns.category) if c]
    table, where = read_parts(files, list(dict.fromkeys(wanted)), "items table")
    ids, kind = _ids(table.column(columns.item), columns.item, where)
    ids = _as_numpy(_as_text(ids) if kind != ratings_kind else ids)
    frame = pd.DataFrame({"item": ids})
    dup = frame["item"].duplicated(keep=False).to_numpy()
    bad(dup, ids, columns.item, "an id listed more than once in the items table (each item needs one row)", where)

    def text(col: str) -> pd.Series:
        if not col:
            return pd.Series([""] * len(ids))
        values = table.column(col)
        try:
            values = values.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"column {col!r} of the items table holds {values.type} values: text expected") from None
        return values.to_pandas().fillna("").astype(str).str.strip()

    frame["title"] = text(columns.title)
    # Split on the separator first; a "|" inside a category would split it in mfrec's genres.
    column = table.column(columns.category) if columns.category else None
    if column is not None and (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        parts = pd.Series([[str(x) for x in (v or []) if x is not None] for v in column.to_pylist()])  # listed
    else:
        parts = text(columns.category).str.split(columns.separator, regex=False)
    frame["genres"] = parts.map(lambda p: "|".join(x.strip().replace("|", "/") for x in p if x.strip())
                                or NO_GENRES)
    return frame, files


def _as_text(values):
    """Ids as an Arrow string array (integers written out)."""
    if isinstance(values, np.ndarray):
        return pc.cast(pa.array(values), pa.string()) if values.dtype != object else pa.array(values, pa.string())
    return values


def _as_numpy(values) -> np.ndarray:
    """Ids as numpy: int64, or an object array of ``str`` (for the sorted distinct ids only)."""
    if isinstance(values, np.ndarray):
        return values
    return np.asarray(values.to_pylist(), dtype=object)


def _concat(a, b: np.ndarray):
    """The ratings' item ids and the items table's, of one kind, as one array."""
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    chunks = a.chunks if isinstance(a, pa.ChunkedArray) else [a]
    return pa.chunked_array([*chunks, _as_text(b)], type=pa.string())


def _code(values, codes: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(sorted distinct ids, each value's position among them as int32, unless ``codes`` is
    false)."""
    if isinstance(values, np.ndarray):
        if not codes:
            return distinct_values(values), None
        distinct, inverse = np.unique(values, return_inverse=True)
        return distinct, inverse.astype(np.int32)
    distinct = pc.unique(values)
    distinct = distinct.take(pc.sort_indices(distinct))
    return _as_numpy(distinct), _int32(pc.index_in(values, value_set=distinct)) if codes else None


def _positions(distinct: np.ndarray, values) -> np.ndarray:
    """Each value's position (int32) in the sorted ``distinct`` (which holds them all)."""
    if isinstance(values, np.ndarray):
        return np.searchsorted(distinct, values).astype(np.int32)
    return _int32(pc.index_in(values, value_set=pa.array(distinct, pa.string())))


def _int32(codes) -> np.ndarray:
    return codes.to_numpy().astype(np.int32, copy=False)


def _items_frame(item_ids: np.ndarray, catalogue: pd.DataFrame | None) -> pd.DataFrame:
    """One row per item code: the items table's title and categories, or the id as the title."""
    frame = pd.DataFrame({"movieId": np.arange(len(item_ids), dtype=np.int32)})
    names = _as_numpy(_as_text(item_ids))
    if catalogue is None:
        titles, genres, missing = names, np.full(len(item_ids), NO_GENRES, dtype=object), len(item_ids)
    else:
        at = pd.Index(catalogue["item"].to_numpy()).get_indexer(item_ids)
        has = at >= 0
        titles = np.where(has, catalogue["title"].to_numpy(dtype=object)[np.maximum(at, 0)], names)
        titles = np.where(has & (titles == ""), names, titles)
        genres = np.where(has, catalogue["genres"].to_numpy(dtype=object)[np.maximum(at, 0)], NO_GENRES)
        missing = int((~has).sum())
    frame["title"] = pd.Series(titles, dtype=object).astype(str)
    frame["genres"] = pd.Series(genres, dtype=object).astype(str)
    frame.attrs["placeholders"] = missing
    return frame
