"""Settings chosen on validation: what the train step searches, how it decides, its budget."""

import math
from dataclasses import replace

import pandas as pd
import pytest

from mfrec.data.ids import IdIndex, Interactions
from mfrec.errors import ConfigError
from mfrec.evaluation.evaluate import evaluate
from mfrec.evaluation.validation import Validation
from mfrec.serving.bundle import RankingConfig
from mfrec.training.config import TrainConfig
from mfrec.training.fit import fit
from mfrec.training.search import RMSE_TOLERANCE, SearchConfig, choose
from mfrec.workflow import train_and_evaluate

QUICK = dict(epochs=6, progress=False)


def test_the_default_train_step_chooses_its_settings_on_validation(trained_small):
    choice = trained_small.choice
    assert choice is not None and len(choice.trials) == SearchConfig().trials
    assert trained_small.config.auto_fields() == () and trained_small.ranking.auto_fields() == ()
    chosen = choice.chosen()
    assert set(chosen) == {"reg", "implicit_weight", "confidence", "rating_weight", "genre_weight", "neighbour_weight",
                           "neighbour_reg"}
    assert trained_small.config.reg == chosen["reg"] and trained_small.ranking.genre_weight == chosen["genre_weight"]
    # The first trial is the prior; the choice keeps RMSE within the tolerance of the best trial.
    assert choice.trials[0]["params"]["reg"] == 2.5
    best_rmse = min(t["val_rmse"] for t in choice.trials if t["state"] == "complete")
    assert choice.best["val_rmse"] <= best_rmse + RMSE_TOLERANCE
    assert trained_small.metrics["val_ndcg_at_10"] == choice.best["val_ndcg_at_10"]
    # What the served bundle records is what was chosen.
    meta = trained_small.recommender.meta
    assert meta["objective"]["reg"] == chosen["reg"] and meta["ranking"]["rating_weight"] == chosen["rating_weight"]
    assert "(chosen)" in choice.table() and "settings chosen on validation" in choice.summary()


def test_explicit_settings_are_used_as_given(small_split):
    train, val, test, movies = small_split
    config = TrainConfig(reg=3.0, implicit_weight=1.0, confidence=4.0, **QUICK)
    outcome = train_and_evaluate(train, val, test, movies, config, RankingConfig(rating_weight=0.3, genre_weight=0.05,
                                                                                  neighbour_weight=0.0))
    assert outcome.choice is None and outcome.config == config
    assert outcome.recommender.meta["ranking"]["rating_weight"] == 0.3
    assert 0 < outcome.metrics["val_ndcg_at_10"] < 1  # scored for comparisons, though nothing was searched


def test_only_the_auto_settings_are_searched(small_split):
    train, val, _, movies = small_split
    config = TrainConfig(implicit_weight=1.0, confidence=4.0, **QUICK)  # reg stays auto
    choice = choose(train, val, movies, config, RankingConfig(rating_weight=0.25, genre_weight=0.1, neighbour_weight=0.0),
                    SearchConfig(trials=3))
    assert set(choice.chosen()) == {"reg"}
    assert choice.config.implicit_weight == 1.0 and choice.ranking.rating_weight == 0.25
    assert len({t["params"]["reg"] for t in choice.trials}) == 3


def test_same_seed_same_choice(small_split):
    train, val, _, movies = small_split
    runs = [choose(train, val, movies, TrainConfig(**QUICK), search=SearchConfig(trials=4, seed=s)).rows()
            for s in (0, 0, 1)]
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in run] for run in runs]
    assert strip[0] == strip[1]
    assert strip[0] != strip[2]


def test_rmse_objective_keeps_the_lowest_validation_rmse(small_split):
    train, val, _, movies = small_split
    choice = choose(train, val, movies, TrainConfig(**QUICK), search=SearchConfig(objective="rmse", trials=4))
    assert choice.best["val_rmse"] == min(t["val_rmse"] for t in choice.trials if t["state"] == "complete")


def test_the_time_limit_ends_the_search_and_says_so(small_split):
    train, val, _, movies = small_split
    choice = choose(train, val, movies, TrainConfig(**QUICK), search=SearchConfig(trials=5, seconds=1e-3))
    assert len(choice.trials) == 1
    assert choice.stopped == "the time limit (0.001 s) after 1 of 5 trials"


def test_large_data_is_searched_on_a_sample_of_users(small_split):
    train, val, test, movies = small_split
    search = SearchConfig(trials=2, sample_ratings=20_000)
    choice = choose(train, val, movies, TrainConfig(**QUICK), search=search)
    assert choice.sampled["ratings"] >= 20_000 and choice.sampled["users"] < train["userId"].nunique()
    assert choice.fit is None  # a fit on a sample is not the train step's fit
    assert "on a sample of" in choice.summary()
    outcome = train_and_evaluate(train, val, test, movies, TrainConfig(**QUICK), search=search)
    assert outcome.config.auto_fields() == () and outcome.metrics["test_rmse"] < 1.0


def test_a_search_needs_a_validation_split(small_split):
    train, _, _, movies = small_split
    with pytest.raises(ConfigError, match="needs a validation split"):
        choose(train, train.iloc[:0], movies, TrainConfig(**QUICK))


def test_fit_takes_numbers_only(small_split):
    train = small_split[0]
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    with pytest.raises(ConfigError, match="reg, implicit_weight, confidence are 'auto'"):
        fit(Interactions.from_frame(train, users, items), TrainConfig(**QUICK))


@pytest.mark.parametrize("bad,message", [
    (dict(objective="mae"), "objective must be one of ndcg, rmse, got 'mae'"),
    (dict(trials=0), "search_trials must be an integer >= 1"),
    (dict(seconds=float("nan")), "search_seconds must be a number > 0"),
])
def test_bad_search_settings_are_named(bad, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**bad)


@pytest.mark.parametrize("span_rows", [1024, 64])
def test_validation_ranks_as_evaluation_does(trained_small, small_split, span_rows, monkeypatch, request):
    """The search's NDCG is the test metric's computation on other ratings: scored on the
    test split, it gives the evaluated model's test NDCG@10 (its users in one span, or in many
    ranked on worker threads) -- to rounding: a matrix product may round a score's last bit
    differently with the user at another place in the block (validation's blocks hold its
    sampled users, evaluation's every test user), which can swap two films one bit apart."""
    import threading

    import torch

    from mfrec.evaluation import validation as validation_module
    from mfrec.serving import scoring

    monkeypatch.setattr(validation_module, "SPAN_ROWS", span_rows)
    monkeypatch.setenv("MFREC_THREADS", "2")
    names, real_top_k = set(), scoring.top_k
    monkeypatch.setattr(scoring, "top_k", lambda *a: names.add(threading.current_thread().name) or real_top_k(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    request.addfinalizer(lambda: torch.set_num_threads(before))
    train, val, test, movies = small_split
    rec, ranking = trained_small.recommender, trained_small.ranking
    assert ranking.neighbour_weight > 0  # its scores' columns come first in validation's ranking
    seen = pd.concat([train, val], ignore_index=True)
    validation = Validation(seen, test, movies, rec.user_index, rec.item_index, trained_small.config, max_users=10**6)
    names.clear()
    got = validation.ndcg(rec.model, ranking)
    ran_on = set(names)
    assert math.isclose(got, evaluate(rec, seen, test)["test_ndcg_at_10"], abs_tol=1e-4)
    other = replace(ranking, rating_weight=ranking.rating_weight + 0.5)
    assert math.isclose(validation.ndcg(rec.model, other),
                        evaluate(rec.with_ranking(rating_weight=other.rating_weight), seen, test)["test_ndcg_at_10"],
                        abs_tol=1e-4)
    if span_rows < 500:  # several spans (the split's 600-odd users): ranked on worker threads
        assert any(name.startswith("mfrec-block") for name in ran_on)


def test_a_grid_of_ranking_weights_ranks_each_as_it_ranks_alone(trained_small, small_split):
    """The search scores each grid of weights in one pass (the shared part of the score once,
    each weighting's own multiples of the parts that differ): every user's NDCG@10 under each
    weighting is the one that weighting gets ranked alone, which is the served ranking's."""
    train, val, test, movies = small_split
    rec, ranking = trained_small.recommender, trained_small.ranking
    seen = pd.concat([train, val], ignore_index=True)
    validation = Validation(seen, test, movies, rec.user_index, rec.item_index, trained_small.config, max_users=10**6)
    grid = [ranking, replace(ranking, rating_weight=1.0), replace(ranking, genre_weight=0.3),
            replace(ranking, neighbour_weight=0.0), replace(ranking, neighbour_reg=ranking.neighbour_reg * 4),
            replace(ranking, rating_weight=0.0, genre_weight=0.0, neighbour_weight=8.0)]
    together = validation.ndcg_grid(rec.model, grid)
    alone = [validation.ndcg_per_user(rec.model, weights) for weights in grid]
    assert len({round(float(a.mean()), 6) for a in alone}) == len(grid)  # weightings that rank differently
    for weights, got, expected in zip(grid, together, alone):
        assert (got == expected).mean() > 0.99, weights  # (a tie may round the other way)
        assert math.isclose(got.mean(), expected.mean(), abs_tol=1e-3), weights
    assert math.isclose(together[0].mean(), evaluate(rec, seen, test)["test_ndcg_at_10"], abs_tol=1e-4)


def test_a_trial_outside_the_rmse_tolerance_is_never_choosable():
    """Such a trial skips the grid of ranking weights: a group's best RMSE only falls, so it
    can never come back within the tolerance (objective RMSE: only the lowest can be chosen)."""
    from mfrec.training.search import _choosable

    def row(n, rmse, state="complete", **params):
        return {"trial": n, "state": state, "val_rmse": rmse, "params": params}

    trials = [row(0, 0.90), row(1, 0.80), row(2, math.nan, "pruned"), row(3, 0.80 + RMSE_TOLERANCE), row(4, math.nan),
              row(5, 0.81)]
    assert _choosable(trials, "ndcg") == {1, 3}
    assert _choosable(trials, "rmse") == {1}
    sized = [row(0, 0.90, n_factors=8), row(1, 0.80, n_factors=16), row(2, 0.93, n_factors=8)]
    assert _choosable(sized, "ndcg") == {0, 1}
    assert _choosable([], "rmse") == set()
