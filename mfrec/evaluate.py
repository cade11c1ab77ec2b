"""Test-set evaluation of a :class:`~mfrec.recommender.Recommender` and its baselines."""

from __future__ import annotations

import pandas as pd

from mfrec import baselines, metrics
from mfrec.recommender import Recommender


def evaluate(rec: Recommender, train: pd.DataFrame, test: pd.DataFrame, k: int = 10) -> dict:
    """Rating and ranking metrics on ``test`` (``train`` = the ratings ``rec`` was fitted on).

    Returns the metric names of interface.md: ``test_rmse``, ``test_mae``,
    ``test_precision_at_10``, ``test_recall_at_10``, ``test_ndcg_at_10`` and baselines.
    """
    pred = rec.predict(test["userId"].to_numpy(), test["movieId"].to_numpy())["prediction"].to_numpy()
    actual = test["rating"].to_numpy()
    out = {"test_rmse": metrics.rmse(pred, actual), "test_mae": metrics.mae(pred, actual)}

    user_rows = rec.user_index.index(test["userId"].to_numpy())
    item_rows = rec.item_index.index(test["movieId"].to_numpy())
    users, relevant = metrics.relevant_sets(test, user_rows, item_rows)
    ranking = metrics.ranking_metrics(lambda rows, kk: rec.top_items(rows, kk)[0], users, relevant, k)
    out.update({f"test_{name}": value for name, value in ranking.items()})

    out["baseline_global_mean_rmse"] = metrics.rmse(baselines.global_mean_predictions(train, test), actual)
    out["baseline_bias_rmse"] = metrics.rmse(baselines.bias_predictions(train, test, rating_range=rec.rating_range), actual)
    popularity = baselines.PopularityRanker(train, rec.user_index, rec.item_index)
    pop = metrics.ranking_metrics(popularity.top_items, users, relevant, k)
    out[f"baseline_popularity_ndcg_at_{k}"] = pop[f"ndcg_at_{k}"]
    out["test_ranked_users"] = int(len(users))
    return out
