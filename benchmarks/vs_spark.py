"""mfrec's default train step at scale against Spark MLlib's ALS, on the same prepared split.

    python -m benchmarks.vs_spark [--dataset synthetic-25m] [--iterations 10]

The split is prepared once (``mfrec.data.prepare``); then two fresh child processes, one
after the other: mfrec's default training and evaluation
(:func:`mfrec.workflow.train_and_evaluate`: the settings search, the sweep count, the refit
on train + validation, the test metrics) with its phases' seconds, and Spark MLlib's
``ALS(rank=8, maxIter=10)`` fitted on the same train + validation ratings with
``local[2]`` (the fit alone is timed: the ratings are read and cached first). Needs the
bench extra (pyspark) and Java.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import child_env, load_average, peak_rss_bytes

SPARK_MEMORY = "10g"


def mfrec_child(prepared: str) -> dict:
    """In the child: the default train step on the prepared split."""
    import torch

    from benchmarks.training import mfrec_benchmark
    from mfrec.data.prepare import load_prepared

    started = time.perf_counter()
    p = load_prepared(prepared)
    loaded = time.perf_counter() - started
    figures, outcome = mfrec_benchmark(p.train, p.val, p.test, p.movies, repeats=1, scratch_fit=False)
    return {**figures, "load_seconds": loaded,
            "train_and_evaluate_seconds": figures["train_seconds"] + figures["evaluate_seconds"],
            "chosen": outcome.choice.chosen() if outcome.choice is not None else None,
            "torch_threads": torch.get_num_threads(), "peak_rss_bytes": peak_rss_bytes()}


def spark_child(prepared: str, iterations: int, rank: int) -> dict:
    """In the child: Spark's ALS on the prepared train + validation ratings."""
    import pandas as pd
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    folder = Path(prepared)
    with tempfile.TemporaryDirectory(prefix="mfrec-spark-") as tmp:
        ratings = pd.concat([pd.read_parquet(folder / f"{part}.parquet", columns=["userId", "movieId", "rating"])
                             for part in ("train", "val")], ignore_index=True)
        ratings.to_parquet(Path(tmp) / "ratings.parquet", index=False)
        n = len(ratings)
        del ratings
        spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", SPARK_MEMORY)
                 .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
        try:
            spark.sparkContext.setLogLevel("ERROR")
            frame = spark.read.parquet(str(Path(tmp) / "ratings.parquet")).cache()
            assert frame.count() == n
            started = time.perf_counter()
            # ALS.fit materialises both factor tables before it returns.
            ALS(rank=rank, maxIter=iterations, regParam=0.1, userCol="userId", itemCol="movieId",
                ratingCol="rating", seed=0).fit(frame)
            seconds = time.perf_counter() - started
            version = spark.version
        finally:
            spark.stop()
    return {"fit_seconds": seconds, "ratings": n, "iterations": iterations, "rank": rank, "spark": version,
            "driver_memory": SPARK_MEMORY}


def compare(dataset: str = "synthetic-25m", iterations: int = 10, workdir: str | None = None,
            timeout: float = 1800) -> dict:
    """Prepare ``dataset`` (random split, seed 0) and time both children on it."""
    from mfrec.data.prepare import PrepareConfig, prepare

    with tempfile.TemporaryDirectory(prefix="mfrec-vs-spark-", dir=workdir) as tmp:
        started = time.perf_counter()
        prepare(PrepareConfig(dataset=dataset), out_dir=Path(tmp) / "prepared")
        out = {"dataset": dataset, "prepare_seconds": time.perf_counter() - started}
        for name, args in (("mfrec", ["mfrec-child", str(Path(tmp) / "prepared")]),
                           ("spark", ["spark-child", str(Path(tmp) / "prepared"), str(iterations), "8"])):
            before = load_average()
            proc = subprocess.run([sys.executable, "-m", "benchmarks.vs_spark", *args], capture_output=True, text=True,
                                  env=child_env(), timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            out[name] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_average_before": before}
    out["ratio"] = out["mfrec"]["train_and_evaluate_seconds"] / out["spark"]["fit_seconds"]
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mfrec-child"]:
        print(json.dumps(mfrec_child(argv[1])))
        return 0
    if argv[:1] == ["spark-child"]:
        print(json.dumps(spark_child(argv[1], int(argv[2]), int(argv[3]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_spark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-25m")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args(argv)
    out = compare(args.dataset, args.iterations)
    print(json.dumps(out, indent=2))
    m, s = out["mfrec"], out["spark"]
    print(f"mfrec train step + evaluation {m['train_and_evaluate_seconds']:.1f} s (search {m['search_seconds']:.1f}, "
          f"sweep count {m['select_seconds']:.1f}, refit {m['refit_seconds']:.1f}, evaluate {m['evaluate_seconds']:.1f}) "
          f"/ Spark ALS {s['iterations']}-iteration fit {s['fit_seconds']:.1f} s = {out['ratio']:.2f}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
