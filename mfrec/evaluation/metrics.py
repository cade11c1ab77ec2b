"""Accuracy metrics: rating error and top-k ranking quality.

Ranking: for each test user, rank every movie that appears in
training and is not among the user's training ratings; relevant = the user's test ratings
>= 4.0 (on such candidate movies); users with no relevant movie are skipped.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

# A held-out rating is relevant (a film the ranking should find) in the top 30 % of the scale:
# 4 and up on MovieLens' 0.5-5 and 1-5 scales, 8 and up on 1-10, every row of implicit feedback (0-1).
RELEVANT_SHARE = 0.7


def relevance_threshold(rating_range=(0.5, 5.0)) -> float:
    low, high = rating_range
    return low + RELEVANT_SHARE * (high - low)


def rmse(predicted, actual) -> float:
    diff = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def mae(predicted, actual) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(actual, np.float64))))


def relevant_sets(test: pd.DataFrame, user_rows: np.ndarray, item_rows: np.ndarray,
                  rating_range=(0.5, 5.0)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users (row numbers) with at least one relevant candidate item (:func:`relevance_threshold`
    of the ratings' scale), and those items' rows."""
    keep = (test["rating"].to_numpy() >= relevance_threshold(rating_range) - 1e-9) & (user_rows >= 0) & (item_rows >= 0)
    order = np.argsort(user_rows[keep], kind="stable")  # by user; a user's items in table order
    users, items = user_rows[keep][order], item_rows[keep][order]
    users, starts = np.unique(users, return_index=True)
    return users.astype(np.int64), np.split(items, starts[1:]) if len(users) else []


def ranking_metrics(top_items: Callable[[np.ndarray, int], np.ndarray], users: np.ndarray,
                    relevant: list[np.ndarray], k: int = 10) -> dict:
    """Mean precision, recall and NDCG at ``k`` of a ranker over users with relevant items.

    ``top_items(user_rows, k)`` returns a (len(user_rows), k) array of item rows, seen items
    already excluded: the same call that serves ``recommend``.
    """
    if len(users) == 0:
        return {f"precision_at_{k}": float("nan"), f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan")}
    precision, recall, ndcg = per_user(np.asarray(top_items(users, k)), relevant, k)
    return {f"precision_at_{k}": float(np.mean(precision)), f"recall_at_{k}": float(np.mean(recall)),
            f"ndcg_at_{k}": float(np.mean(ndcg))}


def per_user(ranked: np.ndarray, relevant: list[np.ndarray], k: int = 10) -> tuple:
    """Each user's (precision, recall, NDCG) at ``k`` of ``ranked`` (one row of item rows per
    user of ``relevant``)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    counts = np.fromiter(map(len, relevant), np.int64, len(relevant))
    items = np.concatenate(relevant).astype(np.int64, copy=False) if len(relevant) else np.zeros(0, np.int64)
    # Every (user, item) pair as one number, so that one sorted lookup finds all the hits
    # (without a Python step per user: the search scores 5,000 users a ranking).
    width = int(max(ranked.max(initial=0), items.max(initial=0))) + 1
    owners = np.arange(len(relevant), dtype=np.int64)
    relevant_keys = np.sort(np.repeat(owners, counts) * width + items)
    keys = owners[:, None] * width + ranked
    position = np.searchsorted(relevant_keys, keys).clip(max=len(relevant_keys) - 1)
    hits = (relevant_keys[position] == keys) & (ranked >= 0)
    dcg = (hits * discounts[: ranked.shape[1]]).sum(1)
    ideal = np.cumsum(discounts)[np.minimum(counts, k) - 1]
    found = hits.sum(1)
    return found / k, found / counts, dcg / ideal
