"""The REST request contract: which tasks, columns and params a request may carry, and its limits.

:func:`answer` checks one request and answers it with a
:class:`~mfrec.serving.recommender.Recommender`; a refused request raises
:class:`~mfrec.errors.RequestError` naming the problem (the pyfunc turns it into HTTP 400).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mfrec.errors import RequestError

TASKS = ("predict", "recommend", "similar", "fold_in")
TASK_COLUMNS = {"predict": ("userId", "movieId"), "recommend": ("userId",), "similar": ("movieId",),
                "fold_in": ("movieId", "rating")}
MAX_ROWS = 100_000
MAX_K = 1000
# Rows an answer may have (users x k, movies x k, customers x k; predict answers its rows).
MAX_ANSWER_ROWS = 100_000
# Fold-in solves all of a request's customers in one batch, each ranked against the whole
# catalogue: the cap bounds what one request may ask.
MAX_FOLD_IN_CUSTOMERS = 1000
# Columns are typed "any" in the signature so raw values reach the model, which checks them
# itself (MLflow truncates 12.7 to 12 in a long column, and refuses JSON integers in a double
# one). Ids are checked as float64, exact only below 2**53, so valid ids are 0 <= id < MAX_ID.
MAX_ID = 2**53


def answer(rec, frame, params=None) -> list[dict]:
    """Validate one request and answer it with ``rec``: a list of row dicts.

    Rows rather than a DataFrame: MLflow serialises a list as is, and for a typical 10-row
    answer building and serialising a DataFrame cost more than the recommendation itself.
    ``pd.DataFrame(answer(...))`` gives the table.
    """
    task, k, exclude_seen = _params(params or {})
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except Exception as exc:  # noqa: BLE001
            raise RequestError(f"input must be a table with columns userId, movieId, rating: {_clip(str(exc))}") from None
    # Each column fetched once and by position: a lookup by name first builds the column
    # index's hash table, and frame.dtypes builds a Series, each costing more than ranking
    # a user's catalogue (MLflow hands every request a new frame).
    columns = dict(frame.items())
    if len(columns) != frame.shape[1]:  # a name given twice: which value was meant is unknown
        names = [str(c) for c in frame.columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise RequestError(f"input has repeated column name(s): {_clip(', '.join(repeated))}")
    columns = _unwrap_columns(columns, len(frame))
    n_rows = len(next(iter(columns.values()))) if columns else len(frame)
    if n_rows > MAX_ROWS:
        raise RequestError(f"too many input rows: {n_rows} (at most {MAX_ROWS:,} per request)")
    implicit = rec.bundle.implicit  # choices, not ratings: fold_in takes the films alone
    needed = ("movieId",) if implicit and task == "fold_in" else TASK_COLUMNS[task]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise RequestError(f"task {task!r} needs column(s) {', '.join(needed)}; missing: {', '.join(missing)}")
    ids = _Ids(rec.codecs)
    if task == "predict":
        return ids.decode(rec.predict(ids.read(columns, "userId"), ids.read(columns, "movieId"))).records()
    n_items = len(rec.item_index)
    if task == "similar":
        movies = ids.read(columns, "movieId")
        _check_size(len(np.unique(movies)), min(k, n_items - 1), "movies")
        return ids.decode(rec.similar(movies, k)).records()
    if task == "recommend":
        users = ids.read(columns, "userId")
        _check_size(len(np.unique(users)), min(k, n_items), "users")
        return ids.decode(rec.recommend(users, k, exclude_seen)).records()
    ratings = np.ones(n_rows, np.float32) if implicit else _ratings(columns, rec.rating_range)
    named = "userId" in columns and columns["userId"].notna().any()
    users = ids.read(columns, "userId") if named else ids.anonymous(n_rows)
    n_customers = len(np.unique(users))
    if n_customers > MAX_FOLD_IN_CUSTOMERS:
        raise RequestError(f"too many fold_in customers: {n_customers} distinct userId values "
                           f"(at most {MAX_FOLD_IN_CUSTOMERS} per request)")
    _check_size(n_customers, min(k, n_items), "customers")
    return ids.decode(rec.fold_in(users, ids.read(columns, "movieId"), ratings, k, exclude_seen)).records()


class _Ids:
    """A request's ids as the model's codes, and the answer's codes as ids again.

    A MovieLens model's ids are its codes. A model of data with ids of its own (``dataset=custom``:
    text or 64-bit integers) has an :class:`~mfrec.data.ids.IdCodec` a side; ids it does not know
    get codes past its end, which the model treats as unknown and the answer names again.
    """

    SIDES = {"userId": "users", "movieId": "items", "similar_movieId": "items"}

    def __init__(self, codecs: dict | None):
        self.codecs = codecs
        self.extra: dict[str, np.ndarray] = {}

    def read(self, columns: dict, column: str) -> np.ndarray:
        if self.codecs is None:
            return _ids(columns, column)
        side = self.SIDES[column]
        codec = self.codecs[side]
        codes, self.extra[side] = codec.encode(_own_ids(columns[column], column, codec.kind))
        return codes

    def anonymous(self, n_rows: int) -> np.ndarray:
        """One customer with no userId: answered as userId 0 ("" where ids are text)."""
        if self.codecs is None:
            return np.zeros(n_rows, np.int64)
        codec = self.codecs["users"]
        self.extra["users"] = np.array(["" if codec.kind == "string" else 0], dtype=codec.ids.dtype)
        return np.full(n_rows, len(codec.ids), np.int64)

    def decode(self, table):
        if self.codecs is None:
            return table
        for name in table:
            side = self.SIDES.get(name)
            if side is not None:
                codec = self.codecs[side]
                table[name] = codec.decode(table[name], self.extra.get(side, codec.ids[:0]))
        return table


def _own_ids(series: pd.Series, column: str, kind: str) -> np.ndarray:
    """A column of a custom model's ids: text (integers are read as their digits) or int64."""
    dtype = series.dtype
    if kind == "string":
        if pd.api.types.is_string_dtype(dtype) and not isinstance(dtype, np.dtype) and not series.isna().any():
            return series.to_numpy(dtype=object)
        if isinstance(dtype, np.dtype) and dtype.kind in "iu":
            return np.array([str(v) for v in series.tolist()], dtype=object)
        values = series.tolist()
        for row, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer)):
                raise RequestError(f"column {column!r} must hold ids (text); row {row} has {_show(v)}")
        return np.array([v if isinstance(v, str) else str(int(v)) for v in values], dtype=object)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu" and (dtype.kind == "i" or not len(series)
                                                              or series.max() < 2**63):
        return series.to_numpy().astype(np.int64, copy=False)
    values = series.tolist()
    for row, v in enumerate(values):
        integral = isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and np.isfinite(v)
                                                         and float(v).is_integer() and abs(v) < MAX_ID)
        if isinstance(v, (bool, np.bool_)) or not integral or not -(2**63) <= int(v) < 2**63:
            raise RequestError(f"column {column!r} must hold integer ids; row {row} has {_show(v)}")
    return np.array([int(v) for v in values], dtype=np.int64)


def _check_size(owners: int, k: int, what: str) -> None:
    """Refuse, before any scoring, an answer of more than ``MAX_ANSWER_ROWS`` rows."""
    if owners * k > MAX_ANSWER_ROWS:
        raise RequestError(f"the answer would have {owners:,} {what} x {k} = {owners * k:,} rows, more than "
                           f"{MAX_ANSWER_ROWS:,}: ask for fewer {what} or a smaller k")


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
        raise RequestError(f"unknown task {_show(task)}; expected one of {', '.join(TASKS)}")
    k = params.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {_show(k)}")
    exclude_seen = params.get("exclude_seen", True)
    if not isinstance(exclude_seen, (bool, np.bool_)):
        raise RequestError(f"exclude_seen must be true or false, got {_show(exclude_seen)}")
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
        try:
            values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        except (OverflowError, TypeError, ValueError):  # e.g. an integer too large for a float
            values = np.array([_number(v) for v in series], dtype=np.float64)
    finite = np.isfinite(values)
    bad = ~finite | _bools(series)
    bad[finite] |= out_of_range(values[finite])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise RequestError(f"column {column!r} must hold {requirement}; row {row} has "
                          f"{_show(series.iloc[row])} ({int(bad.sum())} bad value(s))")
    return values


def _bools(column: pd.Series) -> np.ndarray:
    """Where ``column`` holds JSON true/false, which pandas would otherwise read as 1/0."""
    if column.dtype == object:
        return np.fromiter((isinstance(v, (bool, np.bool_)) for v in column), dtype=bool, count=len(column))
    if pd.api.types.is_bool_dtype(column.dtype):
        return np.ones(len(column), dtype=bool)
    return np.zeros(len(column), dtype=bool)


def _number(value) -> float:
    """``value`` as a float, NaN when it is not a number a float can hold."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.number)):
        return float("nan")
    try:
        return float(value)
    except (OverflowError, ValueError):
        return float("nan")


# Longest piece of a request an error message quotes.
SHOWN = 100


def _show(value) -> str:
    """A request's value for an error message, cut to ``SHOWN`` characters."""
    return _clip(repr(value.item() if isinstance(value, np.generic) else value))


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text):,} characters)"
