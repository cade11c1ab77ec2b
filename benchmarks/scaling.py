"""The sharded train step at world sizes 1, 2, 4: per-rank memory, seconds and traffic.

    python -m benchmarks.scaling --prepared PATH [--worlds 1 2 4] [--settings start|auto]

Runs ``torchrun --standalone --nproc_per_node=W -m mfrec.training.distributed`` on a
prepared split for each W (gloo, one thread per rank: torchrun's default), one after the
other, and prints each run's per-rank peak RSS, ratings held, phase seconds and all-reduced
bytes per sweep, then a projection to 1B ratings (docs/scaling.md says how). ``--settings
start`` (default) passes the search's starting point, so every W fits the same settings and
the timings compare the sharded fits, not the search.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import child_env, load_average, machine_info

START = ["--reg", "2.5", "--reg-exponent", "0", "--implicit-weight", "2", "--confidence", "5",
         "--rating-weight", "0.25", "--genre-weight", "0.1", "--neighbour-weight", "0"]
FIELDS = ("rank0_assemble_peak_rss_gib", "load_seconds", "search_seconds", "select_seconds", "refit_seconds", "evaluate_seconds", "epochs_run",
          "best_epoch", "refit_sweeps", "allreduce_bytes_per_sweep", "rank_peak_rss_gib", "rank_ratings", "test_rmse",
          "test_ndcg_at_10")


def run(prepared: str, world: int, settings: list, timeout: float = 3600) -> dict:
    """One torchrun of the sharded train step; its metrics and wall seconds."""
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.TemporaryDirectory(prefix="mfrec-scaling-") as out:
        before = load_average()
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={world}", "-m", "mfrec.training.distributed",
               "--prepared", prepared, "--out", out, *settings]
        proc = subprocess.run(["/usr/bin/time", "-f", "%e", *cmd], capture_output=True, text=True, env=child_env(),
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"W={world} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"world": world, "wall_seconds": float(proc.stderr.strip().splitlines()[-1]),
            "load_average_before": before, **{k: metrics[k] for k in FIELDS}}


def projection(rows: list, n_items: int, ratings: int = 10**9, machines: int = 16, link_gbit: float = 10.0) -> dict:
    """``ratings`` on ``machines`` ranks, from the measured runs: a rank's memory as a line in
    the ratings it holds (through the W=1 run and the largest W's biggest rank), a sweep's
    compute as W=1's seconds per rating, its traffic as the measured bytes per item (``n_items``
    in the measured data) times the items of a MovieLens-shaped set of that size, sent by a
    ring all-reduce (2 (N - 1) / N of the buffer per rank) over a ``link_gbit`` link."""
    from mfrec.data.datasets import synthetic_shape

    one = min(rows, key=lambda r: r["world"])
    big = max(rows, key=lambda r: r["world"])
    held = [max(r["rank_ratings"]) for r in (one, big)]
    peak = [max(r["rank_peak_rss_gib"]) for r in (one, big)]
    per_rating = (peak[0] - peak[1]) / max(held[0] - held[1], 1)
    base = peak[0] - per_rating * held[0]
    per_rank = ratings / machines
    _, users, items = synthetic_shape(ratings)
    traffic = one["allreduce_bytes_per_sweep"] / n_items * items
    compute = one["refit_seconds"] / max(one["refit_sweeps"], 1) / sum(one["rank_ratings"]) * per_rank
    send = 2 * (machines - 1) / machines * traffic * 8 / (link_gbit * 1e9)
    return {"ratings": ratings, "machines": machines, "users": users, "items": items,
            "ratings_per_rank": per_rank, "bytes_per_rating": per_rating * 2**30, "base_gib": base,
            "rank_gib": base + per_rating * per_rank, "allreduce_bytes_per_sweep": traffic,
            "compute_seconds_per_sweep": compute, "allreduce_seconds_per_sweep": send,
            "link_gbit": link_gbit}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--settings", choices=["start", "auto"], default="start")
    args = parser.parse_args(argv)
    settings = START if args.settings == "start" else []
    prepared = os.path.abspath(args.prepared)
    rows = [run(prepared, w, settings) for w in args.worlds]
    n_items = json.loads((Path(prepared) / "manifest.json").read_text())["counts"]["rated_movies"]
    out = {"machine": machine_info(), "runs": rows, "projection": projection(rows, n_items)}
    print(json.dumps(out, indent=2))
    print("| W | ratings per rank | peak RSS per rank (GiB) | sweep count | refit | evaluate | all-reduced per sweep |",
          file=sys.stderr)
    for r in rows:
        print(f"| {r['world']} | {', '.join(f'{n:,}' for n in r['rank_ratings'])} | "
              f"{', '.join(f'{g:.2f}' for g in r['rank_peak_rss_gib'])} | {r['select_seconds']:.1f} s | "
              f"{r['refit_seconds']:.1f} s ({r['refit_sweeps']} sweeps) | {r['evaluate_seconds']:.1f} s | "
              f"{r['allreduce_bytes_per_sweep'] / 2**20:.1f} MiB |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
