"""Accuracy metrics: rating error and top-k ranking quality.

Ranking: for each test user, rank every movie that appears in
training and is not among the user's training ratings; relevant = the user's test ratings
>= 4.0 (on such candidate movies); users with no relevant movie are skipped.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

RELEVANT_RATING = 4.0


def rmse(predicted, actual) -> float:
    diff = np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def mae(predicted, actual) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(actual, np.float64))))


def relevant_sets(test: pd.DataFrame, user_rows: np.ndarray, item_rows: np.ndarray,
                  threshold: float = RELEVANT_RATING) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users (row numbers) with at least one relevant candidate item, and those items' rows."""
    keep = (test["rating"].to_numpy() >= threshold) & (user_rows >= 0) & (item_rows >= 0)
    frame = pd.DataFrame({"u": user_rows[keep], "i": item_rows[keep]})
    groups = frame.groupby("u", sort=True)["i"]
    users = np.array(list(groups.groups.keys()), dtype=np.int64)
    return users, [np.asarray(v) for _, v in groups]


def ranking_metrics(top_items: Callable[[np.ndarray, int], np.ndarray], users: np.ndarray,
                    relevant: list[np.ndarray], k: int = 10) -> dict:
    """Mean precision, recall and NDCG at ``k`` of a ranker over users with relevant items.

    ``top_items(user_rows, k)`` returns a (len(user_rows), k) array of item rows, seen items
    already excluded: the same call that serves ``recommend``.
    """
    if len(users) == 0:
        return {f"precision_at_{k}": float("nan"), f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan")}
    ranked = top_items(users, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    for row, rel in zip(ranked, relevant):
        hits = np.isin(row, rel)
        dcg = float((hits * discounts[: len(row)]).sum())
        ideal = float(discounts[: min(len(rel), k)].sum())
        precision.append(hits.sum() / k)
        recall.append(hits.sum() / len(rel))
        ndcg.append(dcg / ideal)
    return {f"precision_at_{k}": float(np.mean(precision)), f"recall_at_{k}": float(np.mean(recall)),
            f"ndcg_at_{k}": float(np.mean(ndcg))}
