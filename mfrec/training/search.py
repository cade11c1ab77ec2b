"""Choosing the train step's settings on the validation split, for each dataset.

Settings left ``"auto"`` -- ``reg``, ``reg_exponent``, ``implicit_weight`` and ``confidence``
of :class:`~mfrec.training.config.TrainConfig`, ``rating_weight`` and ``genre_weight`` of
:class:`~mfrec.serving.bundle.RankingConfig` -- are chosen by a small budgeted search; set
values are used as given. The search never looks at the test split.

- A trial fits on the training split with the trial's training settings; early stopping on
  validation RMSE chooses its sweep count, as in every fit. Optuna's TPE sampler (seeded)
  proposes the trials; the first is the prior (``PRIOR``: values a hand search once found on
  ml-latest-small), so the search can only improve on it.
- The ranking weights do not change the fit: each trial that may still be chosen scores a
  small grid of them on its model (rating weight first, then genre weight), which costs a few
  rankings, not fits; one already outside the RMSE tolerance keeps their starting values.
- ``objective="ndcg"`` (default: ``recommend`` is the main task) keeps the trial with the best
  validation NDCG@10 among those whose validation RMSE is within ``RMSE_TOLERANCE`` of the
  best trial's, so ranking gains never cost rating accuracy; ``"rmse"`` keeps the lowest
  validation RMSE (and still picks the ranking weights by NDCG).
- Budget: ``trials`` (deterministic: same seed, same choice), cut short by ``seconds`` (the
  table says when). With more than ``sample_ratings`` training ratings the search runs on a
  seeded sample of users holding about that many; ``reg`` is per row and per k
  (:func:`~mfrec.training.als.row_penalties`), so the choice carries to the whole data.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mfrec.data.ids import IdIndex, Interactions
from mfrec.errors import ConfigError
from mfrec.evaluation.validation import Validation, clearly_better
from mfrec.evaluation.weights import neighbour_term, ranking_weights
from mfrec.serving.bundle import RANKING_PRIOR, RankingConfig
from mfrec.training.config import PRIOR, TrainConfig
from mfrec.training.fit import FitResult, fit

OBJECTIVES = ("ndcg", "rmse")
RMSE_TOLERANCE = 0.005
# What each searched setting may take: (low, high, log scale).
RANGES = {"reg": (0.3, 50.0, True), "reg_exponent": (0.0, 1.0, False), "implicit_weight": (0.25, 16.0, True),
          "confidence": (1.5, 50.0, True)}


@dataclass(frozen=True)
class SearchConfig:
    """The search's objective and budget."""

    objective: str = "ndcg"
    trials: int = 24
    seconds: float = 120.0
    sample_ratings: int = 1_000_000
    validation_users: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (isinstance(self.trials, int) and self.trials >= 1):
            raise ConfigError(f"search_trials must be an integer >= 1, got {self.trials!r}")
        if not (isinstance(self.seconds, (int, float)) and math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"search_seconds must be a number > 0, got {self.seconds!r}")
        if self.sample_ratings < 1000 or self.validation_users < 10:
            raise ConfigError("sample_ratings must be >= 1000 and validation_users >= 10")


@dataclass
class Choice:
    """What the search chose, and every trial it ran (``trials``: one dict per trial)."""

    config: TrainConfig
    ranking: RankingConfig
    trials: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    fit: Optional[FitResult] = None  # the chosen trial's fit on the whole training split, if it had one
    stopped: str = ""
    seconds: float = 0.0
    sampled: Optional[dict] = None

    def chosen(self) -> dict:
        """The chosen value of every searched setting."""
        return dict(self.best.get("params", {}))

    def summary(self) -> str:
        """What was chosen and why, in a sentence."""
        first, best = self.trials[0], self.best
        values = ", ".join(f"{k}={_format(v)}" for k, v in self.chosen().items())
        where = f" on a sample of {self.sampled['users']:,} users ({self.sampled['ratings']:,} ratings)" \
            if self.sampled else ""
        if best is first:
            why = "the starting point (trial 0): no trial ranked clearly better on validation"
        elif best.get("_start"):
            why = (f"the starting point at n_factors {best['params'].get('n_factors')} (trial {best['trial']}): "
                   f"validation NDCG@10 {best['val_ndcg_at_10']:.4f} against trial 0's "
                   f"{first.get('val_ndcg_at_10', float('nan')):.4f}; no trial at that size ranked clearly better")
        else:
            rmse = best.get("val_rmse", float("nan"))
            why = (f"trial {best['trial']}: validation NDCG@10 {best['val_ndcg_at_10']:.4f} against the starting "
                   f"point's {first.get('val_ndcg_at_10', float('nan')):.4f}"
                   + (f", RMSE {rmse:.4f}" if rmse == rmse else ""))
        return (f"settings chosen on validation{where}: {values} -- {why}; {len(self.trials)} trials in "
                f"{self.seconds:.1f} s, stopped by {self.stopped}")

    def rows(self) -> list:
        """The trials as JSON-ready dicts."""
        return [{k: v for k, v in row.items() if not k.startswith("_")} for row in self.trials]

    def table(self) -> str:
        """The trials as a markdown table (what a run logs)."""
        names = [n for n in self.trials[0]["params"]] if self.trials else []
        head = ["trial", *names, "sweeps", "val RMSE", "val NDCG@10", "seconds", "state"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.trials:
            mark = " (chosen)" if row is self.best else ""
            params = [_format(row["params"].get(n)) for n in names]
            lines.append("| " + " | ".join([f"{row['trial']}{mark}", *params, str(row.get("best_epoch", "")),
                                             _format(row.get("val_rmse")), _format(row.get("val_ndcg_at_10")),
                                             f"{row['seconds']:.2f}", row["state"]]) + " |")
        return "\n".join(lines)


def choose(train: pd.DataFrame, val: pd.DataFrame, movies: pd.DataFrame, config: TrainConfig,
           ranking: RankingConfig = RankingConfig(), search: SearchConfig = SearchConfig(),
           space: Optional[dict] = None, on_trial: Optional[Callable[[dict, Optional[FitResult]], None]] = None,
           curve: bool = False) -> Choice:
    """Choose every ``auto`` setting of ``config`` and ``ranking`` on ``val``.

    ``space`` adds settings to search that are not ``auto`` (``-e tune`` adds ``n_factors``:
    ``{"n_factors": [8, 16, ...]}`` for a choice among values, or ``(low, high, log)``).
    ``on_trial(row, fit_result)`` is called after each trial (``row["_history"]``: its sweeps'
    records, pruned trials' too). Trials report their validation curve every sweep -- RMSE,
    or with ``curve`` NDCG@10 at the prior ranking weights (a ranking per sweep: ``-e tune``
    affords it) -- and Optuna's median pruner stops those behind the median of earlier trials
    at the same sweep. The fits of trial 0 and of the leading trial so far are kept, so that
    the train step reuses the chosen one's when it is among them.
    """
    import optuna

    if config.implicit and search.objective == "rmse":
        raise ConfigError("objective rmse needs ratings; implicit feedback has none: use objective ndcg")
    started = time.perf_counter()
    space = {**{name: RANGES[name] for name in config.auto_fields()}, **(space or {})}
    fixed = PRIOR[config.solver]
    if config.solver == "adam":
        space.pop("confidence", None)  # the Adam solver's choice loss has no confidence
    search_train, search_val, sampled = _sample(train, val, search.sample_ratings, search.seed)
    users, items = IdIndex(search_train["userId"]), IdIndex(search_train["movieId"])
    tr = Interactions.from_frame(search_train, users, items)
    va = Interactions.from_frame(search_val, users, items) if len(search_val) else None
    if va is None:
        raise ConfigError("choosing settings on validation needs a validation split (val_fraction > 0), "
                          "or set reg, implicit_weight, confidence, rating_weight and genre_weight explicitly")
    validation = Validation(search_train, search_val, movies, users, items, config,
                            max_users=search.validation_users, seed=search.seed)
    neighbour = None  # the neighbour term's choice, made with the first model that finishes
    prior = {name: (fixed[name] if name in fixed else getattr(config, name)) for name in space}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The prior (at each n_factors, when that is searched) and three random trials, then TPE's.
    sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=4, multivariate=True)
    start = {name: _grid_value(space[name], value) for name, value in prior.items()}
    # A size added to the search (n_factors) starts from the prior at each of its values.
    starts = [start] + [{**start, name: value} for name, spec in space.items() if name not in fixed and _is_choice(spec)
                        for value in spec if value != start[name]]
    # Those first trials run to the end; later ones are pruned when behind their median.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=max(3, len(starts)), n_warmup_steps=4)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for params in starts:
        study.enqueue_trial(params)
    budget = search.trials if space else 1  # nothing to sample: one fit, whose ranking weights are chosen
    trials, fits, matrices, leader, stopped = [], {}, {}, -math.inf, f"{budget} trial{'s' if budget > 1 else ''}"
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=budget, desc="search", unit="trial", disable=not show, leave=False)
    for number in range(budget):
        trial = study.ask()
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        row = {"trial": number, "params": params, "_start": number < len(starts)}
        trial_started = time.perf_counter()
        cfg = replace(config, **{**{n: fixed[n] for n in config.auto_fields()}, **params}, progress=False)
        state, result, history = "complete", None, []
        try:
            result = fit(tr, cfg, va, matrices=matrices,  # (the trials' rating matrices, built by the first)
                         **_hooks(trial, validation, ranking, curve, history, config.implicit))
        except optuna.TrialPruned:
            state = "pruned"
        row["_history"] = history
        if result is not None:
            row.update(best_epoch=result.best_epoch, val_rmse=result.best_val_rmse)
            if neighbour is None:
                ranking, neighbour = neighbour_term(validation, result.model, ranking)
            # A trial already outside the RMSE tolerance can never be chosen: no grid for it.
            grid = config.implicit or number in _choosable([*trials, {**row, "state": state}], search.objective)
            weights, per_user = ranking_weights(validation, result.model, ranking, grid)
            row["params"] = {**params, **weights, **neighbour}
            row["val_ndcg_at_10"] = float(per_user.mean())
            row["_per_user"] = per_user
        row.update(seconds=time.perf_counter() - trial_started, state=state)
        trials.append(row)
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            value = _value(row, trials, search.objective, config.implicit)
            study.tell(trial, value)
            if number == 0 or value > leader:  # memory for two models, not one per trial
                fits = {n: f for n, f in fits.items() if n == 0}
                fits[number], leader = result, value
        if on_trial is not None:
            on_trial(row, result)
        bar.update(1)
        if time.perf_counter() - started > search.seconds and number + 1 < budget:
            stopped = f"the time limit ({search.seconds:g} s) after {number + 1} of {budget} trials"
            break
    bar.close()
    best = _best(trials, search.objective, config.implicit)
    chosen = {k: v for k, v in best["params"].items() if k in TrainConfig.__dataclass_fields__}
    resolved = replace(config, **{**{n: fixed[n] for n in config.auto_fields()}, **chosen})
    resolved_ranking = replace(ranking, **{k: v for k, v in best["params"].items() if k in RANKING_PRIOR})
    reusable = fits.get(best["trial"]) if sampled is None else None
    return Choice(resolved, resolved_ranking, trials, best, reusable, stopped, time.perf_counter() - started, sampled)


def _sample(train: pd.DataFrame, val: pd.DataFrame, target: int, seed: int) -> tuple:
    """``(train, val, None)`` when train holds at most ``target`` ratings, else the ratings of a
    seeded sample of users holding about ``target`` of them, and what was sampled."""
    if len(train) <= target:
        return train, val, None
    counts = train["userId"].value_counts(sort=False)
    order = np.random.default_rng(seed).permutation(len(counts))
    keep = counts.index.to_numpy()[order[:int(np.searchsorted(np.cumsum(counts.to_numpy()[order]), target)) + 1]]
    part = train[train["userId"].isin(keep)]
    return part, val[val["userId"].isin(keep)], {"users": int(len(keep)), "ratings": int(len(part))}


def _is_choice(spec) -> bool:
    """Whether a search-space entry is a list of values (else ``(low, high, log)``)."""
    return isinstance(spec, (list, tuple)) and not (len(spec) == 3 and isinstance(spec[2], bool))


def _suggest(trial, name: str, spec):
    if _is_choice(spec):
        return trial.suggest_categorical(name, list(spec))
    low, high, log = spec
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=log)
    return trial.suggest_float(name, low, high, log=log)


def _grid_value(spec, value):
    """``value`` as the search space can take it (the nearest choice of a categorical)."""
    if _is_choice(spec):
        return min(spec, key=lambda v: abs(v - value))
    low, high, _ = spec
    return min(max(value, low), high)


def _hooks(trial, validation: Validation, ranking: RankingConfig, curve: bool, history: list,
           implicit: bool = False) -> dict:
    """``fit`` keywords for a trial: each sweep's validation score -- RMSE, or with ``curve``
    NDCG@10 at the starting ranking weights -- goes to Optuna, whose pruner may stop the fit,
    and its record to ``history``. (Early stopping, which chooses the sweep count, follows
    validation RMSE; NDCG for implicit feedback, which has no ratings.)"""
    import optuna

    prior = ranking.with_prior()
    curve = curve or implicit
    key = "val_ndcg_at_10" if curve else "val_rmse"

    def on_epoch(record):
        history.append(record)
        trial.report(record[key] if curve else -record[key], record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned()

    score = (lambda model: {key: validation.ndcg(model, prior)}) if curve else None
    return {"on_epoch": on_epoch, "score_epoch": score, **({"stop_on": key} if implicit else {})}


def _value(row: dict, trials: list, objective: str, implicit: bool = False) -> float:
    """What the sampler maximises for a finished trial: NDCG, less a penalty for rating error
    beyond the tolerance (of the best so far at its n_factors), or minus the RMSE."""
    if implicit:
        return row["val_ndcg_at_10"]
    if objective == "rmse":
        return -row["val_rmse"]
    size = row["params"].get("n_factors")
    best_rmse = min(t["val_rmse"] for t in trials if t["state"] == "complete" and t["params"].get("n_factors") == size)
    return row["val_ndcg_at_10"] - 10.0 * max(0.0, row["val_rmse"] - best_rmse - RMSE_TOLERANCE)


def _best(trials: list, objective: str, implicit: bool = False) -> dict:
    """The chosen trial. For NDCG, per ``n_factors`` (one group when the search does not vary
    it): the best trial among those whose validation RMSE is within the tolerance of the
    group's best (implicit feedback: all), unless it is not :func:`clearly_better` than the
    group's first trial (its starting point): noise should not move a choice. Then the group
    whose pick ranks best."""
    complete = _complete(trials, implicit)
    if not complete:
        raise ConfigError("no trial of the settings search finished; raise search_trials or search_seconds")
    if objective == "rmse":
        return min(complete, key=lambda t: (t["val_rmse"], t["trial"]))
    picks = []
    for group, near in _near(complete, implicit):
        best, start = max(near, key=lambda t: (t["val_ndcg_at_10"], -t["trial"])), group[0]
        if start in near and best is not start and not clearly_better(best["_per_user"], start["_per_user"]):
            best = start
        picks.append(best)
    return max(picks, key=lambda t: (t["val_ndcg_at_10"], -t["trial"]))


def _choosable(trials: list, objective: str) -> set:
    """The finished trials (with ratings) that :func:`_best` may still choose however later
    trials turn out: a group's best RMSE only falls, so a trial once outside its tolerance
    stays out (objective RMSE: only the lowest)."""
    complete = _complete(trials)
    if objective == "rmse":
        return {_best(complete, objective)["trial"]} if complete else set()
    return {t["trial"] for _, near in _near(complete) for t in near}


def _complete(trials: list, implicit: bool = False) -> list:
    """The finished trials (with a validation RMSE, unless implicit feedback, which has none)."""
    return [t for t in trials if t["state"] == "complete" and (implicit or math.isfinite(t["val_rmse"]))]


def _near(complete: list, implicit: bool = False) -> list:
    """(group, near) per ``n_factors``: the group's trials in trial order (the first is its
    starting point), and those within the tolerance of its best RMSE (implicit: all)."""
    groups, out = {}, []
    for t in complete:
        groups.setdefault(t["params"].get("n_factors"), []).append(t)
    for group in groups.values():
        limit = math.inf if implicit else min(t["val_rmse"] for t in group) + RMSE_TOLERANCE
        out.append((group, [t for t in group if implicit or t["val_rmse"] <= limit]))
    return out


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
