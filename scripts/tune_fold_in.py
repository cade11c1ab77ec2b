"""Choose how much a new customer's unrated films count in fold-in, on the validation split.

    python scripts/tune_fold_in.py --data-path ../shared/data/ml-latest-small.zip

Fits the default model on the 72% train split, then treats every validation user with a
relevant validation rating as a new customer who told us ``n`` of their training ratings
(a seeded sample). Their fold-in recommendations (their other training films excluded, as
for any known user) are scored against their validation ratings with the metric the
pipeline uses for test (NDCG@10). Prints a markdown table over the unrated weight.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec import metrics, scoring  # noqa: E402
from mfrec.prepare import load_prepared, prepare  # noqa: E402
from mfrec.recommender import csr_from_pairs  # noqa: E402
from mfrec.train import TrainConfig  # noqa: E402
from mfrec.workflow import train_and_evaluate  # noqa: E402

WEIGHTS = (1.0, 0.3, 0.1, 0.03, 0.01)
KNOWN = (3, 5, 10, 20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="")
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.dataset, args.data_path, out_dir=Path(tmp) / "p", progress=False)
        p = load_prepared(Path(tmp) / "p")
    rec = train_and_evaluate(p.train, p.val, p.val, p.movies, TrainConfig(progress=False), refit=False).recommender
    users, relevant = metrics.relevant_sets(p.val, rec.user_index.index(p.val["userId"].to_numpy()),
                                            rec.item_index.index(p.val["movieId"].to_numpy()))
    by_user = {u: g for u, g in p.train.groupby("userId")}
    print("| films told | " + " | ".join(f"weight {w}" for w in WEIGHTS) + " |")
    print("|---|" + "---|" * len(WEIGHTS))
    for n_known in KNOWN:
        rng = np.random.default_rng(args.seed)
        customers, movie_ids, ratings = [], [], []
        for j, row in enumerate(users):
            frame = by_user[rec.user_index.ids[row]]
            told = frame.iloc[rng.choice(len(frame), min(n_known, len(frame)), replace=False)]
            customers.append(np.full(len(told), j))
            movie_ids.append(told["movieId"].to_numpy())
            ratings.append(told["rating"].to_numpy(np.float32))
        customers, movie_ids, ratings = map(np.concatenate, (customers, movie_ids, ratings))
        # Exclude everything each user rated in training, as evaluation does for known users.
        seen_rows, seen_cols = [], []
        for j, row in enumerate(users):
            films = rec.seen_indices[rec.seen_indptr[row]:rec.seen_indptr[row + 1]]
            seen_rows.append(np.full(len(films), j))
            seen_cols.append(films)
        seen = csr_from_pairs(np.concatenate(seen_rows), np.concatenate(seen_cols), len(users))
        cells = []
        for weight in WEIGHTS:
            # The same two calls Recommender.fold_in makes, with every training film excluded.
            folded = scoring.fold_in(rec.model, customers, rec.item_index.index(movie_ids), ratings, len(users),
                                     rec.fold_in_config(unrated_weight=weight))
            ranked, _ = rec.top_items(np.zeros(len(users), np.int64), 10, True, folded, seen)
            cells.append(metrics.ranking_metrics(lambda rows, k: ranked, users, relevant, 10)["ndcg_at_10"])
        print(f"| {n_known} | " + " | ".join(f"{c:.4f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
