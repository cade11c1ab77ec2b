"""What the train step's settings search chooses, against its starting point, per dataset and split.

    python scripts/search_table.py --data-path path/to/ml-latest-small.zip \\
        --runs ml-latest-small:random:0:8,ml-latest-small:random:1:8,ml-latest-small:temporal:0:8,synthetic:random:0:8

Each run is ``dataset:split:seed:n_factors``. For each, the train step runs twice on the
prepared split: with every setting at the search's starting point (the values it tries
first), and with the defaults (``auto``: chosen on validation). Prints a markdown table of
test RMSE and NDCG@10 (the search never sees the test split) and what was chosen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfrec.data.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from mfrec.data.split import SplitConfig  # noqa: E402
from mfrec.serving.bundle import RankingConfig  # noqa: E402
from mfrec.training.config import TrainConfig  # noqa: E402
from mfrec.workflow import train_and_evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", default="", help="the ml-latest-small zip (other datasets are generated)")
    ap.add_argument("--runs", default="ml-latest-small:random:0:8")
    args = ap.parse_args()
    print("| data | split | k | start: test RMSE | start: NDCG@10 | auto: test RMSE | auto: NDCG@10 | chosen "
          "| search seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for spec in args.runs.split(","):
        dataset, method, seed, k = spec.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            path = args.data_path if dataset == "ml-latest-small" else ""
            prepare(PrepareConfig(dataset, path, SplitConfig(method=method, seed=int(seed))), Path(tmp) / "p",
                    progress=False)
            p = load_prepared(Path(tmp) / "p")
        config = TrainConfig(n_factors=int(k), seed=int(seed), progress=False,
                             rating_range=tuple(p.manifest.get("rating_scale", (0.5, 5.0))))
        start = train_and_evaluate(p.train, p.val, p.test, p.movies, config.with_prior(), RankingConfig().with_prior())
        auto = train_and_evaluate(p.train, p.val, p.test, p.movies, config)
        s, a = start.metrics, auto.metrics
        chosen = ", ".join(f"{name} {value:.3g}" for name, value in auto.choice.chosen().items())
        mark = "" if auto.choice.best is auto.choice.trials[0] else f" (trial {auto.choice.best['trial']})"
        print(f"| {dataset} | {method} s{seed} | {k} | {s['test_rmse']:.4f} | {s['test_ndcg_at_10']:.4f} | "
              f"{a['test_rmse']:.4f} | {a['test_ndcg_at_10']:.4f} | {chosen}{mark} | {a['search_seconds']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
