"""New customers folded into a trained model: the training's user step on their ratings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from mfrec.serving.scoring import FoldedUsers
from mfrec.training import als
from mfrec.training.csr import Csr


def objective_for(objective: dict, unrated_weight: float) -> SimpleNamespace:
    """The training objective's weights for a new customer's user step.

    ``unrated_weight`` scales the weight of the films a new customer did *not* mention:
    someone who tells us five films has seen more than five, so their silence is weaker
    evidence than a training user's. ``1.0`` is exactly the training user step.
    """
    # Unrated pairs weigh implicit_weight, rated ones implicit_weight * confidence: scale
    # the first and keep the second.
    return SimpleNamespace(reg=objective["reg"], bias_reg=objective["bias_reg"],
                           reg_exponent=objective["reg_exponent"], user_mean_count=objective["user_mean_count"],
                           implicit_weight=objective["implicit_weight"] * unrated_weight,
                           confidence=objective["confidence"] / unrated_weight)


@torch.no_grad()
def fold_in(model, customers: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_customers: int,
            objective, catalogue: tuple) -> FoldedUsers:
    """Fit new customers' bias and vectors against the fixed item parameters (no retraining).

    This is exactly the user step of training (:func:`mfrec.training.als.solve_users`): a
    closed-form ridge regression of the ratings for the bias and rating vector, and of
    *which* films were rated (against the whole catalogue) for the choice vector. The
    choice part matters: five ratings barely move a rating-only ridge fit off the biases.
    ``customers`` are row numbers ``0..n_customers-1``; ``objective`` carries ``reg``,
    ``bias_reg``, ``reg_exponent``, ``user_mean_count`` (the training users' mean number
    of ratings, which frequency-scaled penalties are relative to), ``implicit_weight`` and
    ``confidence`` (see :func:`objective_for`);
    ``catalogue`` is :func:`~mfrec.training.als.catalogue_terms` of the model.
    """
    q = model.item_factors
    # Only the rated films enter the per-rating tables (their own column numbers here); the
    # whole catalogue enters through the choice term's Gramian.
    rated, columns = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
    by_user = Csr(torch.as_tensor(np.asarray(customers, dtype=np.int32)),
                  torch.from_numpy(columns.reshape(-1).astype(np.int32)),
                  torch.tensor(ratings, dtype=q.dtype), n_customers, len(rated))
    rated = torch.from_numpy(rated)
    penalties = als.row_penalties(by_user.row_counts(), objective.reg, objective.reg_exponent, q.shape[1],
                                  objective.user_mean_count).to(q.dtype)
    bias, factors, choice, _ = als.solve_users(q[rated], model.item_bias[rated], model.item_logit_bias[rated],
                                               model.global_mean, by_user, objective, catalogue=catalogue,
                                               row_reg=penalties)
    return FoldedUsers(bias, factors, choice)
