"""Scoring shared by evaluation and serving: one code path from test metrics to REST answers.

All functions take a fitted :class:`~mfrec.model.MatrixFactorization` (or anything with the
same tensors) and row indices; id mapping lives in :mod:`mfrec.recommender`.
"""

from __future__ import annotations

import numpy as np
import torch

# Weight of the predicted rating in the ranking score, chosen on the validation split
# (docs/tuning.md): ranking by the choice logit alone favours what a user will watch;
# adding some predicted rating favours what they will also like (relevant = rating >= 4).
DEFAULT_RATING_WEIGHT = 1.0


@torch.no_grad()
def predict_indices(model, users: torch.Tensor, items: torch.Tensor, rating_range) -> torch.Tensor:
    """Clipped rating predictions; index -1 (unknown) drops that side's bias and the dot product."""
    known_u = users >= 0
    known_i = items >= 0
    u = users.clamp(min=0)
    i = items.clamp(min=0)
    dot = (model.user_factors[u] * model.item_factors[i]).sum(1)
    pred = (
        model.global_mean
        + model.user_bias[u] * known_u
        + model.item_bias[i] * known_i
        + dot * (known_u & known_i)
    )
    return pred.clamp(float(rating_range[0]), float(rating_range[1]))


@torch.no_grad()
def rank_scores(model, users: torch.Tensor, rating_weight: float = DEFAULT_RATING_WEIGHT,
                user_vectors: torch.Tensor | None = None, user_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Ranking scores of users (rows) over all items (columns), from one matrix product.

    ``choice logit + rating_weight * predicted rating``. With ``user_vectors`` (fold-in),
    those vectors and biases replace the learned user rows.
    """
    if user_vectors is None:
        user_vectors = model.user_factors[users]
        user_bias = model.user_bias[users]
    dot = user_vectors @ model.item_factors.T
    logits = dot + model.item_logit_bias
    rating = model.global_mean + user_bias[:, None] + model.item_bias[None, :] + dot
    return logits + rating_weight * rating


def mask_seen(scores: torch.Tensor, seen_indptr: np.ndarray, seen_indices: np.ndarray, users: np.ndarray) -> torch.Tensor:
    """Set each row's already-rated items to -inf (seen lists in CSR form, by user index)."""
    starts = seen_indptr[users]
    lengths = seen_indptr[users + 1] - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = seen_indices[np.repeat(starts, lengths) + offsets]
    scores[torch.as_tensor(rows, device=scores.device), torch.as_tensor(cols, device=scores.device)] = -torch.inf
    return scores


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, indices) per row; k is capped at the number of columns."""
    k = min(k, scores.shape[1])
    values, indices = torch.topk(scores, k, dim=1)
    return values, indices


@torch.no_grad()
def similar_items(model, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-nearest items to each of ``items`` (the item itself excluded)."""
    unit = torch.nn.functional.normalize(model.item_factors, dim=1)
    sims = unit[items] @ unit.T
    sims[torch.arange(len(items)), items] = -torch.inf
    return top_k(sims, k)


@torch.no_grad()
def fold_in(model, items: torch.Tensor, ratings: torch.Tensor, reg: float, bias_reg: float = 1.0,
            implicit_weight: float = 1.0, steps: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a new user's bias and factors against the fixed item parameters (no retraining).

    Minimises the training objective restricted to one user::

        sum_j (r_j - mu - b_j - b - q_j.p)^2 + reg*|p|^2 + bias_reg*b^2
            + implicit_weight * sum_j (logsumexp_i(q_i.p + c_i) - q_j.p - c_j)

    It is convex in ``(b, p)``; Newton's method converges in a few steps. With
    ``implicit_weight=0`` it is the closed-form ridge solution (one step). The implicit term
    matters: five 5-star ratings barely move a ridge fit off the biases, while *which* films
    a customer chose says a lot about their taste.
    """
    q = model.item_factors[items]
    k = q.shape[1]
    design = torch.cat([torch.ones(len(items), 1, dtype=q.dtype, device=q.device), q], dim=1)
    target = ratings.to(q.dtype) - model.global_mean - model.item_bias[items]
    prior = torch.full((k + 1,), float(reg), dtype=q.dtype, device=q.device)
    prior[0] = bias_reg
    x = torch.zeros(k + 1, dtype=q.dtype, device=q.device)
    n_chosen = len(items)
    chosen_sum = q.sum(0)  # gradient of the chosen items' logits w.r.t. p
    rating_hess = 2 * design.T @ design + 2 * torch.diag(prior)
    for _ in range(steps if implicit_weight > 0 else 1):
        grad = -2 * design.T @ (target - design @ x) + 2 * prior * x
        hess = rating_hess.clone()
        if implicit_weight > 0:
            prob = torch.softmax(model.item_factors @ x[1:] + model.item_logit_bias, dim=0)
            mean_q = prob @ model.item_factors
            cov = (model.item_factors * prob[:, None]).T @ model.item_factors - torch.outer(mean_q, mean_q)
            grad[1:] += implicit_weight * (n_chosen * mean_q - chosen_sum)
            hess[1:, 1:] += implicit_weight * n_chosen * cov
        x = x - torch.linalg.solve(hess, grad)
    return x[0], x[1:]
