"""Id maps and index arrays: the bridge between MovieLens ids and embedding rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # training from arrays needs no pandas
    import pandas as pd


class IdIndex:
    """Sorted external ids mapped to contiguous row numbers; unknown ids map to -1.

    Ids in ``[0, DENSE_IDS)`` (MovieLens ids are, ml-32m included) also get a direct lookup
    table: one array read per id instead of a binary search. Larger ids are searched, so the
    table never outgrows 8 MB.
    """

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        self._table = None
        if len(ids) and ids.min() >= 0 and ids.max() < DENSE_IDS:
            self.ids = np.flatnonzero(np.bincount(ids))
            self._table = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
            self._table[self.ids] = np.arange(len(self.ids))
        else:
            self.ids = distinct(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids) -> np.ndarray:
        """Row numbers of ``ids`` (int64), -1 where an id is unknown."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":  # (integer ids are read as they are: no int64 copy of a column)
            ids = ids.astype(np.int64)
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        if self._table is not None:
            table = self._table
            if ids.size and ids.min() >= 0 and ids.max() < len(table):
                return table[ids]  # every id within the table (a dataset's own columns): one gather
            inside = (ids >= 0) & (ids < len(table))
            return np.where(inside, table[np.where(inside, ids, 0)], -1)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1).astype(np.int64)


# Ids below this get IdIndex's lookup table (8 MB at most).
DENSE_IDS = 1 << 20


def distinct(values) -> np.ndarray:
    """The sorted distinct values of an array: ``np.unique`` by a sort. (numpy 2.3+ finds
    distinct values by hashing first, about 30 s for 20M int64 keys where sorting takes 1.5 s.)"""
    values = np.sort(np.asarray(values).ravel())
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


@dataclass
class Interactions:
    """Ratings as parallel index arrays over fixed user and item indexes."""

    users: np.ndarray  # int64 row numbers, -1 = unknown
    items: np.ndarray
    ratings: np.ndarray  # float32
    n_users: int
    n_items: int

    @classmethod
    def from_frame(cls, df: pd.DataFrame, user_index: IdIndex, item_index: IdIndex) -> "Interactions":
        return cls(
            users=user_index.index(df["userId"].to_numpy()),
            items=item_index.index(df["movieId"].to_numpy()),
            ratings=np.array(df["rating"], dtype=np.float32),  # a writable copy
            n_users=len(user_index),
            n_items=len(item_index),
        )

    def __len__(self) -> int:
        return len(self.ratings)

    def known(self) -> "Interactions":
        """Only the rows whose user and item both have embeddings."""
        keep = (self.users >= 0) & (self.items >= 0)
        return Interactions(self.users[keep], self.items[keep], self.ratings[keep], self.n_users, self.n_items)


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of a boolean sparse matrix given its nonzero coordinates; a row's
    columns are sorted."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    width = int(cols.max()) + 1 if len(cols) else 1
    # One sort of (row, column) as one number: a quarter of the time of a two-key lexsort;
    # sorted and reduced in place (at 25M ratings each copy is 200 MB).
    keys = rows * width
    keys += cols
    keys.sort()
    counts = np.bincount(rows, minlength=n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    keys %= width
    return indptr, keys


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray]:
    """The entries of rows ``rows`` of a CSR (``indptr``, ``indices``), row after row, without
    a loop: (each entry's place in ``rows``, its column)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, indices[np.repeat(starts, lengths) + offsets]


@dataclass
class ExternalIds:
    """A dataset's own ids, for data that has them (``dataset=custom``): ``users[c]`` is the id
    of user code ``c`` (the ``userId`` of mfrec's tables), ``items[c]`` that of item code ``c``.
    Each is sorted and holds int64 or text (a numpy object array of ``str``)."""

    users: np.ndarray
    items: np.ndarray

    def kinds(self) -> dict:
        return {"users": id_kind(self.users), "items": id_kind(self.items)}


def read_id_file(path) -> np.ndarray:
    """The ``id`` column of a ``user_ids.parquet`` / ``item_ids.parquet`` file: int64 or text."""
    import pandas as pd

    column = pd.read_parquet(path)["id"]
    return column.to_numpy(np.int64) if pd.api.types.is_integer_dtype(column) else column.to_numpy(dtype=object)


def id_kind(ids: np.ndarray) -> str:
    """``"string"`` or ``"int64"``: which ids a side has."""
    return "string" if ids.dtype == object else "int64"


class IdCodec:
    """One side's own ids to codes and back, for requests: known ids get their code, others
    codes past the end (which no :class:`IdIndex` of the model knows), so that the answer
    can name them again."""

    def __init__(self, ids: np.ndarray):
        import pandas as pd

        self.ids = ids
        self.kind = id_kind(ids)
        self._index = pd.Index(ids)
        self._index.get_indexer(ids[:1])  # build the hash table now, not in the first request

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, the unknown ids that codes ``len(ids) + j`` stand for)."""
        import pandas as pd

        codes = self._index.get_indexer(values).astype(np.int64)
        unknown = codes < 0
        if not unknown.any():
            return codes, values[:0]
        extra = pd.unique(values[unknown])
        codes[unknown] = len(self.ids) + pd.Index(extra).get_indexer(values[unknown])
        return codes, np.asarray(extra)

    def decode(self, codes: np.ndarray, extra: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        out = np.empty(len(codes), dtype=self.ids.dtype)
        known = codes < len(self.ids)
        out[known] = self.ids[codes[known]]
        out[~known] = extra[codes[~known] - len(self.ids)]
        return out
