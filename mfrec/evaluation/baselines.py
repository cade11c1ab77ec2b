"""Reference models on the same split: global mean, biases only, popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mfrec.data.ids import IdIndex, csr_from_pairs, csr_rows, distinct


def _same(array):
    return array


def _mean(ratings: np.ndarray, across=None) -> float:
    if across is None:
        return float(ratings.mean())
    total, count = across.total(float(np.sum(ratings, dtype=np.float64)), len(ratings))
    return total / count


def global_mean_predictions(train: pd.DataFrame, test: pd.DataFrame, across=None) -> np.ndarray:
    """The training mean for every test rating. ``across``: a :class:`mfrec.training.shards.Shard`
    when ``train`` is one rank's users, for the mean over every rank's (here and below)."""
    return np.full(len(test), _mean(train["rating"].to_numpy(), across))


def bias_predictions(train: pd.DataFrame, test: pd.DataFrame, reg: float = 5.0, iterations: int = 10,
                     rating_range=(0.5, 5.0), items: IdIndex | None = None, across=None) -> np.ndarray:
    """``mu + b_u + b_i`` fitted by alternating ridge means (the classic baseline estimate);
    ``items``: the item index (default: ``train``'s; every rank's items with ``across``)."""
    users, items = IdIndex(train["userId"]), items if items is not None else IdIndex(train["movieId"])
    u = users.index(train["userId"].to_numpy())
    i = items.index(train["movieId"].to_numpy())
    r = train["rating"].to_numpy(np.float64)
    mu = _mean(r, across)
    summed = _same if across is None else across.sum  # an item's sums run over every rank's users
    bu, bi = np.zeros(len(users)), np.zeros(len(items))
    nu = np.bincount(u, minlength=len(users))
    ni = summed(np.bincount(i, minlength=len(items)))
    centred, residual = r - mu, np.empty_like(r)  # one buffer: at 25M ratings each temporary is 200 MB
    # (take's default mode, "raise", copies through a buffer when given ``out``: 2x slower;
    # the rows are in range, so "clip" changes nothing else.)
    for _ in range(iterations):
        np.subtract(centred, np.take(bu, u, out=residual, mode="clip"), out=residual)
        bi = summed(np.bincount(i, residual, minlength=len(items))) / (ni + reg)
        np.subtract(centred, np.take(bi, i, out=residual, mode="clip"), out=residual)
        bu = np.bincount(u, residual, minlength=len(users)) / (nu + reg)
    tu = users.index(test["userId"].to_numpy())
    ti = items.index(test["movieId"].to_numpy())
    pred = mu + np.where(tu >= 0, bu[np.maximum(tu, 0)], 0) + np.where(ti >= 0, bi[np.maximum(ti, 0)], 0)
    return np.clip(pred, *rating_range)


class PopularityRanker:
    """Ranks unseen items by training rating count (ties by movieId), per user.

    ``seen``: the users' rated items as CSR ``(indptr, indices)`` by user row, when the
    caller has them (a bundle's seen lists); else built from ``train``. ``across``: as for
    :func:`global_mean_predictions`.
    """

    def __init__(self, train: pd.DataFrame, user_index: IdIndex, item_index: IdIndex, seen: tuple | None = None,
                 across=None):
        i = item_index.index(train["movieId"].to_numpy())
        counts = np.bincount(i, minlength=len(item_index))
        if across is not None:  # every rank's ratings
            counts = across.sum(counts)
        self.order = np.lexsort((item_index.ids, -counts))
        self.position = np.empty(len(self.order), np.int64)  # each item's place in that order
        self.position[self.order] = np.arange(len(self.order))
        if seen is None:
            seen = csr_from_pairs(user_index.index(train["userId"].to_numpy()), i, len(user_index))
        self.indptr, self.indices = seen

    def top_items(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` most popular unseen items of each user (-1 past a user's last unseen one).

        Without a loop over users: if a user's seen items, sorted by place, are at places
        ``s_0 < s_1 < ...``, then ``s_m - m`` unseen items come before the m-th, and the j-th
        unseen item sits at place ``j + #{m : s_m - m <= j}``.
        """
        rows = np.asarray(user_rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.indptr) - 1):
            raise ValueError("user rows must be known users' rows (0 to the number of users - 1)")
        n_items = len(self.order)
        owner, seen = csr_rows(self.indptr, self.indices, rows)
        places = self.position[seen]
        # A seen item counts below only if s_m - m < k, so s_m < k + n - 1 (n: the user's seen
        # count): the rest, most of a user's at 25M ratings, are dropped before the sort.
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        keep = places < (lengths + (k - 1))[owner]
        # Each user's distinct places, sorted (user and place as one number), then s_m - m:
        # sorted overall, as it never decreases within a user.
        keys = distinct(owner[keep] * (n_items + 1) + places[keep])
        owner = keys // (n_items + 1)
        first = np.searchsorted(owner, np.arange(len(rows)))
        keys -= np.arange(len(keys)) - first[owner]
        wanted = np.arange(k)
        before = np.searchsorted(keys, np.arange(len(rows))[:, None] * (n_items + 1) + wanted, side="right")
        place = wanted + before - first[:, None]
        return np.where(place < n_items, self.order[np.minimum(place, n_items - 1)], -1)
