"""Scoring shared by evaluation and serving: one code path from test metrics to REST answers.

All functions take a fitted :class:`~mfrec.model.MatrixFactorization` (or anything with the
same tensors) and row indices; id mapping lives in :mod:`mfrec.recommender`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mfrec import als

# Weight of the predicted rating in the ranking score, chosen on the validation split
# (docs/tuning.md): ranking by the choice score alone favours what a user will watch;
# adding some predicted rating favours what they will also like (relevant = rating >= 4).
DEFAULT_RATING_WEIGHT = 0.25


@torch.no_grad()
def prediction_tables(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(users, items) rows whose dot products are the rating predictions:
    (p_u, b_u, 1, mu) . (q_i, 1, b_i, 1). Each table has one more row, for an unknown user
    (0, 0, 1, mu: mean + the item's bias) or item (0, 1, 0, 1: mean + the user's bias),
    which index -1 picks."""
    p, q = model.user_factors, model.item_factors
    k = p.shape[1]
    users = torch.zeros(len(p) + 1, k + 3, dtype=p.dtype, device=p.device)
    users[:-1, :k], users[:-1, k], users[:, k + 1], users[:, k + 2] = p, model.user_bias, 1.0, model.global_mean
    items = torch.zeros(len(q) + 1, k + 3, dtype=q.dtype, device=q.device)
    items[:-1, :k], items[:, k], items[:-1, k + 1], items[:, k + 2] = q, 1.0, model.item_bias, 1.0
    return users, items


@torch.no_grad()
def predict_indices(model, users, items, rating_range, tables: tuple | None = None):
    """Clipped rating predictions; index -1 (unknown) drops that side's bias and the dot
    product. ``tables`` is :func:`prediction_tables` of ``model`` if the caller keeps it, as
    torch tensors or as numpy arrays (then ``users`` and ``items`` are numpy too): a served
    model keeps numpy copies, so a small request is four numpy operations instead of torch
    ones, which cost ~15 us each when a request finds them cold in the caches."""
    user_rows, item_rows = tables if tables is not None else prediction_tables(model)
    return (user_rows[users] * item_rows[items]).sum(1).clip(float(rating_range[0]), float(rating_range[1]))


@torch.no_grad()
def ranking_table(model, rating_weight: float = DEFAULT_RATING_WEIGHT,
                  item_genres: torch.Tensor | None = None) -> torch.Tensor:
    """The items' side of a ranking score, (k + 2 [+ genres]) x items: factors, the combined
    item bias, the genre matrix when users' genre taste is to count, and ones (for each
    user's constant). :func:`ranking_rows` times this table is every user's score for every
    item: ``choice score + rating_weight * predicted rating`` [+ genre score]."""
    w = float(rating_weight)
    q = model.item_factors
    ones = torch.ones(len(q), 1, dtype=q.dtype, device=q.device)
    parts = [q, (model.item_logit_bias + w * model.item_bias)[:, None]]
    if item_genres is not None:
        parts.append(item_genres.to(q.dtype))
    return torch.cat(parts + [ones], 1).T.contiguous()


@torch.no_grad()
def ranking_rows(model, users: torch.Tensor | None, rating_weight: float = DEFAULT_RATING_WEIGHT,
                 folded: "FoldedUsers | None" = None, genre_taste: torch.Tensor | None = None) -> torch.Tensor:
    """The users' side of a ranking score, users x (k + 2 [+ genres]), matching
    :func:`ranking_table`'s rows: learned users, or ``folded`` new customers (their fitted
    bias and vectors), with ``genre_taste`` (users x genres, weight included) if it counts."""
    if folded is None:
        folded = FoldedUsers(model.user_bias[users], model.user_factors[users], model.user_choice_factors[users])
    w = float(rating_weight)
    # (c + w p).q + d + w (mu + b_u + b_i) [+ taste.genres]: both heads share q, so one
    # product scores everything; the user-constant w (mu + b_u) only shifts the row.
    p = folded.factors
    parts = [folded.choice + w * p, torch.ones(len(p), 1, dtype=p.dtype, device=p.device)]
    if genre_taste is not None:
        parts.append(genre_taste.to(p.dtype))
    parts.append((w * (model.global_mean + folded.bias))[:, None])
    return torch.cat(parts, 1)


def mask_seen(scores: torch.Tensor, seen_indptr: np.ndarray, seen_indices: np.ndarray, users: np.ndarray) -> torch.Tensor:
    """Set each row's already-rated items to -inf (seen lists in CSR form, by user index)."""
    # On the CPU the write goes through the tensor's numpy view: a numpy fancy assignment
    # costs a few microseconds where torch's index_put costs tens in a one-user request.
    target = scores.numpy() if scores.device.type == "cpu" else scores
    if len(users) == 1:  # one user per request is the common case: a plain slice
        cols = seen_indices[seen_indptr[users[0]]:seen_indptr[users[0] + 1]]
        rows = 0
    else:
        starts = seen_indptr[users]
        lengths = seen_indptr[users + 1] - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = seen_indices[np.repeat(starts, lengths) + offsets]
    if target is scores:
        rows = torch.as_tensor(rows, device=scores.device)
        cols = torch.as_tensor(cols, device=scores.device)
    target[rows, cols] = -np.inf
    return scores


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, indices) per row; k is capped at the number of columns."""
    k = min(k, scores.shape[1])
    values, indices = torch.topk(scores, k, dim=1)
    return values, indices


@torch.no_grad()
def unit_factors(model) -> torch.Tensor:
    """The item factors scaled to unit length: what :func:`similar_items` compares."""
    return torch.nn.functional.normalize(model.item_factors, dim=1)


@torch.no_grad()
def similar_items(unit: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-nearest items to each of ``items`` (the item itself excluded), given
    :func:`unit_factors`."""
    sims = unit[items] @ unit.T
    sims[torch.arange(len(items)), items] = -torch.inf
    return top_k(sims, k)


@dataclass
class FoldedUsers:
    """Fitted parameters of users (rows): rating bias, rating vector, choice vector, and
    optionally a genre taste (users x genres, weight included; see :mod:`mfrec.genres`)."""

    bias: torch.Tensor
    factors: torch.Tensor
    choice: torch.Tensor
    genre_taste: torch.Tensor | None = None

    def __getitem__(self, rows) -> "FoldedUsers":
        taste = None if self.genre_taste is None else self.genre_taste[rows]
        return FoldedUsers(self.bias[rows], self.factors[rows], self.choice[rows], taste)


@torch.no_grad()
def fold_in(model, customers: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_customers: int,
            config, catalogue: tuple | None = None) -> FoldedUsers:
    """Fit new customers' bias and vectors against the fixed item parameters (no retraining).

    This is exactly the user step of training (:func:`mfrec.als.solve_users`): a
    closed-form ridge regression of the ratings for the bias and rating vector, and of
    *which* films were rated (against the whole catalogue) for the choice vector. The
    choice part matters: five ratings barely move a rating-only ridge fit off the biases.
    ``customers`` are row numbers ``0..n_customers-1``; ``config`` carries ``reg``,
    ``bias_reg``, ``implicit_weight`` and ``confidence``; ``catalogue`` is
    :func:`mfrec.als.catalogue_terms` of the model, if the caller keeps it (else computed).
    """
    q = model.item_factors
    # Only the rated films enter the per-rating tables (their own column numbers here); the
    # whole catalogue enters through the choice term's Gramian.
    rated, columns = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
    by_user = als.Csr(torch.as_tensor(np.asarray(customers, dtype=np.int32)),
                      torch.from_numpy(columns.reshape(-1).astype(np.int32)),
                      torch.tensor(ratings, dtype=q.dtype), n_customers, len(rated))
    rated = torch.from_numpy(rated)
    bias, factors, choice, _ = als.solve_users(q[rated], model.item_bias[rated], model.item_logit_bias[rated],
                                               model.global_mean, by_user, config,
                                               catalogue=catalogue or als.catalogue_terms(q, model.item_logit_bias))
    return FoldedUsers(bias, factors, choice)
