"""Batch recommendations at scale: every user's top-k of a model of ``--dataset``, to parquet.

    python -m benchmarks.batch_scale [--dataset synthetic-25m] [--k 100] [--sweeps 3]

A child process generates the synthetic set, fits a k=8 model on all of it (the search's
starting settings, ``--sweeps`` ALS sweeps: the ranking's cost does not depend on how well the
model is fit), builds the served bundle, then times
:func:`mfrec.serving.batch.write_recommendations` for every user and reports its seconds,
rows and the process's peak RSS (``VmHWM``, which includes the data and the fit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def child(dataset: str, k: int, sweeps: int, folder: str) -> None:
    from benchmarks.machine import proc_status_bytes
    from mfrec.data.datasets import SYNTHETIC_SEED, get_spec
    from mfrec.data.ids import IdIndex, Interactions
    from mfrec.data.synthetic import generate
    from mfrec.serving.batch import write_recommendations
    from mfrec.serving.bundle import Bundle, RankingConfig
    from mfrec.serving.recommender import Recommender
    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit

    n_ratings, n_users, n_movies = get_spec(dataset).synthetic_shape
    data = generate(n_ratings, n_users, n_movies, seed=SYNTHETIC_SEED)
    ratings = data.ratings
    users, items = IdIndex(ratings["userId"].to_numpy()), IdIndex(ratings["movieId"].to_numpy())
    config = TrainConfig(progress=False, epochs=sweeps).with_prior()
    result = fit(Interactions.from_frame(ratings, users, items), config)
    rec = Recommender(Bundle.build(result.model, users, items, ratings, data.movies, config,
                                   RankingConfig().with_prior()))
    before = proc_status_bytes("VmHWM")
    counts = write_recommendations(rec, Path(folder) / "recommendations.parquet", k=k, progress=False)
    peak = proc_status_bytes("VmHWM")
    print(json.dumps({"dataset": dataset, "ratings": n_ratings, **counts, "fit_seconds": result.seconds,
                      "peak_rss_before_batch": before, "peak_rss": peak,
                      "parquet_bytes": (Path(folder) / "recommendations.parquet").stat().st_size}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic-25m")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.dataset, args.k, args.sweeps, args.child)
        return
    from benchmarks.machine import child_env, load_average

    with tempfile.TemporaryDirectory(prefix="mfrec-batch-") as tmp:
        before = load_average()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--dataset", args.dataset, "--k", str(args.k), "--sweeps",
                               str(args.sweeps), "--child", tmp], capture_output=True, text=True, env=child_env())
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update(load_average_before=before, child_seconds=time.perf_counter() - started)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
