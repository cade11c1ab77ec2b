"""How many films the neighbour term's EASE weights should cover: validation NDCG@10 per size.

    python scripts/neighbour_items.py --data-path path/to/ml-latest-small.zip [--sizes 512,1024,2048,4096,0]

Fits the starting-point model on the train split (as the settings search's first trial
does), then for each size M (0: every film) chooses the neighbour weight and reg on the
validation split over the search's grids and prints validation NDCG@10, the seconds of the
weights' fit (X^T X and the solve) and the bundle's share (M x M float32). The test split
is not read.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.data.ids import IdIndex, Interactions  # noqa: E402
from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.evaluation.validation import Validation  # noqa: E402
from mfrec.serving import neighbours  # noqa: E402
from mfrec.serving.bundle import RankingConfig  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.training.fit import fit  # noqa: E402
from mfrec.evaluation.weights import NEIGHBOUR_REGS, NEIGHBOUR_WEIGHTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", required=True)
    ap.add_argument("--sizes", default="512,1024,2048,4096,0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(data_path=args.data_path), Path(tmp) / "p", progress=False)
        p = load_prepared(Path(tmp) / "p")
    config = TrainConfig(progress=False).with_prior()
    users, items = IdIndex(p.train["userId"]), IdIndex(p.train["movieId"])
    model = fit(Interactions.from_frame(p.train, users, items), config,
                val=Interactions.from_frame(p.val, users, items)).model
    start = RankingConfig().with_prior()
    print("| films with weights | validation NDCG@10 | chosen weight, reg | weights' fit | bundle |")
    print("|---:|---:|---|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        neighbours.MAX_ITEMS = size or len(items)
        validation = Validation(p.train, p.val, p.movies, users, items, config)
        started = time.perf_counter()
        validation.neighbour_scores(NEIGHBOUR_REGS[0])
        seconds = time.perf_counter() - started
        tried = [(float(np.mean(validation.ndcg_per_user(model, replace(start, neighbour_weight=w, neighbour_reg=r)))),
                  w, r) for r in NEIGHBOUR_REGS for w in NEIGHBOUR_WEIGHTS]
        ndcg, weight, reg = max(tried)
        m = min(neighbours.MAX_ITEMS, len(items))
        print(f"| {m:,} | {ndcg:.4f} | {weight:g}, {reg:g} | {seconds:.2f} s | {m * m * 4 / 2**20:.0f} MB |",
              flush=True)


if __name__ == "__main__":
    main()
