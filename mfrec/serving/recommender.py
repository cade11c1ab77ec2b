"""The four questions a fitted model answers, with real MovieLens ids in and out.

:class:`Recommender` is what evaluation scores and what the served pyfunc model wraps, so
test metrics and REST answers come from the same code. Each task returns a :class:`Table`
of equal-length numpy columns: the REST layer turns it into JSON rows without building a
DataFrame, and ``.to_frame()`` gives one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mfrec.data.ids import IdCodec, csr_from_pairs
from mfrec.errors import RequestError
from mfrec.serving.bundle import Bundle
from mfrec.serving.ranker import Ranker

RANKED_COLUMNS = {"userId": np.int64, "rank": np.int64, "movieId": np.int64, "title": object, "genres": object,
                  "score": np.float64, "source": object}
SIMILAR_COLUMNS = {"movieId": np.int64, "rank": np.int64, "similar_movieId": np.int64, "title": object,
                   "genres": object, "score": np.float64, "cluster": np.int64}


class Table(dict):
    """An answer: column name -> numpy array, all of one length."""

    def to_frame(self) -> pd.DataFrame:
        # pandas infers str for non-empty object columns already; this also types empty ones.
        return pd.DataFrame(dict(self)).astype({name: "str" for name, v in self.items() if v.dtype == object})

    def records(self) -> list[dict]:
        """JSON-ready rows of Python scalars (what the REST API returns)."""
        names = list(self)
        return [dict(zip(names, row)) for row in zip(*(self[name].tolist() for name in names))]


class Recommender:
    """A :class:`~mfrec.serving.bundle.Bundle` answering ``predict``, ``recommend``,
    ``similar`` and ``fold_in`` (docs/serving.md)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.ranker = Ranker(bundle)
        # items' columns as numpy arrays, converted once (parquet strings are Arrow-backed)
        self._column = {name: bundle.items[name].to_numpy() for name in bundle.items.columns}
        # The data's own ids (custom data): requests and answers use them, the model codes.
        ids = bundle.ids
        self.codecs = None if ids is None else {"users": IdCodec(ids.users), "items": IdCodec(ids.items)}

    @classmethod
    def load(cls, path) -> "Recommender":
        return cls(Bundle.load(path))

    def save(self, path) -> None:
        self.bundle.save(path)

    def with_ids(self, ids) -> "Recommender":
        return Recommender(self.bundle.with_ids(ids))

    def with_clusters(self, assignments: pd.DataFrame) -> "Recommender":
        return Recommender(self.bundle.with_clusters(assignments))

    def with_ranking(self, **changes) -> "Recommender":
        return Recommender(self.bundle.with_ranking(**changes))

    def warm(self) -> None:
        """Rank everything that can be ranked ahead (known users' lists, similar films)."""
        self.ranker.known_lists(exclude_seen=True)
        self.ranker.similar_lists()

    # Shortcuts into the bundle, for evaluation and notebooks.
    model = property(lambda self: self.bundle.model)
    user_index = property(lambda self: self.bundle.user_index)
    item_index = property(lambda self: self.bundle.item_index)
    items = property(lambda self: self.bundle.items)
    meta = property(lambda self: self.bundle.meta)
    rating_range = property(lambda self: self.bundle.rating_range)

    def column(self, name: str) -> np.ndarray:
        return self._column[name]

    # ------------------------------------------------------------------ tasks
    def predict(self, user_ids, movie_ids) -> Table:
        """Clipped rating predictions: userId, movieId, prediction, known (both ids seen in training)."""
        u = self.user_index.index(user_ids)
        i = self.item_index.index(movie_ids)
        return Table(userId=np.asarray(user_ids, dtype=np.int64), movieId=np.asarray(movie_ids, dtype=np.int64),
                     prediction=self.ranker.predict(u, i).astype(np.float64), known=(u >= 0) & (i >= 0))

    def recommend(self, user_ids, k: int = 10, exclude_seen: bool = True) -> Table:
        """Per user, k rows: userId, rank, movieId, title, genres, score, source (personal | popular)."""
        distinct = unique_in_order(np.asarray(user_ids, dtype=np.int64))
        rows = self.user_index.index(distinct)
        known = rows >= 0
        parts = []
        if known.any():
            idx, val = self.ranker.top_items(rows[known], k, exclude_seen)
            parts.append(self._ranked(distinct[known], idx, val, "personal"))
        if (~known).any():
            parts.append(self._popular(distinct[~known], k))
        return _in_request_order(parts, "userId", distinct, RANKED_COLUMNS)

    def similar(self, movie_ids, k: int = 10) -> Table:
        """Per known movie, k rows: movieId, rank, similar_movieId, title, genres, score (cosine), cluster."""
        distinct = unique_in_order(np.asarray(movie_ids, dtype=np.int64))
        rows = self.item_index.index(distinct)
        known = rows >= 0
        if not known.any():
            return _empty(SIMILAR_COLUMNS)
        idx, val = self.ranker.similar(rows[known], k)
        n, kk = idx.shape
        flat = idx.ravel()
        out = Table(movieId=np.repeat(distinct[known], kk), rank=np.tile(np.arange(1, kk + 1), n),
                    similar_movieId=self.column("movieId")[flat], title=self.column("title")[flat],
                    genres=self.column("genres")[flat], score=val.ravel().astype(np.float64),
                    cluster=self.column("cluster")[flat].astype(np.int64))
        return _in_request_order([out], "movieId", distinct, SIMILAR_COLUMNS)

    def fold_in(self, user_ids, movie_ids, ratings, k: int = 10, exclude_seen: bool = True) -> Table:
        """Recommend for new customers from their ratings, without retraining.

        Each distinct ``user_ids`` value is one customer; their known movies' ratings fit a
        user bias and vectors in closed form; unknown movies are ignored, and a movie named
        twice counts once, with its last rating. A customer with no known movie gets the
        popular list. Rows as in :meth:`recommend`.

        Raises:
            RequestError: a customer's fit is not finite (names the customer).
        """
        user_ids = np.asarray(user_ids, np.int64)
        movie_rows = self.item_index.index(np.asarray(movie_ids, np.int64))
        ratings = np.asarray(ratings, np.float32)
        customers = unique_in_order(user_ids)
        known = (movie_rows >= 0) & _last_of_each(user_ids, movie_rows)
        fitted = unique_in_order(user_ids[known])
        position = pd.Index(fitted).get_indexer(user_ids[known])
        parts = []
        if len(fitted):
            folded = self.ranker.fold_in(position, movie_rows[known], ratings[known], len(fitted))
            finite = folded.finite()
            if not finite.all():
                raise RequestError(f"fold_in for customer {fitted[np.flatnonzero(~finite)[0]]} gives no finite "
                                   "fit: check the ratings given")
            seen = csr_from_pairs(position, movie_rows[known], len(fitted))
            idx, val = self.ranker.top_items(np.zeros(len(fitted), np.int64), k, exclude_seen, folded, seen)
            parts.append(self._ranked(np.asarray(fitted), idx, val, "personal"))
        cold = np.setdiff1d(customers, np.asarray(fitted, dtype=np.int64))
        if len(cold):
            parts.append(self._popular(cold, k))
        return _in_request_order(parts, "userId", customers, RANKED_COLUMNS)

    # ------------------------------------------------------------------ formatting
    def _ranked(self, owners: np.ndarray, idx: np.ndarray, val: np.ndarray, source: str) -> Table:
        n, kk = idx.shape
        flat = idx.ravel()
        out = Table(userId=np.repeat(owners.astype(np.int64), kk), rank=np.tile(np.arange(1, kk + 1), n),
                    movieId=self.column("movieId")[flat], title=self.column("title")[flat],
                    genres=self.column("genres")[flat], score=val.ravel().astype(np.float64),
                    source=np.full(n * kk, source, dtype=object))
        finite = np.isfinite(out["score"])  # fewer unseen items than k: drop the -inf fillers
        return out if finite.all() else Table({name: v[finite] for name, v in out.items()})

    def _popular(self, owners: np.ndarray, k: int) -> Table:
        pop = self.ranker.popular_order[:k]
        counts = self.column("n_ratings")[pop].astype(np.float32)
        return self._ranked(owners, np.tile(pop, (len(owners), 1)), np.tile(counts, (len(owners), 1)), "popular")


def _last_of_each(owners: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Where a row is its owner's last mention of its item."""
    if len(items) < 2:
        return np.ones(len(items), dtype=bool)
    key = np.stack([owners, items], 1)[::-1]
    _, first = np.unique(key, axis=0, return_index=True)
    keep = np.zeros(len(items), dtype=bool)
    keep[len(items) - 1 - first] = True
    return keep


def unique_in_order(values) -> np.ndarray:
    """Distinct values in order of first appearance (``pd.unique`` without its hash-table
    set-up, which dominates one-user requests)."""
    values = np.asarray(values)
    if len(values) < 2 or (values[0] == values).all():
        return values[:1].copy()
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _empty(schema: dict) -> Table:
    return Table({name: np.zeros(0, dtype=dtype) for name, dtype in schema.items()})


def _in_request_order(parts: list, key: str, order: np.ndarray, schema: dict) -> Table:
    """Concatenate answer parts, rows grouped by ``key`` in request ``order``, then by rank."""
    parts = [p for p in parts if len(p[key])]
    if not parts:
        return _empty(schema)
    if len(parts) == 1 and np.array_equal(unique_in_order(parts[0][key]), order):
        return parts[0]  # already in request order (the common case)
    out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    position = pd.Index(order).get_indexer(out[key])
    ordered = np.lexsort((out["rank"], position))
    return Table({name: v[ordered] for name, v in out.items()})
