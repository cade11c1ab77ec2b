"""Seconds per ALS sweep at 25M ratings on the CPU and on a GPU (k = 8, 32, 128), and the
default train step with evaluation on the GPU: what ``scripts/gpu_check.sh`` prints.

    python -m benchmarks.gpu_sweeps [--dataset synthetic-25m] [--factors 8,32,128]
                                    [--devices cpu,cuda] [--train cuda] [--output-json F]

A figure is the second sweep of a fit (the first also builds the sparse matrices), with the
search's starting settings; ``--train DEVICE`` runs :func:`mfrec.workflow.train_and_evaluate`
(settings search, sweep count, refit, evaluation) on a random split of the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def sweep_seconds(data, n_factors: int, device: str, sweeps: int = 2) -> dict:
    """Seconds of each of ``sweeps`` sweeps of a k=``n_factors`` fit on ``device``."""
    import torch

    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit

    config = TrainConfig(n_factors=n_factors, device=device, progress=False).with_prior()
    stamps = []

    def stamp(_record):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    started = time.perf_counter()
    fit(data, config, epochs=sweeps, on_epoch=stamp)
    gaps = [b - a for a, b in zip([started, *stamps], stamps)]
    last = gaps[-1]
    return {"device": device, "n_factors": n_factors, "als_solve": config.solve, "sweep_seconds": gaps,
            "steady_sweep_seconds": last, "ratings_per_second": len(data) / last}


def train_seconds(ratings, movies, device: str) -> dict:
    """The default train step and evaluation on ``device`` (random split, seed 0)."""
    from mfrec.data.split import SplitConfig, split_ratings
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import train_and_evaluate

    train, val, test = split_ratings(ratings, SplitConfig())
    started = time.perf_counter()
    outcome = train_and_evaluate(train, val, test, movies, TrainConfig(device=device, progress=False))
    m = outcome.metrics
    return {"device": device, "seconds": time.perf_counter() - started,
            **{k: float(m[k]) for k in ("search_seconds", "select_seconds", "refit_seconds", "evaluate_seconds",
                                        "best_epoch", "test_rmse", "test_ndcg_at_10")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-25m")
    parser.add_argument("--factors", default="8,32,128")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--train", default="cuda", help="device of the train step; 'none' skips it")
    parser.add_argument("--output-json", default="")
    args = parser.parse_args(argv)

    from mfrec.data.ids import IdIndex, Interactions
    from mfrec.data.prepare import load_dataset

    loaded = load_dataset(args.dataset, "", progress=False)
    ratings = loaded.ratings
    data = Interactions.from_frame(ratings, IdIndex(ratings["userId"]), IdIndex(ratings["movieId"]))
    out = {"dataset": args.dataset, "ratings": len(data), "sweeps": [], "train": None}
    for device in args.devices.split(","):
        for k in (int(v) for v in args.factors.split(",")):
            row = sweep_seconds(data, k, device)
            out["sweeps"].append(row)
            print(f"{device} k={k} ({row['als_solve']}): {row['steady_sweep_seconds']:.3f} s a sweep, "
                  f"{row['ratings_per_second'] / 1e6:.0f}M ratings/s", flush=True)
    if args.train != "none":
        out["train"] = train_seconds(ratings, loaded.movies, args.train)
        t = out["train"]
        print(f"{args.train} train step + evaluation: {t['seconds']:.1f} s (search {t['search_seconds']:.1f}, sweep "
              f"count {t['select_seconds']:.1f}, refit {t['refit_seconds']:.1f}, evaluate {t['evaluate_seconds']:.1f}); "
              f"test RMSE {t['test_rmse']:.4f}, NDCG@10 {t['test_ndcg_at_10']:.4f}", flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
