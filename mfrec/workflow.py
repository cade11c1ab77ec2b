"""Train → refit → evaluate on a prepared split, without MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pandas as pd

from mfrec import train as training
from mfrec.evaluate import evaluate
from mfrec.interactions import IdIndex, Interactions
from mfrec.recommender import Recommender


@dataclass
class TrainOutcome:
    recommender: Recommender
    metrics: dict
    history: list = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"


def train_and_evaluate(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, movies: pd.DataFrame,
                       config: training.TrainConfig, refit: bool = True,
                       on_epoch: Optional[Callable[[dict], None]] = None) -> TrainOutcome:
    """Choose the epoch count on ``val``, refit on train+val, evaluate on ``test``.

    The peers we compare with train on every non-test rating, so the final model does too
    (``refit=False`` keeps the validation-phase model, trained on ``train`` only).
    """
    config.validate()
    started = time.perf_counter()
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    tr = Interactions.from_frame(train, users, items)
    va = Interactions.from_frame(val, users, items) if len(val) else None
    first = training.fit(tr, config, val=va, on_epoch=on_epoch)
    fit_frame, result = train, first
    selected = time.perf_counter()
    if refit and va is not None:
        fit_frame, users, items, result = _refit(train, val, config, epochs=first.best_epoch)
    finished = time.perf_counter()
    meta = {
        "rating_range": list(config.rating_range),
        "n_factors": config.n_factors,
        "best_epoch": first.best_epoch,
        "train_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.as_params().items()},
    }
    rec = Recommender.build(result.model, users, items, fit_frame, movies, meta)
    scores = evaluate(rec, fit_frame, test)
    scores.update({
        # Both fits; the refit alone (fixed settings on train+val) is what a peer's fit does.
        "train_seconds": finished - started,
        "select_seconds": selected - started,
        "refit_seconds": finished - selected,
        # The refit's fit() alone, without indexing the ids (a peer's fit time excludes its
        # own data preparation too, e.g. Surprise's build_full_trainset).
        "refit_fit_seconds": result.seconds if result is not first else float("nan"),
        "epochs_run": len(first.history),
        "best_epoch": first.best_epoch,
        "best_val_rmse": first.best_val_rmse,
    })
    return TrainOutcome(rec, scores, first.history, first.best_epoch, first.device)


def _refit(train: pd.DataFrame, val: pd.DataFrame, config: training.TrainConfig, epochs: int):
    """Fit on train + val for ``epochs``; returns the frame, its id indexes and the fit."""
    frame = pd.concat([train, val], ignore_index=True)
    users, items = IdIndex(frame["userId"]), IdIndex(frame["movieId"])
    result = training.fit(Interactions.from_frame(frame, users, items), config, epochs=epochs)
    return frame, users, items, result


def refit_alone(train: pd.DataFrame, val: pd.DataFrame, config: training.TrainConfig, epochs: int) -> tuple:
    """Time the refit by itself: (seconds with id indexing, seconds of its fit() alone). The
    like-for-like figure for a peer's fit, whose settings are fixed too."""
    started = time.perf_counter()
    *_, result = _refit(train, val, config, epochs=epochs)
    return time.perf_counter() - started, result.seconds
