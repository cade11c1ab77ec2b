"""Fitting: the estimator around :class:`~mfrec.model.MatrixFactorization`.

The whole training set lives on the device as three tensors; each epoch draws one
permutation and slices it into batches. There is no DataLoader: at a few hundred bytes
per rating, per-row Python objects would cost more than the arithmetic.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from mfrec.device import resolve_device
from mfrec.errors import ConfigError, TrainingError
from mfrec.als import AlsSolver
from mfrec.interactions import Interactions
from mfrec.model import MatrixFactorization
from mfrec import scoring


SOLVERS = ("als", "adam")


@dataclass
class TrainConfig:
    """Hyper-parameters of one fit. Defaults were chosen on the validation split (docs/tuning.md)."""

    n_factors: int = 8
    # "als": exact alternating least-squares sweeps (an epoch is one sweep); "adam":
    # minibatch gradient steps with a softmax choice loss (batch_size, lr, implicit_users
    # and implicit_items apply only to it).
    solver: str = "als"
    epochs: int = 40
    batch_size: int = 8192
    lr: float = 0.01
    reg: float = 2.5
    bias_reg: float = 5.0
    # Weight of the "which films" part of the objective; 0 trains a rating-only model.
    implicit_weight: float = 2.0
    # ALS: weight of a rated user-film pair in the choice loss relative to an unrated one.
    confidence: float = 5.0
    # Fold-in (serving): weight of the films a new customer did not mention, relative to a
    # training user's unrated films; chosen on validation (docs/tuning.md).
    fold_in_unrated_weight: float = 0.03
    # Ranking: weight of a user's genre taste in the ranking score (known users, and new
    # customers in fold-in), and how many pseudo-films of the average genre mix a taste is
    # shrunk towards (mfrec/genres.py); chosen on validation (docs/tuning.md). Weight 0
    # ranks by the factor model alone.
    genre_weight: float = 0.1
    fold_in_genre_weight: float = 0.15
    genre_prior: float = 20.0
    # Softmax of the implicit head over at most this many users x items per batch (0 = all).
    # Exact on small catalogues; sampled (uniform negatives, importance-corrected) at scale.
    implicit_users: int = 1024
    implicit_items: int = 16384
    init_std: float = 0.01
    patience: int = 3
    # Early stopping: training stops after `patience` epochs without validation RMSE
    # improving by more than min_delta (ALS keeps shaving 1e-5s off for dozens of sweeps
    # after it has converged); the best epoch seen is restored.
    min_delta: float = 5e-4
    seed: int = 0
    # Same seed, same device -> same numbers. Costs some speed: scatter-adds with duplicate
    # indices otherwise sum in a thread-dependent order.
    deterministic: bool = True
    device: str = "auto"
    rating_range: tuple = (0.5, 5.0)
    progress: Optional[bool] = None  # None: only when stderr is a terminal

    def validate(self) -> None:
        checks = [
            (self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"),
            (self.n_factors >= 1, f"n_factors must be >= 1, got {self.n_factors}"),
            (len(self.rating_range) == 2 and all(math.isfinite(float(v)) for v in self.rating_range)
             and float(self.rating_range[0]) < float(self.rating_range[1]),
             f"rating_range must be (low, high) with low < high, got {self.rating_range}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (math.isfinite(self.reg) and self.reg >= 0, f"reg must be >= 0, got {self.reg}"),
            (self.solver != "als" or self.reg > 0,
             f"reg must be > 0 with solver 'als' (a user with fewer ratings than factors has no "
             f"unique least-squares solution otherwise), got {self.reg}"),
            (math.isfinite(self.fold_in_unrated_weight) and 0 < self.fold_in_unrated_weight <= 1,
             f"fold_in_unrated_weight must be in (0, 1], got {self.fold_in_unrated_weight}"),
            (math.isfinite(self.genre_weight) and self.genre_weight >= 0,
             f"genre_weight must be >= 0, got {self.genre_weight}"),
            (math.isfinite(self.fold_in_genre_weight) and self.fold_in_genre_weight >= 0,
             f"fold_in_genre_weight must be >= 0, got {self.fold_in_genre_weight}"),
            (math.isfinite(self.genre_prior) and self.genre_prior > 0,
             f"genre_prior must be > 0, got {self.genre_prior}"),
            (math.isfinite(self.confidence) and self.confidence >= 1,
             f"confidence must be >= 1 (a rated film weighs at least as much as an unrated one), got {self.confidence}"),
            (math.isfinite(self.bias_reg) and self.bias_reg >= 0, f"bias_reg must be >= 0, got {self.bias_reg}"),
            (math.isfinite(self.implicit_weight) and self.implicit_weight >= 0,
             f"implicit_weight must be >= 0, got {self.implicit_weight}"),
            (self.implicit_users >= 0, f"implicit_users must be >= 0, got {self.implicit_users}"),
            (self.implicit_items >= 0, f"implicit_items must be >= 0, got {self.implicit_items}"),
            (self.init_std > 0, f"init_std must be > 0, got {self.init_std}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (math.isfinite(self.min_delta) and self.min_delta >= 0, f"min_delta must be >= 0, got {self.min_delta}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def as_params(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("progress",)}


@dataclass
class FitResult:
    model: MatrixFactorization
    history: list = field(default_factory=list)  # dicts: epoch, train_loss, val_rmse
    best_epoch: int = 0
    best_val_rmse: float = float("nan")
    seconds: float = 0.0
    device: str = "cpu"


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
) -> FitResult:
    """Fit a model on ``train``; with ``val``, stop early on validation RMSE and keep the best epoch.

    Parameters
    ----------
    train:
        Training ratings (all indices known).
    config:
        Hyper-parameters and device.
    val:
        Optional validation ratings (unknown users/items allowed: they get bias-only predictions).
    epochs:
        Overrides ``config.epochs`` (the refit uses the epoch count validation chose).
    on_epoch:
        Called after every epoch with ``{"epoch", "train_loss", "val_rmse"}``.
    """
    config.validate()
    if len(train) == 0:
        raise TrainingError("the training set is empty")
    if (train.users < 0).any() or (train.items < 0).any():
        raise TrainingError("training interactions contain unknown user or item indices")
    if train.users.max() >= train.n_users or train.items.max() >= train.n_items:
        raise TrainingError(f"training interactions index past their tables ({train.n_users} users, "
                            f"{train.n_items} items): build them with the IdIndex they came from")
    n_epochs = epochs or config.epochs
    device = resolve_device(config.device, needs_sparse=config.solver == "als")
    # ALS on a CPU uses only deterministic kernels (row-parallel sparse products, fixed-order
    # reductions); leaving the global switch alone also skips its ~1 s import of torch's
    # compiler stack.
    switch = config.deterministic and (config.solver == "adam" or device.type != "cpu")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if switch:
        # cuBLAS needs this set before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(train, config, val, n_epochs, device, on_epoch)
    finally:
        if switch:
            torch.use_deterministic_algorithms(was_deterministic)


def _fit(train, config, val, n_epochs, device, on_epoch) -> FitResult:
    seed_everything(config.seed)
    start = time.perf_counter()

    # int32 indices where they fit (half of int64's memory; same permutations and numbers),
    # sharing the caller's arrays instead of copying them when dtype and device allow.
    index_dtype = torch.int32 if max(train.n_users, train.n_items, len(train)) < 2**31 else torch.long
    users = _as_tensor(train.users, index_dtype, device)
    items = _as_tensor(train.items, index_dtype, device)
    ratings = _as_tensor(train.ratings, torch.float32, device)
    # The mean in float64 from numpy: one summation order, whatever torch's thread count.
    mean = float(np.mean(train.ratings, dtype=np.float64))
    model = MatrixFactorization(
        train.n_users, train.n_items, config.n_factors, mean, config.init_std,
        generator=torch.Generator().manual_seed(config.seed),
    ).to(device)
    rank, world = _distributed_rank()
    if config.solver == "als":
        # Every rank builds its shard's sparse matrices and all-reduces the per-row sums.
        if world > 1:
            users, items, ratings = (t[rank::world] for t in (users, items, ratings))
        solver = AlsSolver(model, users, items, ratings, config, distributed=world > 1)
        del users, items, ratings
    else:
        solver = _AdamSolver(model, users, items, ratings, config, device, index_dtype, rank, world)
    if val is not None:
        val_users = torch.tensor(val.users, dtype=torch.long, device=device)
        val_items = torch.tensor(val.items, dtype=torch.long, device=device)
        val_ratings = torch.tensor(val.ratings, dtype=torch.float32, device=device)

    show = (config.progress if config.progress is not None else sys.stderr.isatty()) and rank == 0
    bar = tqdm(range(1, n_epochs + 1), desc="train", unit="epoch", disable=not show, leave=False)
    result = FitResult(model=model, device=str(device))
    best_state, best_rmse = None, float("inf")
    progress_rmse, since_progress = float("inf"), 0
    for epoch in bar:
        train_loss = solver.epoch()
        if not math.isfinite(train_loss):
            raise TrainingError(f"training loss became {train_loss} at epoch {epoch}; {solver.divergence_advice()}")
        record = {"epoch": epoch, "train_loss": train_loss}
        if val is not None:
            model.eval()
            with torch.no_grad():
                pred = scoring.predict_indices(model, val_users, val_items, config.rating_range)
                record["val_rmse"] = float(torch.sqrt(torch.mean((pred - val_ratings) ** 2)))
            bar.set_postfix(loss=f"{train_loss:.4f}", val_rmse=f"{record['val_rmse']:.4f}")
        else:
            bar.set_postfix(loss=f"{train_loss:.4f}")
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if val is not None:
            if record["val_rmse"] < best_rmse:
                best_rmse = record["val_rmse"]
                best_state = _state(model)
                result.best_epoch = epoch
            if record["val_rmse"] < progress_rmse - config.min_delta:
                progress_rmse, since_progress = record["val_rmse"], 0
            else:
                since_progress += 1
                if since_progress > config.patience:
                    break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_rmse = best_rmse
    else:
        result.best_epoch = len(result.history)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _as_tensor(array, dtype, device) -> torch.Tensor:
    """``array`` as a ``dtype`` tensor on ``device``; no copy when it already is one (training
    only reads it)."""
    array = np.asarray(array)
    if not array.flags.writeable:  # torch warns on read-only arrays; copy those
        array = array.copy()
    return torch.as_tensor(array).to(device=device, dtype=dtype)


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _AdamSolver:
    """One :meth:`epoch` = one permutation of the ratings in minibatches of Adam steps."""

    def __init__(self, model, users, items, ratings, config, device, index_dtype, rank, world):
        self.model = model
        self.config = config
        self.index_dtype = index_dtype
        self.world = world
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        n = len(ratings)
        self.objective = _Objective(model, config, n, self.generator)
        self.batch_size = config.batch_size
        if world > 1:
            # Each rank trains on its own shard with batch_size / world rows per step;
            # DistributedDataParallel averages the gradients, so a step sees batch_size rows.
            shard = torch.randperm(n, generator=self.generator, device=device)[rank::world][: n // world]
            users, items, ratings = users[shard], items[shard], ratings[shard]
            self.batch_size = max(1, config.batch_size // world)
            self.generator.manual_seed(config.seed + 1 + rank)
            self.objective = torch.nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=config.implicit_weight == 0,
            )
        self.users, self.items, self.ratings = users, items, ratings
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def divergence_advice(self) -> str:
        return f"the optimiser diverged: try a smaller lr (now {self.config.lr})"

    def epoch(self) -> float:
        """One pass over the (local) ratings; returns the mean training MSE during it."""
        self.model.train()
        n_local = len(self.ratings)
        loss_sum = torch.zeros((), device=self.ratings.device)
        perm = torch.randperm(n_local, generator=self.generator, device=self.ratings.device, dtype=self.index_dtype)
        for start_row in range(0, n_local, self.batch_size):
            batch = perm[start_row:start_row + self.batch_size]
            loss, mse = self.objective(self.users[batch], self.items[batch], self.ratings[batch])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += mse.detach() * len(batch)
        if self.world > 1:
            torch.distributed.all_reduce(loss_sum)
        return float(loss_sum) / (n_local * self.world)


class _Objective(torch.nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model, config, n_total, generator):
        super().__init__()
        self.model = model
        self.config = config
        self.n_total = n_total
        self.generator = generator

    def forward(self, users, items, ratings):
        return _batch_loss(self.model, users, items, ratings, self.n_total, self.config, self.generator)


def _batch_loss(model, users, items, ratings, n_total, config, generator):
    """Rating MSE + L2 prior (scaled to the whole set) + softmax loss of which items were rated."""
    pred = model(users, items)
    mse = torch.mean((pred - ratings) ** 2)
    loss = mse + (config.reg * model.l2() + config.bias_reg * model.bias_l2()) / n_total
    if config.implicit_weight > 0:
        loss = loss + config.implicit_weight * _choice_loss(model, users, items, config, generator)
    # No per-batch finiteness check: it would sync the GPU every step. NaN propagates into
    # the epoch's loss sum, which fit() checks.
    return loss, mse


def _choice_loss(model, users, items, config, generator):
    """Mean negative log-softmax of each rated item among the catalogue, for the batch's users.

    The normaliser is computed once per distinct user. When a batch has more distinct users
    than ``implicit_users``, a random subset of them (and their rows) stands in; when the
    catalogue is larger than ``implicit_items``, a uniform sample of items, scaled by
    ``n_items / sample``, estimates the normaliser.
    """
    distinct, inverse = torch.unique(users, return_inverse=True)
    if 0 < config.implicit_users < len(distinct):
        pick = torch.randperm(len(distinct), generator=generator, device=users.device)[: config.implicit_users]
        keep = torch.zeros(len(distinct), dtype=torch.bool, device=users.device)
        keep[pick] = True
        rows = keep[inverse]
        users, items = users[rows], items[rows]
        distinct, inverse = torch.unique(users, return_inverse=True)
    n_items = model.item_factors.shape[0]
    if 0 < config.implicit_items < n_items:
        sample = torch.randint(0, n_items, (config.implicit_items,), generator=generator, device=users.device)
        log_norm = torch.logsumexp(model.choice_logits(distinct, sample), dim=1) + math.log(n_items / config.implicit_items)
    else:
        log_norm = torch.logsumexp(model.choice_logits(distinct), dim=1)
    chosen = (model.user_choice_factors[users] * model.item_factors[items]).sum(1) + model.item_logit_bias[items]
    return torch.mean(log_norm[inverse] - chosen)
