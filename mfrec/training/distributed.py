"""Data-parallel training with torch.distributed, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 -m mfrec.training.distributed --prepared prepared/ --out model/

Every rank reads the prepared split, trains on its own shard of the training ratings, and
evaluates; rank 0 writes the recommender and ``metrics.json`` to ``--out``. When a process
group is up, :func:`mfrec.training.fit.fit` shards the ratings: with ``--solver als`` each rank
sums its shard's per-user and per-item normal equations and ``all_reduce`` adds them up,
so every rank solves the same systems as one process would; with ``--solver adam`` the
loss is wrapped in DistributedDataParallel, which averages the gradients.
Backend: NCCL when every rank has a GPU, gloo otherwise (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mfrec.data.prepare import load_prepared
from mfrec.training.fit import TrainConfig
from mfrec.training.search import SearchConfig
from mfrec.workflow import train_and_evaluate


def _number_or_auto(text: str):
    return text if text == "auto" else float(text)


def main(argv=None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="torchrun ... -m mfrec.training.distributed", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--prepared", required=True, help="a prepared folder")
    parser.add_argument("--out", required=True, help="folder for the model and metrics.json (rank 0)")
    for name in ("n_factors", "epochs", "batch_size", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    for name in ("reg", "reg_exponent", "implicit_weight", "confidence"):  # "auto": chosen on validation
        parser.add_argument(f"--{name.replace('_', '-')}", type=_number_or_auto, default=getattr(defaults, name))
    parser.add_argument("--solver", default=defaults.solver, help="als (default) or adam")
    parser.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK when GPUs exist, else cpu")
    args = parser.parse_args(argv)

    use_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if use_cuda else ("cpu" if args.device == "auto" else args.device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        prepared = load_prepared(args.prepared)
        config = TrainConfig(n_factors=args.n_factors, epochs=args.epochs, batch_size=args.batch_size,
                             seed=args.seed, lr=args.lr, reg=args.reg, reg_exponent=args.reg_exponent,
                             implicit_weight=args.implicit_weight, confidence=args.confidence, solver=args.solver,
                             device=device, progress=False,
                             rating_range=tuple(prepared.manifest.get("rating_scale", (0.5, 5.0))),
                             feedback=prepared.manifest.get("feedback", "explicit"))
        # Every rank runs the same settings search (same seed, all-reduced sweeps) and so
        # makes the same choice; rank 0 decides when its time limit is reached.
        outcome = train_and_evaluate(prepared.train, prepared.val, prepared.test, prepared.movies, config,
                                     search=SearchConfig(seed=args.seed))
        if rank == 0:
            out = Path(args.out)
            outcome.recommender.with_ids(prepared.ids).save(out / "recommender")
            metrics = {**outcome.metrics, "world_size": world, "device": outcome.device}
            tmp = out / "metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=2))
            os.replace(tmp, out / "metrics.json")
            print(json.dumps({k: metrics[k] for k in ("test_rmse", "test_ndcg_at_10", "train_seconds", "world_size")}))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
