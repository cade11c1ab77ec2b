"""The biased matrix-factorisation model with an implicit ("which movies") head."""

from __future__ import annotations

import math

import torch
from torch import nn

# reg is per this many factors: a k-factor model's penalties are reg * sqrt(k / 8), so that a
# good reg carries across k (on ml-latest-small's validation split the best reg grew from 2.5
# at k=8 to 5 at k=32 and 10-20 at k=64 before this scaling: docs/tuning.md).
REFERENCE_FACTORS = 8


def penalty_scale(n_factors: int) -> float:
    """What ``reg`` is multiplied by for a model of ``n_factors`` factors."""
    return math.sqrt(n_factors / REFERENCE_FACTORS)


class MatrixFactorization(nn.Module):
    """Biased MF whose factors also explain *which* movies each user rated.

    Rating head: ``mu + b_u + b_i + p_u . q_i`` (the classic biased MF).
    Choice head: ``d_i + c_u . q_i``, how strongly user ``u`` picks movie ``i`` (a regression
    target of 1 for rated films under ALS, a softmax logit under Adam). The item factors
    ``q`` are shared, so what users choose shapes the same movie space that ratings use:
    that is what lets a rating model rank well (the rating head alone ranks obscure five-star
    films first). Each user has separate rating and choice vectors: one vector cannot
    place a disliked-but-watched film both low (rating) and high (choice).

    Parameters
    ----------
    n_users, n_items:
        Embedding table sizes.
    n_factors:
        Dimension of user and item factors.
    global_mean:
        Mean training rating (a buffer, not learned).
    init_std:
        Std of the normal init of the factors; small values start the model near the
        biases-only solution, which early stopping then moves away from only as far as
        validation allows.
    generator:
        Draws the initial factors (default: torch's global generator).
    """

    def __init__(self, n_users: int, n_items: int, n_factors: int, global_mean: float = 0.0,
                 init_std: float = 0.01, generator: torch.Generator | None = None):
        super().__init__()
        g = generator  # None: torch's global generator
        self.user_factors = nn.Parameter(torch.randn(n_users, n_factors, generator=g) * init_std)
        self.item_factors = nn.Parameter(torch.randn(n_items, n_factors, generator=g) * init_std)
        self.user_choice_factors = nn.Parameter(torch.randn(n_users, n_factors, generator=g) * init_std)
        self.user_bias = nn.Parameter(torch.zeros(n_users))
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.item_logit_bias = nn.Parameter(torch.zeros(n_items))
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))

    @property
    def n_factors(self) -> int:
        return self.user_factors.shape[1]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Unclipped predicted ratings for index pairs (training uses these)."""
        dot = (self.user_factors[users] * self.item_factors[items]).sum(1)
        return self.global_mean + self.user_bias[users] + self.item_bias[items] + dot

    def choice_logits(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Implicit-head logits of ``users`` (rows) over ``items`` (columns; default every item)."""
        if items is None:
            return self.user_choice_factors[users] @ self.item_factors.T + self.item_logit_bias
        return self.user_choice_factors[users] @ self.item_factors[items].T + self.item_logit_bias[items]

    def l2(self) -> torch.Tensor:
        """Squared L2 norm of the factors (the prior on them)."""
        return self.user_factors.pow(2).sum() + self.user_choice_factors.pow(2).sum() + self.item_factors.pow(2).sum()

    def bias_l2(self) -> torch.Tensor:
        return self.user_bias.pow(2).sum() + self.item_bias.pow(2).sum()


@torch.no_grad()
def carried_over(model: MatrixFactorization, user_rows, item_rows, init_std: float, seed: int) -> MatrixFactorization:
    """A model over new user and item tables that starts where ``model`` ended: the new row
    ``r`` is ``model``'s row ``user_rows[r]`` (``item_rows[r]`` for items), or a fresh one
    (as a new model draws it) where that is -1. A refit on more ratings starts from it (and
    sets the global mean to its ratings')."""
    new = MatrixFactorization(len(user_rows), len(item_rows), model.n_factors, float(model.global_mean), init_std,
                              generator=torch.Generator().manual_seed(seed))
    old = dict(model.named_parameters())
    for side, rows in (("user_", user_rows), ("item_", item_rows)):
        rows = torch.as_tensor(rows, dtype=torch.long)
        known = rows >= 0
        for name, param in new.named_parameters():
            if name.startswith(side):
                param[known] = old[name].detach().to(param.device, param.dtype)[rows[known]]
    return new


def with_user_rows(model: MatrixFactorization, rows) -> MatrixFactorization:
    """A copy of ``model`` holding only the user rows ``rows`` (a rank's users of the whole table)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    part = MatrixFactorization(len(rows), len(model.item_factors), model.n_factors, float(model.global_mean))
    part.load_state_dict({name: value[rows] if name.startswith("user_") else value
                          for name, value in model.state_dict().items()})
    return part


@torch.no_grad()
def rating_tables(model) -> tuple[torch.Tensor, torch.Tensor]:
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


def predict_ratings(tables: tuple, users, items, rating_range):
    """Clipped rating predictions from :func:`rating_tables` (torch tensors, or numpy arrays
    with numpy indices); index -1 (unknown) drops that side's bias and the dot product."""
    user_rows, item_rows = tables
    return (user_rows[users] * item_rows[items]).sum(1).clip(float(rating_range[0]), float(rating_range[1]))
