"""Minibatch Adam on the rating loss plus a softmax "which films" loss (``solver=adam``)."""

from __future__ import annotations

import math

import torch

from mfrec.training.model import penalty_scale


class AdamSolver:
    """One :meth:`epoch` = one permutation of the ratings in minibatches of Adam steps."""

    def __init__(self, model, users, items, ratings, config, device, index_dtype):
        self.model = model
        self.config = config
        self.index_dtype = index_dtype
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.batch_size = config.batch_size
        self.users, self.items, self.ratings = users, items, ratings
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def divergence_advice(self) -> str:
        return f"the optimiser diverged: try a smaller lr (now {self.config.lr})"

    def epoch(self) -> float:
        """One pass over the ratings; returns the mean training MSE during it."""
        self.model.train()
        n = len(self.ratings)
        loss_sum = torch.zeros((), device=self.ratings.device)
        perm = torch.randperm(n, generator=self.generator, device=self.ratings.device, dtype=self.index_dtype)
        for start_row in range(0, n, self.batch_size):
            batch = perm[start_row:start_row + self.batch_size]
            loss, mse = _batch_loss(self.model, self.users[batch], self.items[batch], self.ratings[batch], n,
                                    self.config, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += mse.detach() * len(batch)
        return float(loss_sum) / n


def _batch_loss(model, users, items, ratings, n_total, config, generator):
    """Rating MSE + L2 prior (scaled to the whole set) + softmax loss of which items were rated."""
    pred = model(users, items)
    mse = torch.mean((pred - ratings) ** 2)
    loss = mse + (config.reg * penalty_scale(config.n_factors) * model.l2() + config.bias_reg * model.bias_l2()) / n_total
    if config.implicit_weight > 0:
        loss = loss + config.implicit_weight * _choice_loss(model, users, items, config, generator)
    # No per-batch finiteness check: it would sync the GPU every step. NaN propagates into
    # the epoch's loss sum, which fit() checks.
    return loss, mse


def _choice_loss(model, users, items, config, generator):
    """Mean negative log-softmax of each rated item among the catalogue, for the batch's users.

    The normaliser is computed once per distinct user. When a batch has more distinct users
    than ``implicit_users``, a random subset of them (and their rows) stands in; when the
    catalogue is larger than ``implicit_items``, a uniform sample of items, scaled by
    ``n_items / sample``, estimates the normaliser.
    """
    distinct, inverse = torch.unique(users, return_inverse=True)
    if 0 < config.implicit_users < len(distinct):
        pick = torch.randperm(len(distinct), generator=generator, device=users.device)[: config.implicit_users]
        keep = torch.zeros(len(distinct), dtype=torch.bool, device=users.device)
        keep[pick] = True
        rows = keep[inverse]
        users, items = users[rows], items[rows]
        distinct, inverse = torch.unique(users, return_inverse=True)
    n_items = model.item_factors.shape[0]
    if 0 < config.implicit_items < n_items:
        sample = torch.randint(0, n_items, (config.implicit_items,), generator=generator, device=users.device)
        log_norm = torch.logsumexp(model.choice_logits(distinct, sample), dim=1) + math.log(n_items / config.implicit_items)
    else:
        log_norm = torch.logsumexp(model.choice_logits(distinct), dim=1)
    chosen = (model.user_choice_factors[users] * model.item_factors[items]).sum(1) + model.item_logit_bias[items]
    return torch.mean(log_norm[inverse] - chosen)
