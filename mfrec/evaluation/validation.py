"""Validation NDCG@10 of ``recommend`` for models in training.

The train step chooses its settings on it (:mod:`mfrec.training.search`; the sweep count
follows validation RMSE, which :func:`mfrec.training.fit.fit` computes itself),
so they are computed the way test metrics and served answers are: from the same
:class:`~mfrec.serving.bundle.Bundle` data (the training ratings as each user's seen films,
their genre votes) with the scoring functions of :mod:`mfrec.serving.scoring` that the
served ``recommend`` ranks with. Only the sampled validation users are scored, and what does
not depend on the model (their genre taste) is computed once.
"""

from __future__ import annotations

import copy
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mfrec.data.ids import IdIndex
from mfrec.evaluation import metrics
from mfrec.serving import genres, neighbours, scoring
from mfrec.serving.bundle import Bundle, RankingConfig
from mfrec.training.model import MatrixFactorization

K = 10
# Validation users ranked per job of the worker threads.
SPAN_ROWS = 1024


class Validation:
    """Scores models fitted on ``train`` (indexed by ``users``/``items``) on ``val``.

    NDCG is averaged over at most ``max_users`` validation users with a relevant film (a
    seeded sample when there are more), so that scoring stays cheap at any scale.
    """

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, movies: pd.DataFrame, users: IdIndex, items: IdIndex,
                 train_config, max_users: int = 5000, seed: int = 0):
        placeholder = MatrixFactorization(len(users), len(items), train_config.n_factors)
        self.base = Bundle.build(placeholder, users, items, train, movies, train_config.with_prior(),
                                 RankingConfig().with_prior())
        ranked, relevant = metrics.relevant_sets(val, users.index(val["userId"].to_numpy()),
                                                 items.index(val["movieId"].to_numpy()), train_config.rating_range)
        if len(ranked) > max_users:
            keep = np.sort(np.random.default_rng(seed).choice(len(ranked), max_users, replace=False))
            ranked, relevant = ranked[keep], [relevant[j] for j in keep]
        self.ranked, self.relevant = ranked, relevant
        self._users = torch.from_numpy(ranked)
        self._genres = torch.from_numpy(genres.genre_matrix(self.base.items["genres"].to_numpy())[1])
        rates = genres.base_rates(self.base.genre_votes, self.base.vote_total)
        prior = self.base.ranking.genre_prior
        self._taste = torch.from_numpy(genres.taste(self.base.genre_votes[ranked], self.base.vote_total[ranked],
                                                    rates, prior))
        self._near = {}  # neighbour_reg -> (films, the sampled users' neighbour scores): model-free
        self._gram = None

    def neighbour_scores(self, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(films with weights, the sampled users' neighbour scores over them) of EASE weights
        fitted on the training ratings with ``reg``; kept for the last few values asked."""
        b = self.base
        if self._gram is None:  # X^T X does not depend on reg
            self._gram = self._films, neighbours.gramian(b.seen_indptr, b.seen_indices, self._films, len(b.item_index))
        if reg not in self._near:
            near = neighbours.solve(*self._gram, reg)
            if len(self._near) >= 4:
                self._near.pop(next(iter(self._near)))
            self._near[reg] = (torch.from_numpy(near.items),
                               neighbours.scores(near, b.seen_indptr, b.seen_indices, self.ranked, len(b.item_index)))
        return self._near[reg]

    @cached_property
    def _films(self) -> np.ndarray:
        """The neighbour term's films (item rows, ascending)."""
        return neighbours.most_rated(self.base.seen_indices, len(self.base.item_index))

    @cached_property
    def _films_first(self) -> tuple[torch.Tensor, np.ndarray]:
        """(item rows in score-column order, the seen lists in that order): with the neighbour
        term its films come first, where the term is one dense add (index_add_ into scattered
        columns cost about 6 ns a score added, an eighth of the search's ranking time at 62k films)."""
        b = self.base
        order = np.concatenate([self._films, np.setdiff1d(np.arange(len(b.item_index)), self._films,
                                                          assume_unique=True)])
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        return torch.from_numpy(order), place[b.seen_indices]

    def ndcg(self, model, ranking: RankingConfig) -> float:
        """NDCG@10 of ``recommend`` for the (sampled) validation users."""
        return float(np.mean(self.ndcg_per_user(model, ranking)))

    def ndcg_per_user(self, model, ranking: RankingConfig) -> np.ndarray:
        """Each (sampled) validation user's NDCG@10 of ``recommend``."""
        return self.ndcg_grid(model, [ranking])[0]

    @torch.no_grad()
    def ndcg_grid(self, model, rankings: Sequence[RankingConfig]) -> list[np.ndarray]:
        """:meth:`ndcg_per_user` of each of ``rankings`` (weights of one model), in one pass.

        A block's score parts that the rankings share -- the served score at the weights they
        all have -- are computed once (the served path's :mod:`~mfrec.serving.scoring`
        product, seen films masked); each ranking adds its own multiple of the parts whose
        weight differs (predicted rating, genre taste, neighbour scores) before its top 10.
        A grid of weights then costs a product per differing part, not one per ranking. One
        ranking is scored as the served ``recommend`` scores it; in a grid, a weighting's
        scores are its own up to rounding (summed in another order), which may swap two
        films a bit apart.
        """
        model, rankings = _on_cpu(model), list(rankings)
        if not rankings:
            return []
        weights = np.array([[r.rating_weight, r.genre_weight, r.neighbour_weight] for r in rankings], np.float64)
        varies = (weights != weights[0]).any(0)
        shared_rating, shared_genre = (0.0 if varies[j] else float(weights[0, j]) for j in (0, 1))
        taste = self._taste * shared_genre if shared_genre > 0 else None
        rows = scoring.ranking_rows(model, self._users, shared_rating, None, taste)
        table = scoring.ranking_table(model, shared_rating, self._genres if shared_genre > 0 else None)
        parts = []  # (rows, table, each ranking's weight of it): the parts whose weight varies
        if varies[0]:
            parts.append((*scoring.rating_parts(model, self._users), weights[:, 0]))
        if varies[1]:
            parts.append((self._taste, self._genres.T.contiguous(), weights[:, 1]))
        seen, order, near = self.base.seen_indices, None, [None] * len(rankings)
        if (weights[:, 2] > 0).any():
            order, seen = self._films_first
            table = table[:, order]
            parts = [(r, t[:, order], w) for r, t, w in parts]
            near = [self.neighbour_scores(r.neighbour_reg)[1] if r.neighbour_weight > 0 else None for r in rankings]
        alone = len(rankings) == 1  # the served score itself: no copy of it to add to

        def rank(span, blocks):
            tops = [[] for _ in rankings]
            for block in blocks.slices(span):  # blocks of scores that stay in the cache
                shared = blocks.product(rows[block], table)
                scoring.mask_seen(shared, self.base.seen_indptr, seen, self.ranked[block])
                products = [blocks.product(r[block], t, slot) for slot, (r, t, _) in enumerate(parts, 1)]
                for j, ranking in enumerate(rankings):
                    scores = shared
                    if not alone:  # shared plus this weighting's multiples, in a buffer of its own
                        scores = blocks.buffer(len(shared), shared, -1)
                        base = shared
                        for product, (_, _, w) in zip(products, parts):
                            base = torch.add(base, product, alpha=float(w[j]), out=scores)
                        if base is shared:  # only the neighbour term varies
                            scores.copy_(shared)
                    if near[j] is not None:  # the neighbour films' columns come first
                        # Weighted, then added: the served sum's rounding (not a fused add).
                        weighted = torch.mul(near[j][block], float(ranking.neighbour_weight),
                                             out=blocks.buffer(len(shared), near[j], -2))
                        scores[:, :near[j].shape[1]].add_(weighted.to(scores.dtype))
                    tops[j].append(scoring.top_k(scores, K)[1])
            return [torch.cat(top) for top in tops]

        spans = scoring.in_spans(len(rows), table.shape[1], rank, SPAN_ROWS, parallel=True)
        out = []
        for j in range(len(rankings)):
            top = torch.cat([span[j] for span in spans])
            out.append(metrics.per_user((top if order is None else order[top]).numpy(), self.relevant, K)[2])
        return out


# A gain counts when it exceeds this many standard errors of the mean per-user difference: the
# best of a few dozen trials beats the starting point by one standard error by chance alone.
CLEAR_GAIN = 2.0


def clearly_better(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether per-user scores ``new`` beat ``old`` (same users) by more than ``CLEAR_GAIN``
    standard errors of the mean difference: a gain validation noise alone would rarely show."""
    diff = np.asarray(new, np.float64) - np.asarray(old, np.float64)
    if len(diff) < 2:
        return bool(diff.mean() > 0)
    return bool(diff.mean() > CLEAR_GAIN * diff.std(ddof=1) / np.sqrt(len(diff)))


def _on_cpu(model):
    """``model``, or a CPU copy of it (ranking reads numpy views of a CPU model)."""
    return model if model.item_factors.device.type == "cpu" else copy.deepcopy(model).cpu()
