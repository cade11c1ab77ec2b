"""The train step on shards of users with torch.distributed, launched by torchrun.

    torchrun --standalone --nproc_per_node=4 -m mfrec.training.distributed --prepared prepared/ --out model/

Each rank reads only its users' ratings of the prepared split (``userId mod world``;
:func:`mfrec.data.prepare.load_prepared` with ``shard``), so a rank holds about ``1 / world``
of the ratings plus the factor tables. Training is ALS (:mod:`mfrec.training.shards`): each
rank solves its own users, the item step all-reduces its per-item sums, and the model equals
one process's up to float summation order. Then the same recipe as the library's train step
(:func:`mfrec.workflow.train_and_evaluate`): settings left ``auto`` are chosen by the search
on rank 0's users (as one process's search samples users on large data) and broadcast; the
sweep count on every rank's validation ratings; that fit continued on train + validation; each rank
ranks its own test users and the metrics are summed over the ranks. Rank 0 gathers the user
rows and seen lists into one recommender and writes it, with ``metrics.json``, to ``--out``.
Backend: NCCL when every rank has a GPU, gloo otherwise (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from mfrec.data.ids import IdIndex, Interactions, csr_from_pairs
from mfrec.data.prepare import load_prepared
from mfrec.errors import ConfigError
from mfrec.evaluation.evaluate import evaluate
from mfrec.serving import genres, neighbours
from mfrec.serving.bundle import Bundle, RankingConfig
from mfrec.serving.recommender import Recommender
from mfrec.training.config import TrainConfig
from mfrec.training.fit import continued, fit
from mfrec.training.model import MatrixFactorization
from mfrec.training.parallel import threads_for
from mfrec.training.search import SearchConfig, choose
from mfrec.training.shards import TRAFFIC, Shard, union

USER_TABLES = ("user_factors", "user_choice_factors", "user_bias")


def train_on_shards(prepared_path, config: TrainConfig, ranking: RankingConfig = RankingConfig(),
                    search: SearchConfig = SearchConfig(), verify: bool = True) -> tuple[dict, Bundle | None]:
    """The train step with every rank of the initialised process group holding its users.

    Returns every rank's metrics (the same on each) and, on rank 0, the recommender fitted on
    train + validation (None on the other ranks).
    """
    started = time.perf_counter()
    rank, world = dist.get_rank(), dist.get_world_size()
    prepared = load_prepared(prepared_path, verify=verify, shard=(rank, world))
    config = replace(config, rating_range=tuple(prepared.manifest.get("rating_scale", config.rating_range)),
                     feedback=prepared.manifest.get("feedback", "explicit"))
    if config.implicit or config.solver != "als":
        raise ConfigError("the sharded train step fits ratings with ALS (an item's sums are all-reduced, and early "
                          "stopping follows validation RMSE); implicit feedback and solver=adam train in one process")
    train, val, test, movies = prepared.train, prepared.val, prepared.test, prepared.movies
    loaded = time.perf_counter()
    with threads_for(len(train)):
        config, ranking, searched = _settings(train, val, movies, config, ranking, search)
        chose = time.perf_counter()
        before = TRAFFIC.bytes
        first, users, items, shard = _fit_shard(train, config, val)
        selected = time.perf_counter()
        fit_frame = pd.concat([train, val], ignore_index=True)
        refit_bytes = TRAFFIC.bytes
        result, users, items, shard = _fit_shard(fit_frame, config, earlier=(first, users, items))
        refit_bytes = TRAFFIC.bytes - refit_bytes
        finished = time.perf_counter()
        bundle = _local_bundle(result, users, items, shard, fit_frame, movies, config, ranking, first.best_epoch)
        scores = evaluate(Recommender(bundle), fit_frame, test, progress=config.progress, across=shard)
    evaluated = time.perf_counter()
    scores.update(searched)
    scores.update({
        "world_size": world, "device": first.device,
        "load_seconds": loaded - started, "search_seconds": chose - loaded, "select_seconds": selected - chose,
        "refit_seconds": finished - selected, "evaluate_seconds": evaluated - finished,
        "train_seconds": finished - loaded,
        "epochs_run": len(first.history), "best_epoch": first.best_epoch, "best_val_rmse": first.best_val_rmse,
        "refit_sweeps": len(result.history),
        # The refit's all-reduced bytes (its setup's row counts included) per sweep and rank.
        "allreduce_bytes_per_sweep": refit_bytes / max(len(result.history), 1),
        "allreduce_bytes_total": TRAFFIC.bytes - before,
    })
    peaks = shard.gather(_peak_rss_bytes())
    parts = shard.gather(_user_part(bundle, result.model))
    if rank != 0:
        return scores, None
    scores["rank_peak_rss_gib"] = [round(p / 2**30, 4) for p in peaks]
    scores["rank_ratings"] = [part["ratings"] for part in parts]
    whole = _assemble(bundle, parts).with_ids(prepared.ids)
    scores["rank0_assemble_peak_rss_gib"] = round(_peak_rss_bytes() / 2**30, 4)  # with every rank's users
    return scores, whole


def _settings(train, val, movies, config, ranking, search) -> tuple:
    """The ``auto`` settings, chosen by rank 0's search on its users and broadcast; with the
    search's figures for the record."""
    if not (config.auto_fields() or ranking.auto_fields()):
        return config, ranking, {}
    outcome = None
    if dist.get_rank() == 0:
        try:
            choice = choose(train, val, movies, config, ranking, search)
            outcome = (choice.config, choice.ranking, {"search_trials": len(choice.trials),
                                                       "val_ndcg_at_10": choice.best["val_ndcg_at_10"],
                                                       "settings_choice": choice.summary()})
        except Exception as exc:  # noqa: BLE001 - every rank stops with rank 0's reason
            outcome = exc
    box = [outcome]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _fit_shard(frame: pd.DataFrame, config: TrainConfig, val: pd.DataFrame | None = None, earlier=None):
    """One sharded fit of ``frame`` (this rank's users): the result, this rank's user index,
    every rank's item index and the shard. With ``earlier`` -- (a fit of part of ``frame``,
    its user index, its item index) -- it continues that fit as one process would
    (:func:`~mfrec.training.fit.continued`)."""
    every_user = IdIndex(union(frame["userId"].to_numpy()))
    items = IdIndex(union(frame["movieId"].to_numpy()))
    users = IdIndex(frame["userId"].to_numpy())
    shard = Shard.current(every_user.index(users.ids), len(every_user))
    data = Interactions.from_frame(frame, users, items)
    if earlier is not None:
        fitted, old_users, old_items = earlier
        result = continued(fitted, data, old_users.index(users.ids), old_items.index(items.ids), config, shard=shard)
    else:
        va = Interactions.from_frame(val, users, items) if val is not None and len(val) else None
        result = fit(data, config, val=va, shard=shard)
    return result, users, items, shard


def _local_bundle(result, users, items, shard, frame, movies, config, ranking, best_epoch) -> Bundle:
    """This rank's users' recommender, ranking with every rank's genre rates, counts and
    neighbour weights (EASE from every rank's X^T X)."""
    u, i = users.index(frame["userId"].to_numpy()), items.index(frame["movieId"].to_numpy())
    n_ratings = shard.sum(np.bincount(i, minlength=len(items))).round().astype(np.int64)
    near = None
    if ranking.neighbour_weight > 0:
        films = neighbours.most_rated(i, len(items), counts=n_ratings)
        gram = neighbours.gramian(*csr_from_pairs(u, i, len(users)), films, len(items)).to(shard.device())
        torch.distributed.all_reduce(gram)
        near = neighbours.solve(films, gram.cpu(), ranking.neighbour_reg)
    bundle = Bundle.build(result.model, users, items, frame, movies, config, ranking, neighbours=near,
                          best_epoch=best_epoch)
    votes = shard.sum(bundle.genre_votes.astype(np.float64).sum(0))
    total = shard.total(float(bundle.vote_total.astype(np.float64).sum()))[0]
    items_frame = bundle.items.assign(n_ratings=n_ratings)
    meta = dict(bundle.meta)
    meta["genre_base_rates"] = genres.base_rates(votes[None, :], np.array([total])).tolist()
    meta["objective"] = {**meta["objective"], "user_mean_count": float(n_ratings.sum()) / shard.n_users}
    meta["fit_on"] = {"ratings": int(n_ratings.sum()), "parts": "train+val", "refit_all": False}
    return replace(bundle, items=items_frame, meta=meta)


def _user_part(bundle: Bundle, model: MatrixFactorization) -> dict:
    """What rank 0 needs of this rank's users to write one recommender."""
    return {"ids": bundle.user_index.ids, "ratings": int(bundle.seen_indptr[-1]),
            "seen_counts": np.diff(bundle.seen_indptr), "seen": bundle.seen_indices,
            "votes": bundle.genre_votes, "vote_total": bundle.vote_total,
            **{name: getattr(model, name).detach().cpu() for name in USER_TABLES}}


def _assemble(local: Bundle, parts: list) -> Bundle:
    """Every rank's users in one bundle: their rows in the order of the whole user index."""
    ids = np.concatenate([part["ids"] for part in parts])
    every_user = IdIndex(ids)
    rows = every_user.index(ids)  # each gathered user's row in the whole index
    state = {name: value for name, value in local.model.state_dict().items() if not name.startswith("user_")}
    for name in USER_TABLES:
        table = torch.cat([part[name] for part in parts])
        state[name] = torch.empty_like(table)
        state[name][torch.from_numpy(rows)] = table
    model = MatrixFactorization(len(every_user), len(local.item_index), local.model.n_factors)
    model.load_state_dict(state)
    counts = np.concatenate([part["seen_counts"] for part in parts])
    indptr, indices = csr_from_pairs(np.repeat(rows, counts), np.concatenate([part["seen"] for part in parts]),
                                     len(every_user))
    votes = np.empty((len(every_user), local.genre_votes.shape[1]), np.float32)
    votes[rows] = np.concatenate([part["votes"] for part in parts])
    total = np.empty(len(every_user), np.float32)
    total[rows] = np.concatenate([part["vote_total"] for part in parts])
    meta = {k: v for k, v in local.meta.items() if k != "genre_base_rates"}  # all votes are here now
    return replace(local, model=model.eval(), user_index=every_user, seen_indptr=indptr, seen_indices=indices,
                   genre_votes=votes, vote_total=total, meta=meta)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _number_or_auto(text: str):
    return text if text == "auto" else float(text)


def main(argv=None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="torchrun ... -m mfrec.training.distributed", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--prepared", required=True, help="a prepared folder")
    parser.add_argument("--out", required=True, help="folder for the model and metrics.json (rank 0)")
    for name in ("n_factors", "epochs", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("reg", "reg_exponent", "implicit_weight", "confidence"):  # "auto": chosen on validation
        parser.add_argument(f"--{name.replace('_', '-')}", type=_number_or_auto, default=getattr(defaults, name))
    for name in ("rating_weight", "genre_weight", "neighbour_weight", "neighbour_reg"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=_number_or_auto, default="auto")
    parser.add_argument("--solve", default=defaults.als_solve, help="auto, exact or cg (the ALS steps)")
    parser.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK when GPUs exist, else cpu")
    args = parser.parse_args(argv)

    use_cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if use_cuda else ("cpu" if args.device == "auto" else args.device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        config = TrainConfig(n_factors=args.n_factors, epochs=args.epochs, seed=args.seed, reg=args.reg,
                             reg_exponent=args.reg_exponent, implicit_weight=args.implicit_weight,
                             confidence=args.confidence, als_solve=args.solve, device=device, progress=False)
        ranking = RankingConfig(rating_weight=args.rating_weight, genre_weight=args.genre_weight,
                                neighbour_weight=args.neighbour_weight, neighbour_reg=args.neighbour_reg)
        metrics, bundle = train_on_shards(args.prepared, config, ranking, SearchConfig(seed=args.seed))
        if bundle is not None:
            out = Path(args.out)
            Recommender(bundle).save(out / "recommender")
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
