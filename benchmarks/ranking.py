"""The benchmark's ranking and contention sections on the prepared split of ``--dataset``.

- :func:`peers_section`: EASE and implicit's ALS, each tuned on validation, beside mfrec.
- :func:`tune_section`: what ``-e tune`` does at its default budget (the search over
  n_factors and the auto settings, then the train step with the chosen values), scored on test.
- :func:`busy_training`: the default train step quiet and beside CPU-bound processes.
"""

from __future__ import annotations

import time

from benchmarks import peers
from benchmarks.contention import quiet_and_busy


def peers_section(prepared, seed: int = 0) -> dict:
    return {"ease": peers.ease(prepared.train, prepared.val, prepared.test),
            "implicit_als": peers.implicit_als(prepared.train, prepared.val, prepared.test, seed=seed)}


def tune_section(prepared, seed: int = 0, rating_range=(0.5, 5.0), trials: int | None = None) -> dict:
    """``-e tune``'s search at its default budget (or ``trials``), then the train step with its choice."""
    from entrypoints.tune import DEFAULTS
    from mfrec.serving.bundle import RankingConfig
    from mfrec.training.config import TrainConfig
    from mfrec.training.search import SearchConfig, choose
    from mfrec.workflow import train_and_evaluate

    factors = [int(k) for k in DEFAULTS["n_factors_list"].split(",")]
    search = SearchConfig(trials=trials or int(DEFAULTS["tune_trials"]), seconds=float(DEFAULTS["tune_minutes"]) * 60,
                          seed=seed)
    config = TrainConfig(seed=seed, rating_range=rating_range, progress=False)
    started = time.perf_counter()
    choice = choose(prepared.train, prepared.val, prepared.movies, config, RankingConfig(), search,
                    space={"n_factors": factors}, curve=True)
    searched = time.perf_counter() - started
    outcome = train_and_evaluate(prepared.train, prepared.val, prepared.test, prepared.movies, choice.config,
                                 choice.ranking)
    m = outcome.metrics
    return {"chosen": choice.chosen(), "summary": choice.summary(), "trials": len(choice.trials),
            "search_seconds": searched, "val_ndcg_at_10": choice.best["val_ndcg_at_10"],
            "test_ndcg_at_10": m["test_ndcg_at_10"], "test_rmse": m["test_rmse"], "n_factors": choice.config.n_factors,
            "seconds": time.perf_counter() - started}


def busy_training(prepared, seed: int = 0, rating_range=(0.5, 5.0)) -> dict:
    """The default train step (settings search included) quiet, then beside CPU-bound processes."""
    from mfrec.training.config import TrainConfig
    from mfrec.workflow import train_and_evaluate

    config = TrainConfig(seed=seed, rating_range=rating_range, progress=False)

    def measure():
        started = time.perf_counter()
        outcome = train_and_evaluate(prepared.train, prepared.val, prepared.test, prepared.movies, config)
        return {"seconds": time.perf_counter() - started, "search_seconds": outcome.metrics["search_seconds"],
                "test_ndcg_at_10": outcome.metrics["test_ndcg_at_10"]}

    measure()  # the first run also pays torch's and Optuna's set-up
    return quiet_and_busy(measure)

