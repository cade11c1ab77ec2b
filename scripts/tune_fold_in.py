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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.evaluate import fold_in_ndcg  # noqa: E402
from mfrec.prepare import load_prepared, prepare  # noqa: E402
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
    print("| films told | " + " | ".join(f"weight {w}" for w in WEIGHTS) + " |")
    print("|---|" + "---|" * len(WEIGHTS))
    for n_known in KNOWN:
        cells = [fold_in_ndcg(rec, p.train, p.val, n_known, unrated_weight=w, seed=args.seed) for w in WEIGHTS]
        print(f"| {n_known} | " + " | ".join(f"{c:.4f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
