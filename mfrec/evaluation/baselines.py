"""Reference models on the same split: global mean, biases only, popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mfrec.data.ids import IdIndex, csr_from_pairs


def global_mean_predictions(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    return np.full(len(test), float(train["rating"].mean()))


def bias_predictions(train: pd.DataFrame, test: pd.DataFrame, reg: float = 5.0, iterations: int = 10,
                     rating_range=(0.5, 5.0)) -> np.ndarray:
    """``mu + b_u + b_i`` fitted by alternating ridge means (the classic baseline estimate)."""
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    u = users.index(train["userId"].to_numpy())
    i = items.index(train["movieId"].to_numpy())
    r = train["rating"].to_numpy(np.float64)
    mu = r.mean()
    bu, bi = np.zeros(len(users)), np.zeros(len(items))
    nu = np.bincount(u, minlength=len(users))
    ni = np.bincount(i, minlength=len(items))
    for _ in range(iterations):
        bi = np.bincount(i, r - mu - bu[u], minlength=len(items)) / (ni + reg)
        bu = np.bincount(u, r - mu - bi[i], minlength=len(users)) / (nu + reg)
    tu = users.index(test["userId"].to_numpy())
    ti = items.index(test["movieId"].to_numpy())
    pred = mu + np.where(tu >= 0, bu[np.maximum(tu, 0)], 0) + np.where(ti >= 0, bi[np.maximum(ti, 0)], 0)
    return np.clip(pred, *rating_range)


class PopularityRanker:
    """Ranks unseen items by training rating count (ties by movieId), per user."""

    def __init__(self, train: pd.DataFrame, user_index: IdIndex, item_index: IdIndex):
        u = user_index.index(train["userId"].to_numpy())
        i = item_index.index(train["movieId"].to_numpy())
        counts = np.bincount(i, minlength=len(item_index))
        self.order = np.lexsort((item_index.ids, -counts))
        self.indptr, self.indices = csr_from_pairs(u, i, len(user_index))

    def top_items(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(user_rows), k), dtype=np.int64)
        for n, row in enumerate(user_rows):
            seen = self.indices[self.indptr[row]:self.indptr[row + 1]]
            # k + len(seen) candidates always contain k unseen ones.
            head = self.order[: k + len(seen)]
            out[n] = head[~np.isin(head, seen)][:k]
        return out
