"""Test-set evaluation of a :class:`~mfrec.serving.recommender.Recommender` and its baselines."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mfrec.data.ids import csr_from_pairs
from mfrec.evaluation import baselines, metrics
from mfrec.serving.recommender import Recommender


# Test users ranked per step of the progress bar.
PROGRESS_USERS = 16384


def evaluate(rec: Recommender, train: pd.DataFrame, test: pd.DataFrame, k: int = 10,
             progress: bool | None = None, across=None) -> dict:
    """Rating and ranking metrics on ``test`` (``train`` = the ratings ``rec`` was fitted on).

    Returns the metric names the README's "What a run logs" lists: ``test_rmse``, ``test_mae``,
    ``test_precision_at_10``, ``test_recall_at_10``, ``test_ndcg_at_10`` and baselines. A
    model of implicit feedback has no ratings to predict: its rating metrics are NaN.
    ``progress``: a bar over the test users being ranked (None: when stderr is a terminal).
    ``across``: a :class:`mfrec.training.shards.Shard` when ``rec``, ``train`` and ``test``
    hold one rank's users (the items are every rank's): each rank ranks its own users, and
    the metrics and the baselines' statistics are every rank's (the same on each).
    """
    implicit = rec.bundle.implicit  # choices without ratings: no rating metrics (NaN, not logged)
    actual = test["rating"].to_numpy()
    if implicit:
        out = {"test_rmse": float("nan"), "test_mae": float("nan")}
    else:
        pred = rec.predict(test["userId"].to_numpy(), test["movieId"].to_numpy())["prediction"]
        out = {"test_rmse": metrics.rmse(pred, actual), "test_mae": metrics.mae(pred, actual)}

    user_rows = rec.user_index.index(test["userId"].to_numpy())
    item_rows = rec.item_index.index(test["movieId"].to_numpy())
    users, relevant = metrics.relevant_sets(test, user_rows, item_rows, rec.rating_range)
    show = progress if progress is not None else sys.stderr.isatty()

    def top_items(rows, kk):
        steps = range(0, max(len(rows), 1), PROGRESS_USERS)  # one (empty) step for no users
        bar = tqdm(steps, desc="evaluate", unit="block", leave=False, disable=not show or len(steps) < 2)
        return np.concatenate([rec.ranker.top_items(rows[s:s + PROGRESS_USERS], kk, parallel=True)[0] for s in bar])

    ranking = metrics.ranking_metrics(top_items, users, relevant, k)
    out.update({f"test_{name}": value for name, value in ranking.items()})

    if implicit:
        out["baseline_global_mean_rmse"] = out["baseline_bias_rmse"] = float("nan")
    else:
        out["baseline_global_mean_rmse"] = metrics.rmse(baselines.global_mean_predictions(train, test, across),
                                                        actual)
        items = rec.item_index if across is not None else None
        out["baseline_bias_rmse"] = metrics.rmse(baselines.bias_predictions(train, test, rating_range=rec.rating_range,
                                                                            items=items, across=across), actual)
    # The bundle's seen lists are ``train``'s ratings by user: no second copy to build.
    popularity = baselines.PopularityRanker(train, rec.user_index, rec.item_index,
                                            (rec.bundle.seen_indptr, rec.bundle.seen_indices), across)
    pop = metrics.ranking_metrics(popularity.top_items, users, relevant, k)
    out[f"baseline_popularity_ndcg_at_{k}"] = pop[f"ndcg_at_{k}"]
    out["test_ranked_users"] = int(len(users))
    return out if across is None else _every_rank(out, len(test), across)


def _every_rank(out: dict, n_test: int, across) -> dict:
    """One rank's metrics -> every rank's: ranking metrics are means over the ranked users,
    rating errors over the test ratings (root mean squares for RMSE)."""
    users = out.pop("test_ranked_users")
    by_users = [name for name in out if "_at_" in name]  # precision, recall, NDCG at k; popularity's
    by_ratings = [name for name in out if name not in by_users]  # RMSE and MAE
    parts = [out[name] * users if users else 0.0 for name in by_users]
    parts += [(out[name] ** 2 if name.endswith("rmse") else out[name]) * n_test if n_test else 0.0
              for name in by_ratings]
    *totals, all_users, all_ratings = across.total(*parts, users, n_test)
    combined = {}
    for name, total in zip(by_users + by_ratings, totals):
        count = all_users if name in by_users else all_ratings
        value = total / count if count else float("nan")
        combined[name] = math.sqrt(value) if name.endswith("rmse") else value
    combined["test_ranked_users"] = int(all_users)
    return combined


def fold_in_ndcg(rec: Recommender, told_from: pd.DataFrame, heldout: pd.DataFrame, n_told: int,
                 unrated_weight: float | None = None, seed: int = 0, k: int = 10,
                 genre_weight: float | None = None) -> float:
    """NDCG@k of fold-in for held-out users treated as new customers.

    Every user of ``heldout`` with a relevant rating "tells" ``n_told`` of their ratings in
    ``told_from`` (a seeded sample); their fold-in recommendations, with every film they
    rated in training excluded as for a known user, are scored on their ``heldout`` ratings.
    ``unrated_weight`` and ``genre_weight`` override the ranking settings' fold-in ones. Uses
    the two calls :meth:`Recommender.fold_in` makes.
    """
    users, relevant = metrics.relevant_sets(heldout, rec.user_index.index(heldout["userId"].to_numpy()),
                                            rec.item_index.index(heldout["movieId"].to_numpy()), rec.rating_range)
    rng = np.random.default_rng(seed)
    groups = dict(tuple(told_from.groupby("userId")))
    customers, movie_ids, ratings, seen_rows, seen_cols = [], [], [], [], []
    for j, row in enumerate(users):
        frame = groups[rec.user_index.ids[row]]
        told = frame.iloc[rng.choice(len(frame), min(n_told, len(frame)), replace=False)]
        customers.append(np.full(len(told), j))
        movie_ids.append(told["movieId"].to_numpy())
        ratings.append(told["rating"].to_numpy(np.float32))
        films = rec.bundle.seen_indices[rec.bundle.seen_indptr[row]:rec.bundle.seen_indptr[row + 1]]
        seen_rows.append(np.full(len(films), j))
        seen_cols.append(films)
    customers, movie_ids, ratings = map(np.concatenate, (customers, movie_ids, ratings))
    folded = rec.ranker.fold_in(customers, rec.item_index.index(movie_ids), ratings, len(users),
                               unrated_weight, genre_weight)
    seen = csr_from_pairs(np.concatenate(seen_rows), np.concatenate(seen_cols), len(users))
    ranked, _ = rec.ranker.top_items(np.zeros(len(users), np.int64), k, True, folded, seen, parallel=True)
    return metrics.ranking_metrics(lambda rows, kk: ranked, users, relevant, k)[f"ndcg_at_{k}"]
