"""Ranking over a bundle's item rows: top-k per user, similar films, fold-in, predictions.

:meth:`Ranker.top_items` is the one ranking path: evaluation's NDCG and the ``recommend``
and ``fold_in`` tasks call it. What every request reuses (tables, everyone's genre taste)
is computed once, on first use.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from mfrec.data.ids import csr_from_pairs
from mfrec.serving import genres, neighbours, scoring
from mfrec.serving.bundle import Bundle
from mfrec.serving.fold_in import fold_in, objective_for
from mfrec.training import als
from mfrec.training.model import predict_ratings, rating_tables

# Known users' top-LIST_LENGTH films and every film's LIST_LENGTH most similar ones are ranked
# once, all rows at a time, when that is at most LIST_SCORES scores and LIST_ENTRIES list
# entries (ml-latest-small and ml-1m qualify, ml-25m does not); a request then slices them.
LIST_LENGTH = 100
LIST_SCORES = 100_000_000
LIST_ENTRIES = 10_000_000
# Users ranked together: one sparse product of neighbour scores, one job for a worker thread.
NEIGHBOUR_ROWS = 1024


class Ranker:
    """Scores and ranks a bundle's items for known users, new customers and films."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.ranking = bundle.ranking
        self.n_items = len(bundle.item_index)
        self._memo = {}

    # ------------------------------------------------------------------ state built once
    @cached_property
    def rating_tables(self) -> tuple:
        """:func:`~mfrec.training.model.rating_tables` as read-only numpy arrays."""
        with torch.no_grad():
            return _read_only(t.numpy() for t in rating_tables(self.bundle.model))

    @cached_property
    def genre_matrix(self) -> np.ndarray:
        return genres.genre_matrix(self.bundle.items["genres"].to_numpy())[1]

    @cached_property
    def base_rates(self) -> np.ndarray:
        given = self.bundle.meta.get("genre_base_rates")  # a bundle of one rank's users: every rank's
        return np.asarray(given) if given is not None else genres.base_rates(self.bundle.genre_votes,
                                                                             self.bundle.vote_total)

    @cached_property
    def catalogue(self) -> tuple:
        with torch.no_grad():
            model = self.bundle.model
            return als.catalogue_terms(model.item_factors, model.item_logit_bias)

    @cached_property
    def known_rows(self) -> np.ndarray:
        """Every known user's side of the ranking score, genre taste included when it counts."""
        weight = self.ranking.genre_weight
        taste = self.taste(self.bundle.genre_votes, self.bundle.vote_total, weight) if weight > 0 else None
        with torch.no_grad():
            users = torch.arange(len(self.bundle.user_index))
            return scoring.ranking_rows(self.bundle.model, users, self.ranking.rating_weight, None, taste).numpy()

    @cached_property
    def popular_order(self) -> np.ndarray:
        items = self.bundle.items
        return np.lexsort((items["movieId"].to_numpy(), -items["n_ratings"].to_numpy()))

    @cached_property
    def unit_factors(self) -> torch.Tensor:
        return scoring.unit_factors(self.bundle.model)

    def table(self, with_genres: bool) -> torch.Tensor:
        """The items' side of the ranking score (with or without the genre columns)."""
        key = ("table", with_genres)
        if key not in self._memo:
            item_genres = torch.from_numpy(self.genre_matrix) if with_genres else None
            with torch.no_grad():
                self._memo[key] = scoring.ranking_table(self.bundle.model, self.ranking.rating_weight, item_genres)
        return self._memo[key]

    def taste(self, counts: np.ndarray, total: np.ndarray, weight: float) -> torch.Tensor:
        """Genre taste of users with these votes, times ``weight``."""
        return torch.from_numpy(weight * genres.taste(counts, total, self.base_rates, self.ranking.genre_prior))

    # ------------------------------------------------------------------ ranking
    def predict(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Predicted ratings; for implicit feedback the choice score ``c_u . q_i + d_i`` instead
        (an unknown user has ``c = 0``; an unknown item scores 0)."""
        if self.bundle.implicit:
            return self._choice_scores(np.asarray(user_rows), np.asarray(item_rows))
        return predict_ratings(self.rating_tables, user_rows, item_rows, self.bundle.rating_range)

    def _choice_scores(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        model = self.bundle.model
        with torch.no_grad():
            c, q, d = (t.numpy() for t in (model.user_choice_factors, model.item_factors, model.item_logit_bias))
        known_item = item_rows >= 0
        i = np.where(known_item, item_rows, 0)
        u = np.where(user_rows >= 0, user_rows, 0)
        score = np.einsum("ij,ij->i", c[u], q[i]) * (user_rows >= 0) + d[i]
        return np.where(known_item, score, 0.0).astype(np.float32)

    def top_items(self, user_rows: np.ndarray, k: int, exclude_seen: bool = True,
                  folded: scoring.FoldedUsers | None = None, extra_seen: tuple | None = None,
                  parallel: bool = False) -> tuple:
        """Top-k (item rows, scores) per known user row, or per ``folded`` new customer (their
        rated films in ``extra_seen``, CSR by customer). ``parallel``: rank on worker threads
        (:func:`~mfrec.training.parallel.job_workers`), for offline callers -- evaluation, batch
        -- that own the process's threads; a REST request ranks on its own."""
        if folded is None and extra_seen is None:
            listed = _sliced(self.known_lists(exclude_seen), user_rows, k, self.n_items)
            if listed is not None:
                return listed
        return self._rank(user_rows, k, exclude_seen, folded, extra_seen, parallel)

    def known_lists(self, exclude_seen: bool = True) -> tuple | None:
        """Every known user's top ``LIST_LENGTH``, ranked once; None when the model is too large."""
        n_users = len(self.bundle.user_index)
        return self._list(("known", exclude_seen), n_users,
                          lambda: self._rank(np.arange(n_users), LIST_LENGTH, exclude_seen))

    def similar_lists(self) -> tuple | None:
        """Every item's ``LIST_LENGTH`` most similar items, found once; None when too large."""
        return self._list("similar", self.n_items, lambda: self._similar(np.arange(self.n_items), LIST_LENGTH))

    def similar(self, item_rows: np.ndarray, k: int) -> tuple:
        """The k most similar items (rows, cosine) to each of ``item_rows``, itself excluded."""
        listed = _sliced(self.similar_lists(), item_rows, k, self.n_items - 1)
        return listed if listed is not None else self._similar(item_rows, k)

    def fold_in(self, customers: np.ndarray, item_rows: np.ndarray, ratings: np.ndarray, n_customers: int,
                unrated_weight: float | None = None, genre_weight: float | None = None) -> scoring.FoldedUsers:
        """Fit new customers (rows ``0..n_customers-1``) from their ratings of known item rows;
        ``unrated_weight`` and ``genre_weight`` override the ranking settings' fold-in ones."""
        ranking = self.ranking
        objective = objective_for(self.bundle.objective, ranking.fold_in_unrated_weight
                                  if unrated_weight is None else float(unrated_weight))
        folded = fold_in(self.bundle.model, customers, item_rows, ratings, n_customers, objective, self.catalogue)
        weight = ranking.fold_in_genre_weight if genre_weight is None else float(genre_weight)
        if weight > 0:
            counts, total = genres.votes(self.genre_matrix, customers, item_rows, ratings, n_customers,
                                         self.bundle.rating_range)
            folded.genre_taste = self.taste(counts, total, weight)
        near = ranking.fold_in_neighbour_weight
        if self.bundle.neighbours is not None and near > 0:  # what the films they told us recommend
            indptr, indices = csr_from_pairs(np.asarray(customers), np.asarray(item_rows), n_customers)
            folded.neighbour_scores = self.neighbourhood(indptr, indices, np.arange(n_customers), near)
        return folded

    @cached_property
    def neighbourhood(self) -> neighbours.Scorer:
        return neighbours.Scorer(self.bundle.neighbours, self.n_items)

    def _list(self, key, n_rows: int, make):
        if n_rows * self.n_items > LIST_SCORES or n_rows * min(LIST_LENGTH, self.n_items) > LIST_ENTRIES:
            return None
        if key not in self._memo:
            self._memo[key] = _read_only(make())
        return self._memo[key]

    @torch.no_grad()
    def _similar(self, item_rows: np.ndarray, k: int) -> tuple:
        k = min(k, self.n_items - 1)
        blocks = scoring.ScoreBlocks(len(item_rows), self.n_items)
        parts = [scoring.similar_items(self.unit_factors, torch.as_tensor(item_rows[part]), k, blocks)
                 for part in blocks.slices()]
        if not parts:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return (np.concatenate([indices.numpy() for _, indices in parts]),
                np.concatenate([values.numpy() for values, _ in parts]))

    @torch.no_grad()
    def _rank(self, user_rows: np.ndarray, k: int, exclude_seen: bool, folded=None, extra_seen=None,
              parallel: bool = False) -> tuple:
        """Score every item for each row, mask the seen ones, take the top k: in spans of about
        ``NEIGHBOUR_ROWS`` rows, on worker threads when ``parallel`` and the model is on the CPU."""
        width = min(k, self.n_items)
        if len(user_rows) == 0:
            return np.zeros((0, width), np.int64), np.zeros((0, width), np.float32)
        model = self.bundle.model
        with_genres = self.ranking.genre_weight > 0 if folded is None else folded.genre_taste is not None
        table = self.table(with_genres)  # what every span shares, built before the workers start
        known = self.known_rows if folded is None else None
        near = self.neighbourhood if self.bundle.neighbours is not None else None
        parts = scoring.in_spans(
            len(user_rows), self.n_items,
            lambda span, blocks: self._rank_span(user_rows, span, blocks, table, known, near, k, exclude_seen,
                                                 folded, extra_seen),
            NEIGHBOUR_ROWS, parallel and model.item_factors.device.type == "cpu")
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _rank_span(self, user_rows, span: slice, blocks: scoring.ScoreBlocks, table, known, near, k: int,
                   exclude_seen: bool, folded, extra_seen) -> tuple:
        b, out_idx, out_val = self.bundle, [], []
        near_all = None  # known users' neighbour scores: one sparse product a span, not a block
        if near is not None and folded is None and self.ranking.neighbour_weight > 0:
            near_all = near(b.seen_indptr, b.seen_indices, user_rows[span], self.ranking.neighbour_weight)
        for block in blocks.slices(span):
            rows = user_rows[block]
            if folded is None:
                vectors = torch.from_numpy(known[rows])
            else:
                part = folded[block]
                vectors = scoring.ranking_rows(b.model, None, self.ranking.rating_weight, part, part.genre_taste)
            scores = blocks.product(vectors, table)
            if near_all is not None:
                here = slice(block.start - span.start, block.stop - span.start)
                scores.index_add_(1, near.columns, near_all[here].to(scores.dtype))
            elif near is not None and folded is not None and part.neighbour_scores is not None:
                scores.index_add_(1, near.columns, part.neighbour_scores.to(scores.dtype))
            if exclude_seen and folded is None:
                scores = scoring.mask_seen(scores, b.seen_indptr, b.seen_indices, rows)
            if exclude_seen and extra_seen is not None:
                scores = scoring.mask_seen(scores, *extra_seen, np.arange(block.start, block.stop))
            values, indices = scoring.top_k(scores, k)
            out_idx.append(indices.numpy())
            out_val.append(values.numpy())
        return (out_idx[0], out_val[0]) if len(out_idx) == 1 else (np.concatenate(out_idx), np.concatenate(out_val))


def _sliced(lists, rows, k: int, most: int) -> tuple | None:
    """The first ``min(k, most)`` of ``lists``' (indices, scores) for ``rows``, or None when
    there are no lists or they are too short (or k is negative: ranking refuses it)."""
    k = min(k, most)
    if lists is None or not 0 <= k <= lists[0].shape[1]:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    return lists[0][rows, :k], lists[1][rows, :k]


def _read_only(arrays) -> tuple:
    """``arrays`` as a tuple, each made read-only: built once and shared by every request."""
    arrays = tuple(arrays)
    for array in arrays:
        array.flags.writeable = False
    return arrays
