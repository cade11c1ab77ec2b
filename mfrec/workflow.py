"""The library's train step: choose the settings left ``auto`` and the sweep count on
validation, refit, evaluate on test, then fit the model to serve on every prepared rating.

No MLflow here: ``entrypoints/train.py`` logs what these return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import pandas as pd

from mfrec.data.ids import IdIndex, Interactions
from mfrec.evaluation.evaluate import evaluate
from mfrec.evaluation.validation import Validation
from mfrec.serving.bundle import Bundle, RankingConfig
from mfrec.serving.recommender import Recommender
from mfrec.training.config import TrainConfig
from mfrec.training.fit import FitResult, continued, fit
from mfrec.training.parallel import threads_for
from mfrec.training.search import Choice, SearchConfig, choose


@dataclass
class TrainOutcome:
    recommender: Recommender
    metrics: dict
    history: list = field(default_factory=list)
    best_epoch: int = 0
    device: str = "cpu"
    config: Optional[TrainConfig] = None  # the settings used: every ``auto`` chosen
    ranking: Optional[RankingConfig] = None
    choice: Optional[Choice] = None  # the settings search, when one ran


def train_and_evaluate(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, movies: pd.DataFrame,
                       config: TrainConfig = TrainConfig(), ranking: RankingConfig = RankingConfig(),
                       refit: bool = True, on_epoch: Optional[Callable[[dict], None]] = None,
                       search: SearchConfig = SearchConfig(), on_trial: Optional[Callable] = None) -> TrainOutcome:
    """Choose the ``auto`` settings (:mod:`mfrec.training.search`) and the epoch count on
    ``val``, refit on train+val, evaluate on ``test``.

    The peers we compare with train on every non-test rating, so the final model does too:
    the validation-phase model continued on train+val (:func:`~mfrec.training.fit.continued`;
    ``refit=False`` keeps the validation-phase model, trained on ``train`` only). A small
    problem runs on one thread throughout (:func:`mfrec.training.parallel.threads_for`).
    """
    with threads_for(len(train)):
        return _train_and_evaluate(train, val, test, movies, config, ranking, refit, on_epoch, search, on_trial)


def _train_and_evaluate(train, val, test, movies, config, ranking, refit, on_epoch, search, on_trial) -> TrainOutcome:
    started = time.perf_counter()
    users, items = train_users, train_items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    va = Interactions.from_frame(val, users, items) if len(val) else None
    if config.implicit:  # no ratings: no predicted rating to weigh into the ranking
        ranking = replace(ranking, rating_weight=0.0)
    choice, validation = None, None
    if config.auto_fields() or ranking.auto_fields():
        choice = choose(train, val, movies, config, ranking, search, on_trial=on_trial)
        config, ranking = choice.config, choice.ranking
    searched = time.perf_counter()
    if choice is not None and choice.fit is not None:  # the chosen trial was this very fit
        first = choice.fit
        for record in first.history if on_epoch is not None else ():
            on_epoch(record)
    else:
        monitor = {}
        if config.implicit and va is not None:  # no ratings to stop on: validation NDCG instead
            validation = Validation(train, val, movies, train_users, train_items, config,
                                    max_users=search.validation_users, seed=search.seed)
            monitor = {"score_epoch": lambda model: {"val_ndcg_at_10": validation.ndcg(model, ranking)},
                       "stop_on": "val_ndcg_at_10"}
        first = fit(Interactions.from_frame(train, users, items), config, val=va, on_epoch=on_epoch, **monitor)
    fit_frame, result = train, first
    selected = time.perf_counter()
    if refit and va is not None:
        fit_frame = pd.concat([train, val], ignore_index=True)
        users, items = IdIndex(fit_frame["userId"]), IdIndex(fit_frame["movieId"])
        result = continued(first, Interactions.from_frame(fit_frame, users, items), train_users.index(users.ids),
                           train_items.index(items.ids), config)
    finished = time.perf_counter()
    bundle = Bundle.build(result.model, users, items, fit_frame, movies, config, ranking, best_epoch=first.best_epoch)
    rec = Recommender(bundle)
    scores = evaluate(rec, fit_frame, test, progress=config.progress)
    scores.update({
        "train_seconds": finished - started,
        "search_seconds": searched - started,
        "select_seconds": selected - searched,
        "refit_seconds": finished - selected,
        # The recommender's build (seen lists, genre votes) and the test metrics.
        "evaluate_seconds": time.perf_counter() - finished,
        # The refit's fit() alone, without indexing the ids (a peer's fit time excludes its
        # own data preparation too).
        "refit_fit_seconds": result.seconds if result is not first else float("nan"),
        "epochs_run": len(first.history),
        "best_epoch": first.best_epoch,
        "refit_sweeps": len(result.history) if result is not first else 0,
        "best_val_rmse": first.best_val_rmse,
    })
    if choice is not None:
        scores.update({"search_trials": len(choice.trials), "val_ndcg_at_10": choice.best["val_ndcg_at_10"]})
    elif va is not None:  # what a search would have scored these settings at, for comparisons (the sweep's)
        validation = validation or Validation(train, val, movies, train_users, train_items, config,
                                              max_users=search.validation_users, seed=search.seed)
        scores["val_ndcg_at_10"] = validation.ndcg(first.model, ranking)
    return TrainOutcome(rec, scores, first.history, first.best_epoch, first.device, config, ranking, choice)


def served_model(outcome: TrainOutcome, train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                 movies: pd.DataFrame, refit_all: bool = True) -> tuple[Recommender, float]:
    """The model to serve, and the seconds its fit took.

    With ``refit_all`` it is fitted on every prepared rating (train + validation + test) with
    the evaluated settings, continuing from the evaluated model
    (:func:`~mfrec.training.fit.continued`: users and films it has keep their factors, new
    ones start as in a new model; a few sweeps, not another training). Without
    ``refit_all``, the evaluated (held-out) model is served as it is. Either
    way a customer's rated films are all their prepared ratings, so ``recommend`` never shows
    one of them.
    """
    ratings = pd.concat([train, val, test], ignore_index=True)
    if not refit_all:
        fit_on = {"ratings": int(len(train) + len(val)), "parts": "train+val", "refit_all": False}
        return Recommender(outcome.recommender.bundle.with_seen(ratings, fit_on=fit_on)), 0.0
    started = time.perf_counter()
    config, ranking = outcome.config, outcome.ranking
    users, items = IdIndex(ratings["userId"]), IdIndex(ratings["movieId"])
    data = Interactions.from_frame(ratings, users, items)
    before = outcome.recommender.bundle
    # The evaluated fit as validation chose it: its model, and the sweeps that chose the count.
    evaluated = FitResult(before.model, outcome.history, outcome.best_epoch)
    with threads_for(len(ratings)):
        result = continued(evaluated, data, before.user_index.index(users.ids), before.item_index.index(items.ids),
                           config)
        del data  # 12 bytes a rating the bundle's build need not hold at its peak (0.3 GB at 25M)
        fit_on = {"ratings": int(len(ratings)), "parts": "train+val+test", "refit_all": True,
                  "sweeps": len(result.history), "continued": result.continued}
        bundle = Bundle.build(result.model, users, items, ratings, movies, config, ranking,
                              best_epoch=outcome.best_epoch, fit_on=fit_on)
    return Recommender(bundle), time.perf_counter() - started

