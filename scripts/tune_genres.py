"""Choose the weight and prior of known users' genre taste on the validation split.

    python scripts/tune_genres.py --data-path path/to/ml-latest-small.zip

Fits the default model on the 72% train split and scores its ``recommend`` ranking (every
training film excluded) on the validation ratings with the pipeline's NDCG@10, over the
genre weight and prior (mfrec/serving/genres.py). Prints a markdown table. The fold-in weight is
chosen by scripts/tune_fold_in.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.evaluation.metrics import ranking_metrics, relevant_sets  # noqa: E402
from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.serving.bundle import RankingConfig  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.workflow import train_and_evaluate  # noqa: E402

WEIGHTS = (0.0, 0.05, 0.07, 0.08, 0.1, 0.12, 0.15)
PRIORS = (5.0, 20.0, 50.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="")
    ap.add_argument("--dataset", default="ml-latest-small")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(args.dataset, args.data_path), Path(tmp) / "p", progress=False)
        p = load_prepared(Path(tmp) / "p")
    rec = train_and_evaluate(p.train, p.val, p.val, p.movies, TrainConfig(progress=False).with_prior(),
                             RankingConfig().with_prior(), refit=False).recommender
    users, relevant = relevant_sets(p.val, rec.user_index.index(p.val["userId"].to_numpy()),
                                    rec.item_index.index(p.val["movieId"].to_numpy()))
    print("| genre prior | " + " | ".join(f"weight {w}" for w in WEIGHTS) + " |")
    print("|---|" + "---|" * len(WEIGHTS))
    for prior in PRIORS:
        cells = []
        for w in WEIGHTS:
            setting = rec.with_ranking(genre_prior=prior, genre_weight=w)
            ndcg = ranking_metrics(lambda rows, k: setting.ranker.top_items(rows, k)[0], users, relevant, 10)["ndcg_at_10"]
            cells.append(f"{ndcg:.4f}")
        print(f"| {prior:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
