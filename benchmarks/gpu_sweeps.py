"""Seconds per ALS sweep at 25M ratings on the CPU and on a GPU (k = 8, 32, 128), and the
default train step with evaluation on the GPU: what ``scripts/gpu_check.sh`` prints.

    python -m benchmarks.gpu_sweeps [--dataset synthetic-25m] [--factors 8,32,128]
                                    [--devices cpu,cuda] [--train cuda] [--output-json F]

A figure is the second sweep of a fit (the first also builds the sparse matrices), with the
search's starting settings (:func:`benchmarks.scale.throughput_child` on the raw arrays);
``--train DEVICE`` runs the default train step with evaluation
(:func:`benchmarks.training.mfrec_benchmark`, once) on a random split of the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-25m")
    parser.add_argument("--factors", default="8,32,128")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--train", default="cuda", help="device of the train step; 'none' skips it")
    parser.add_argument("--output-json", default="")
    args = parser.parse_args(argv)

    from benchmarks.scale import throughput_child, write_rating_arrays
    from benchmarks.training import mfrec_benchmark
    from mfrec.data.prepare import load_dataset
    from mfrec.data.split import SplitConfig, split_ratings
    from mfrec.training.config import TrainConfig

    loaded = load_dataset(args.dataset, "", progress=False)
    out = {"dataset": args.dataset, "ratings": len(loaded.ratings), "sweeps": [], "train": None}
    with tempfile.TemporaryDirectory(prefix="mfrec-gpu-") as tmp:
        write_rating_arrays(loaded.ratings, Path(tmp))
        for device in args.devices.split(","):
            for k in (int(v) for v in args.factors.split(",")):
                run = throughput_child(tmp, 2, {"n_factors": k, "device": device})
                row = {"device": device, "n_factors": k, "als_solve": run["config"]["als_solve"],
                       "sweep_seconds": run["epoch_seconds"], "steady_sweep_seconds": run["steady_epoch_seconds"],
                       "ratings_per_second": run["ratings_per_second"]}
                out["sweeps"].append(row)
                print(f"{device} k={k} ({row['als_solve']}): {row['steady_sweep_seconds']:.3f} s a sweep, "
                      f"{row['ratings_per_second'] / 1e6:.0f}M ratings/s", flush=True)
    if args.train != "none":
        train, val, test = split_ratings(loaded.ratings, SplitConfig())
        t, _ = mfrec_benchmark(train, val, test, loaded.movies, TrainConfig(device=args.train, progress=False),
                               repeats=1, scratch_fit=False)
        out["train"] = t
        print(f"{t['device']} train step + evaluation: {t['train_seconds'] + t['evaluate_seconds']:.1f} s (search "
              f"{t['search_seconds']:.1f}, sweep count {t['select_seconds']:.1f}, refit {t['refit_seconds']:.1f}, "
              f"evaluate {t['evaluate_seconds']:.1f}); test RMSE {t['test_rmse']:.4f}, NDCG@10 "
              f"{t['test_ndcg_at_10']:.4f}", flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
