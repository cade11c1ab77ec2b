"""The ranking weights of one fitted model, chosen on validation.

The settings search (:mod:`mfrec.training.search`) calls these for its trials' models: the
weights change the ranking, not the fit, so each costs a pass of rankings over the validation
users (:meth:`~mfrec.evaluation.validation.Validation.ndcg_grid`: one pass a grid), not a fit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mfrec.evaluation.validation import Validation, clearly_better
from mfrec.serving.bundle import RankingConfig

RATING_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
GENRE_WEIGHTS = (0.0, 0.05, 0.1, 0.2)
NEIGHBOUR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
NEIGHBOUR_REGS = (1.0, 4.0, 16.0, 64.0)


def neighbour_term(validation: Validation, model, ranking: RankingConfig) -> tuple[RankingConfig, dict]:
    """``ranking`` with its ``auto`` neighbour weight and reg chosen with ``model`` (the
    search's first) at the other weights' starting values: the reg of ``NEIGHBOUR_REGS`` that
    ranks validation best at a middle weight, then the weight of ``NEIGHBOUR_WEIGHTS`` at that
    reg, kept only when :func:`clearly_better` than no neighbour term. The EASE weights depend
    on the data alone, so later trials keep the choice (and choose their own rating and genre
    weights with it). Also the choice as trial parameters, for the record."""
    auto = [name for name in ("neighbour_weight", "neighbour_reg") if name in ranking.auto_fields()]
    if not auto:
        return ranking, {}
    start = ranking.with_prior()

    def scored(pairs):  # (weight, reg) pairs -> their per-user NDCG, ranked in one pass
        return validation.ndcg_grid(model, [replace(start, neighbour_weight=w, neighbour_reg=r) for w, r in pairs])

    weight = ranking.neighbour_weight if "neighbour_weight" not in auto else NEIGHBOUR_WEIGHTS[len(NEIGHBOUR_WEIGHTS) // 2]
    reg = ranking.neighbour_reg
    if "neighbour_reg" in auto:
        tried = scored([(weight, r) for r in NEIGHBOUR_REGS])
        reg = max(zip(NEIGHBOUR_REGS, tried), key=lambda t: (t[1].mean(), -t[0]))[0]
    if "neighbour_weight" in auto:
        grid = [w for w in NEIGHBOUR_WEIGHTS if w > 0]
        off, *tried = scored([(0.0, reg)] + [(w, reg) for w in grid])
        best, weight = max(zip(tried, grid), key=lambda t: (t[0].mean(), -t[1]))
        if not clearly_better(best, off):
            weight = 0.0
    chosen = {"neighbour_weight": weight, "neighbour_reg": reg} if weight > 0 else {"neighbour_weight": 0.0}
    chosen = {name: value for name, value in chosen.items() if name in auto}  # without the term, no reg to record
    return replace(ranking, **chosen), chosen


def ranking_weights(validation: Validation, model, ranking: RankingConfig,
                    search_grid: bool = True) -> tuple[dict, np.ndarray]:
    """The ``auto`` ranking weights that rank ``model`` best on validation (rating weight over
    its grid, then genre weight at that rating weight; a move away from the prior only when
    :func:`clearly_better`), and the validation users' NDCG@10 with them (the neighbour term
    as :func:`neighbour_term` chose it). Without ``search_grid``: the prior's."""
    current, scores = ranking.with_prior(), None
    for name, grid in (("rating_weight", RATING_WEIGHTS), ("genre_weight", GENRE_WEIGHTS)) if search_grid else ():
        if name not in ranking.auto_fields():
            continue
        candidates = [replace(current, **{name: value}) for value in grid if value != getattr(current, name)]
        # Each grid in one pass over the users (the starting point's scores with the first).
        tried = validation.ndcg_grid(model, ([current] if scores is None else []) + candidates)
        if scores is None:
            scores, *tried = tried
        if tried:
            best_scores, best = max(zip(tried, candidates), key=lambda t: t[0].mean())
            if clearly_better(best_scores, scores):
                scores, current = best_scores, best
    if scores is None:
        scores = validation.ndcg_per_user(model, current)
    return {name: getattr(current, name) for name in ranking.auto_fields()}, scores
