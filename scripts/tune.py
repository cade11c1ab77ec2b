"""Hyper-parameter search on the validation split (never the test split).

    python scripts/tune.py --data-path ../shared/data/ml-latest-small.zip [--grid als]

For each configuration: fit on train with early stopping on val, then score the val split
with the same metrics the pipeline reports on test. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.evaluation.evaluate import evaluate  # noqa: E402
from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.workflow import train_and_evaluate  # noqa: E402

GRIDS = {
    "als": {"reg": [2.5, 5.0, 10.0], "implicit_weight": [0.5, 1.0, 2.0], "confidence": [2.0, 3.0, 5.0]},
    "als-edge": {"reg": [1.5, 2.5], "implicit_weight": [2.0, 4.0], "confidence": [5.0, 8.0]},
    "als-bias": {"bias_reg": [1.0, 2.0, 3.0, 5.0, 8.0, 12.0]},
    "als-bias5": {"bias_reg": [5.0], "reg": [2.5, 5.0], "implicit_weight": [2.0, 4.0], "confidence": [3.0, 5.0, 8.0]},
    "als-factors": {"n_factors": [16, 32, 64], "reg": [2.5, 10.0, 40.0]},
    # The Adam solver's searches (docs/tuning.md, "Adam solver").
    "quick": {"solver": ["adam"], "reg": [5.0, 10.0, 20.0], "implicit_weight": [0.5, 1.0]},
    "steps": {"solver": ["adam"], "reg": [10.0], "batch_size": [8192, 16384], "lr": [0.01, 0.02]},
}
RATING_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="")
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--grid", default="als", choices=sorted(GRIDS))
    ap.add_argument("--n-factors", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(args.dataset, args.data_path), Path(tmp) / "p", progress=False)
        p = load_prepared(Path(tmp) / "p")
    grid = GRIDS[args.grid]
    keys = list(grid)
    weights = " | ".join(f"NDCG w={w}" for w in RATING_WEIGHTS)
    print("| " + " | ".join(keys) + f" | best epoch | val RMSE | {weights} | seconds |")
    print("|" + "---|" * (len(keys) + 3 + len(RATING_WEIGHTS)))
    for combo in itertools.product(*grid.values()):
        cfg = TrainConfig(**{"n_factors": args.n_factors, "progress": False, **dict(zip(keys, combo))})
        out = train_and_evaluate(p.train, p.val, p.val, p.movies, cfg, refit=False)
        m = out.metrics
        ndcg = []
        for weight in RATING_WEIGHTS:  # the ranking blend: choice logit + weight * predicted rating
            ndcg.append(evaluate(out.recommender.with_ranking(rating_weight=weight), p.train, p.val)["test_ndcg_at_10"])
        print("| " + " | ".join(str(v) for v in combo) + f" | {out.best_epoch} | {m['test_rmse']:.4f} | "
              + " | ".join(f"{v:.4f}" for v in ndcg) + f" | {m['train_seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
