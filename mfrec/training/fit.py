"""Fitting: epochs of a solver (ALS or Adam), validation RMSE, early stopping.

The training ratings live on the device as three tensors; no DataLoader: per-row Python
objects would cost more than the arithmetic.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from mfrec.data.ids import Interactions
from mfrec.errors import ConfigError, TrainingError
from mfrec.training.adam import AdamSolver
from mfrec.training.als import AlsSolver
from mfrec.training.config import TrainConfig
from mfrec.training.model import MatrixFactorization, carried_over, predict_ratings, rating_tables, with_user_rows
from mfrec.training.parallel import Workers, workers_for
from mfrec.training.shards import Shard


# Validation ratings scored per task: a few MB of temporaries, and work for both workers when
# the search's sample holds ~100k of them (one-threaded, 15 ms a sweep there).
VAL_CHUNK = 1 << 15


@dataclass
class FitResult:
    model: MatrixFactorization
    history: list = field(default_factory=list)  # dicts: epoch, train_loss, val_rmse
    best_epoch: int = 0
    best_val_rmse: float = float("nan")
    seconds: float = 0.0
    device: str = "cpu"
    continued: bool = False  # started from an earlier fit's model (:func:`continued`), not a new one


EpochCallback = Callable[[dict], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fit(
    train: Interactions,
    config: TrainConfig,
    val: Optional[Interactions] = None,
    epochs: Optional[int] = None,
    on_epoch: Optional[EpochCallback] = None,
    score_epoch: Optional[Callable[[MatrixFactorization], dict]] = None,
    stop_on: str = "val_rmse",
    shard: Optional[Shard] = None,
    start: Optional[MatrixFactorization] = None,
    converged: Optional[float] = None,
    matrices: Optional[dict] = None,
) -> FitResult:
    """Fit a model on ``train``; with ``val``, stop early on validation RMSE (or ``stop_on``)
    and keep the best epoch.

    Parameters
    ----------
    train:
        Training ratings (all indices known).
    config:
        Hyper-parameters and device.
    val:
        Optional validation ratings (unknown users/items allowed: they get bias-only predictions).
    epochs:
        Overrides ``config.epochs`` (a fit continued on more ratings runs at most the count
        validation chose: :func:`continued`).
    on_epoch:
        Called after every epoch with ``{"epoch", "train_loss", "val_rmse"}`` (and what
        ``score_epoch`` adds); an exception it raises stops the fit.
    score_epoch:
        Called with the model after every epoch; returns more metrics for the record (e.g.
        validation NDCG, which ``-e tune`` prunes its trials on).
    stop_on:
        The record's key early stopping follows: ``val_rmse`` (lower is better), or a key
        ``score_epoch`` returns (higher is better), e.g. ``val_ndcg_at_10`` for implicit
        feedback, which has no ratings to predict (``val_rmse`` is then not computed).
    shard:
        This rank's users (:mod:`mfrec.training.shards`) when ``train`` and ``val`` hold only
        them, numbered locally: the model's user tables are then this rank's rows, the item
        step and every reported figure are summed over the ranks, and the result is the one
        process's fit on every rank's ratings. ALS only.
    start:
        A model to continue from instead of a new one (:func:`~mfrec.training.model.carried_over`
        maps a fitted model onto new tables), with the data's tables and ``config.n_factors``
        (with ``shard``: this rank's user rows); its global mean becomes the data's, and the
        fit trains it in place.
    converged:
        Stop once a sweep lowers the training loss by at most this fraction of it
        (:func:`loss_drop`, from the second sweep on); ``epochs`` stays the most it runs.
    matrices:
        A dict the caller keeps across fits of the same ``train`` (the settings search's
        trials): ALS builds its rating matrices (sorting every rating twice) on the first fit
        and reuses them on the next ones with the same layout.
    """
    if stop_on != "val_rmse" and (score_epoch is None or val is None):
        raise ConfigError(f"stopping on {stop_on} needs validation data and a score_epoch that computes it")
    if config.auto_fields():
        raise ConfigError(f"fit() takes chosen settings, but {', '.join(config.auto_fields())} "
                          f"{'is' if len(config.auto_fields()) == 1 else 'are'} 'auto': train with "
                          f"mfrec.workflow.train_and_evaluate (which chooses them on validation), or pass numbers "
                          f"(TrainConfig.with_prior() gives the search's starting values)")
    if len(train) == 0:
        raise TrainingError("the training set is empty")
    if (train.users < 0).any() or (train.items < 0).any():
        raise TrainingError("training interactions contain unknown user or item indices")
    if train.users.max() >= train.n_users or train.items.max() >= train.n_items:
        raise TrainingError(f"training interactions index past their tables ({train.n_users} users, "
                            f"{train.n_items} items): build them with the IdIndex they came from")
    if shard is not None and (config.solver != "als" or stop_on != "val_rmse"):
        raise ConfigError("training on shards of users runs ALS with early stopping on validation RMSE "
                          f"(solver={config.solver!r}, stop_on={stop_on!r}): train in one process instead")
    if start is not None and (tuple(start.user_factors.shape) != (train.n_users, config.n_factors)
                              or len(start.item_factors) != train.n_items):
        raise ConfigError(f"a fit continues from a model with the data's tables ({train.n_users} users, {train.n_items} "
                          f"items, {config.n_factors} factors); got "
                          f"{tuple(start.user_factors.shape)} users and {len(start.item_factors)} items")
    n_epochs = epochs or config.epochs
    device = torch.device(config.device)
    # ALS on a CPU uses only deterministic kernels (row-parallel sparse products, fixed-order
    # reductions); leaving the global switch alone also skips importing torch's compiler stack.
    switch = config.deterministic and (config.solver == "adam" or device.type != "cpu")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if switch:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with workers_for(device, len(train), distributed=shard is not None) as workers:
            return _fit(train, config, val, n_epochs, device, on_epoch, score_epoch, workers, stop_on, shard, start,
                        converged, matrices)
    finally:
        if switch:
            torch.use_deterministic_algorithms(was_deterministic)


def _fit(train, config, val, n_epochs, device, on_epoch, score_epoch, workers, stop_on, shard, start=None,
         converged=None, matrices=None) -> FitResult:
    seed_everything(config.seed)
    began = time.perf_counter()

    # int32 indices where they fit (half of int64's memory; same permutations and numbers),
    # sharing the caller's arrays instead of copying them when dtype and device allow.
    index_dtype = torch.int32 if max(train.n_users, train.n_items, len(train)) < 2**31 else torch.long
    users = _as_tensor(train.users, index_dtype, device)
    items = _as_tensor(train.items, index_dtype, device)
    ratings = _as_tensor(train.ratings, torch.float32, device)
    # The mean in float64 from numpy: one summation order, whatever torch's thread count.
    if shard is None:
        mean = float(np.mean(train.ratings, dtype=np.float64))
    else:
        total, count = shard.total(float(np.sum(train.ratings, dtype=np.float64)), len(train))
        mean = total / count
    if start is not None:
        model = start
        model.global_mean.fill_(mean)
    elif shard is None:
        model = MatrixFactorization(train.n_users, train.n_items, config.n_factors, mean, config.init_std,
                                    generator=torch.Generator().manual_seed(config.seed))
    else:
        model = _local_model(shard, train.n_items, config, mean)
    model = model.to(device)
    if config.solver == "als":
        solver = AlsSolver(model, users, items, ratings, config, shard=shard, workers=workers, matrices=matrices)
        del users, items, ratings
    else:
        solver = AdamSolver(model, users, items, ratings, config, device, index_dtype)
    if val is not None:
        val_users = torch.tensor(val.users, dtype=torch.long, device=device)
        val_items = torch.tensor(val.items, dtype=torch.long, device=device)
        val_ratings = torch.tensor(val.ratings, dtype=torch.float32, device=device)

    show = (config.progress if config.progress is not None else sys.stderr.isatty()) and (shard is None or shard.rank == 0)
    bar = tqdm(range(1, n_epochs + 1), desc="train", unit="epoch", disable=not show, leave=False)
    result = FitResult(model=model, device=str(device))
    best_state, best_watched = None, float("inf")
    progress_watched, since_progress = float("inf"), 0
    for epoch in bar:
        train_loss = solver.epoch()
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} at epoch {epoch}; {solver.divergence_advice()}")
        # Implicit feedback has no rating loss (the solver's rating part fits a constant).
        record = {"epoch": epoch} if config.implicit else {"epoch": epoch, "train_loss": train_loss}
        if val is not None and not config.implicit:
            model.eval()
            with torch.no_grad():
                squares = _squared_error(rating_tables(model), val_users, val_items, val_ratings, config.rating_range,
                                         workers)
                count = len(val_ratings)
                if shard is not None:  # every rank's validation ratings
                    squares, count = shard.total(squares, count)
                record["val_rmse"] = math.sqrt(squares / count)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_rmse=f"{record['val_rmse']:.4f}")
        else:
            bar.set_postfix(loss=f"{train_loss:.4f}")
        if score_epoch is not None:
            record.update(score_epoch(model))
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if val is not None:
            # Lower is better: RMSE as it is, a score (NDCG) negated.
            watched = record[stop_on] if stop_on == "val_rmse" else -record[stop_on]
            if watched < best_watched:
                best_watched, best_state, result.best_epoch = watched, _state(model), epoch
            if watched < progress_watched - config.min_delta:
                progress_watched, since_progress = watched, 0
            else:
                since_progress += 1
                if since_progress > config.patience:
                    break
        if converged is not None:
            drop = loss_drop(result.history, epoch)
            if drop is not None and drop <= converged:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_rmse = result.history[result.best_epoch - 1].get("val_rmse", float("nan"))
    else:
        result.best_epoch = len(result.history)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - began
    return result


def continued(earlier: FitResult, data: Interactions, user_rows: np.ndarray, item_rows: np.ndarray,
              config: TrainConfig, shard: Optional[Shard] = None) -> FitResult:
    """Fit ``data`` -- ``earlier``'s ratings and more -- with the settings and sweep count
    validation chose for ``earlier``, continuing from its model: row ``r`` of the new user
    (item) table starts as ``earlier``'s row ``user_rows[r]`` (``item_rows[r]``), or fresh
    where that is -1. It stops once a sweep lowers the training loss by no more than
    ``earlier``'s chosen sweep did, at most that many sweeps: most of the model is fitted
    already, so this costs a few sweeps, not another training. Without a training loss to
    follow (implicit feedback) it fits from scratch for the chosen sweep count. With ``shard``
    (``user_rows`` for this rank's users) every rank starts as one process would."""
    drop = loss_drop(earlier.history, earlier.best_epoch)
    if drop is None:
        return fit(data, config, epochs=earlier.best_epoch, shard=shard)
    if shard is not None:  # the whole table's fresh rows, drawn as one process draws them
        every = np.full(shard.n_users, -1, dtype=np.int64)
        every[shard.users] = user_rows
        user_rows = every
    start = carried_over(earlier.model, user_rows, item_rows, config.init_std, config.seed)
    if shard is not None:
        start = with_user_rows(start, shard.users)
    result = fit(data, config, epochs=earlier.best_epoch, shard=shard, start=start, converged=max(0.0, drop))
    result.continued = True
    return result


def loss_drop(history: list, epoch: int) -> float | None:
    """How much sweep ``epoch`` (1-based) lowered the training loss, as a fraction of the loss
    after it (None without the two sweeps' training losses)."""
    if epoch < 2 or len(history) < epoch or "train_loss" not in history[epoch - 1]:
        return None
    before, now = history[epoch - 2]["train_loss"], history[epoch - 1]["train_loss"]
    return (before - now) / now if now > 0 else None


def _squared_error(tables: tuple, users, items, ratings, rating_range, workers: Workers) -> float:
    """The sum of squared prediction errors, ``VAL_CHUNK`` ratings at a time on the workers
    (torch is one-threaded during a fit), added in chunk order: the same sum at any worker
    count, and temporaries of a chunk, not of the whole validation split."""
    def chunk(start: int) -> float:
        part = slice(start, start + VAL_CHUNK)
        pred = predict_ratings(tables, users[part], items[part], rating_range)
        return float(torch.sum((pred - ratings[part]).double() ** 2))

    return sum(workers.map(chunk, ((start,) for start in range(0, len(ratings), VAL_CHUNK))), 0.0)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _as_tensor(array, dtype, device) -> torch.Tensor:
    """``array`` as a ``dtype`` tensor on ``device``; no copy when it already is one (training
    only reads it)."""
    array = np.asarray(array)
    if not array.flags.writeable:  # torch warns on read-only arrays; copy those
        array = array.copy()
    return torch.as_tensor(array).to(device=device, dtype=dtype)


def _local_model(shard: Shard, n_items: int, config, mean: float) -> MatrixFactorization:
    """The model one process would start from, with only this rank's user rows."""
    full = MatrixFactorization(shard.n_users, n_items, config.n_factors, mean, config.init_std,
                               generator=torch.Generator().manual_seed(config.seed))
    return with_user_rows(full, shard.users)
