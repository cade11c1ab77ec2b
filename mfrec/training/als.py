"""Alternating least squares for the joint rating + choice objective.

The objective (``w0 = implicit_weight``, ``w1 = implicit_weight * confidence``)::

    sum_{rated}  (r_ui - mu - b_u - b_i - p_u.q_i)^2                      # how a user rates
  + sum_{all u,i} c_ui (y_ui - c_u.q_i - d_i)^2,  y = 1 if rated else 0,   # which films a user picks
                                                   c = w1 if rated else w0
  + reg (|p|^2 + |c|^2 + |q|^2) + bias_reg (|b_u|^2 + |b_i|^2 + |d|^2)

Item factors ``q`` serve both parts; each user has a rating vector ``p`` and a choice vector
``c``. With the items fixed, every user's problem is a small ridge regression (and vice
versa), so a sweep solves each side exactly. The sum over *all* user-item pairs never
materialises: its unrated part is ``w0`` times one k x k Gramian shared by every row (the
implicit-ALS trick). A step costs two sparse-dense products and one batched solve of
(k+2)-sized systems per block of rows.

The user step is also how a new customer is folded in (:func:`solve_users`), so serving and
training share one code path.
"""

from __future__ import annotations

import functools

import torch

from mfrec.training.csr import Csr
from mfrec.training.linalg import packed, packed_outer_into, solve_spd, unpack_into
from mfrec.training.model import MatrixFactorization


def _reduce(*tensors):
    """Sum over the ranks of an initialised process group (each rank holds a shard of ratings)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            torch.distributed.all_reduce(t)
    return tensors


def _weights(config) -> tuple[float, float]:
    """(weight of an unrated pair, weight of a rated pair) in the choice loss."""
    return config.implicit_weight, config.implicit_weight * config.confidence


def catalogue_terms(item_factors: torch.Tensor, item_choice_bias: torch.Tensor) -> tuple:
    """(Q^T Q, Q^T d) over every item: what the choice term of the user step needs from the
    whole catalogue. Fixed for a trained model, so serving computes them once."""
    return item_factors.T @ item_factors, item_factors.T @ item_choice_bias


def _item_constant(user_choice: torch.Tensor, k: int, config) -> torch.Tensor:
    """The part of every item's D x D system that does not depend on who rated it: the prior
    and, with the choice loss, w0 * sum over every user of g g^T (without building g)."""
    c = user_choice
    w0, _ = _weights(config)
    implicit = w0 > 0
    D = k + 2 if implicit else k + 1
    prior = torch.full((D,), float(config.reg), dtype=c.dtype, device=c.device)
    prior[k:] = config.bias_reg
    constant = torch.diag(prior)
    if implicit:
        choice_sum = c.sum(0)
        constant[:k, :k] += w0 * (c.T @ c)
        constant[:k, k + 1] += w0 * choice_sum
        constant[k + 1, :k] += w0 * choice_sum
        constant[k + 1, k + 1] += w0 * len(c)
    return constant


def _user_constants(item_factors, item_choice_bias, config, catalogue=None) -> tuple:
    """(rating-system prior (D,), choice system's shared part w0 Q^T Q + reg I (k, k), choice
    offset w0 Q^T d (k,)) of the user step; the last two are None without the choice loss."""
    q = item_factors
    k = q.shape[1]
    w0, _ = _weights(config)
    prior = torch.full((k + 1,), float(config.reg), dtype=q.dtype, device=q.device)
    prior[k] = config.bias_reg
    if w0 == 0:
        return prior, None, None
    gram, offset = catalogue if catalogue is not None else catalogue_terms(q, item_choice_bias)
    shared_c = w0 * gram + config.reg * torch.eye(k, dtype=q.dtype, device=q.device)
    return prior, shared_c, w0 * offset


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, config,
                distributed: bool = False, catalogue: tuple | None = None, out: tuple | None = None):
    """The user step: exact (bias, rating vector, choice vector) of every row of ``by_user``.

    Returns ``(bias (N,), p (N, k), c (N, k), squared rating error at the solution)``.
    Used by training (all users) and by fold-in (new customers, ratings in ``by_user``).
    ``catalogue`` is :func:`catalogue_terms` of *every* item when the ``item_*`` arguments
    and ``by_user``'s columns cover only the rated ones (fold-in of a few customers: the
    per-item tables then cost a handful of rows, not the catalogue); the choice term's
    Gramian still sums over the whole catalogue. ``out`` is (bias, p, c) to write into
    (training passes the model's own parameters), else they are new tensors.
    """
    q = item_factors
    n, k = by_user.shape[0], q.shape[1]
    dtype, device = q.dtype, q.device
    w0, w1 = _weights(config)
    D = k + 1
    P = D * (D + 1) // 2
    width = P + (k if w0 > 0 else 0)
    f = torch.empty(len(q), D, dtype=dtype, device=device)
    f[:, :k], f[:, k] = q, 1.0
    table = torch.empty(len(q), width, dtype=dtype, device=device)
    packed_outer_into(table[:, :P], f)
    if w0 > 0:
        torch.mul(q, (w1 - (w1 - w0) * item_choice_bias)[:, None], out=table[:, P:])
    prior, shared_c, offset_c = _user_constants(q, item_choice_bias, config, catalogue)
    if out is None:
        out = (torch.empty(n, dtype=dtype, device=device), torch.empty(n, k, dtype=dtype, device=device),
               torch.empty(n, k, dtype=dtype, device=device))
    bias, p, c = out
    if w0 == 0:
        c.zero_()  # no choice loss, no choice vectors
    sq_error = torch.zeros((), dtype=torch.float64, device=device)
    prior_packed = packed(torch.diag(prior))
    if w0 > 0:
        # The choice system is (w1 - w0) * gram + shared_c, made from the rating system's
        # (gram + prior) in place: subtract what the prior contributes there.
        choice_const = shared_c - (w1 - w0) * torch.diag(prior[:k])
    for first, part in by_user.blocks():
        m = part.shape[0]
        rows = slice(first, first + m)
        summed = part.pattern_product(table)
        rhs, sq = part.residual_product(float(global_mean), item_bias, f)
        if distributed:
            _reduce(summed, rhs, sq)
        # One batched solve for both systems of every user: the rating system (D x D) and,
        # padded to D x D with a unit pivot, the choice system (w1 - w0) * sum over rated
        # q q^T + w0 * Q^T Q + reg I. Half the per-operation overhead of two solves.
        n_systems = 2 * m if w0 > 0 else m
        A = torch.zeros(D, D, n_systems, dtype=dtype, device=device)
        unpack_into(A[:, :, :m], summed[:, :P].T + prior_packed)  # sum over rated items of f f^T + prior
        b = rhs.T
        x_all = torch.empty(D, n_systems, dtype=dtype, device=device)
        x_all[:, :m] = b
        if w0 > 0:
            torch.mul(A[:k, :k, :m], w1 - w0, out=A[:k, :k, m:])
            A[:k, :k, m:] += choice_const[:, :, None]
            A[:k, k, m:] = 0.0
            A[k, k, m:] = 1.0
            torch.sub(summed[:, P:].T, offset_c[:, None], out=x_all[:k, m:])
            x_all[k, m:] = 0.0
        solve_spd(A, x_all)
        x = x_all[:, :m]
        # Squared rating error at the solution without another pass over the ratings: with
        # (G + L) x = b, sum (z - f.x)^2 = sum z^2 - x.b - x^T L x.
        sq_error += sq - (x * b).sum() - (prior[:, None] * x * x).sum()
        bias[rows], p[rows] = x[k], x[:k].T
        if w0 > 0:
            c[rows] = x_all[:k, m:].T
    return bias, p, c, sq_error


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, config, distributed: bool = False,
                out: tuple | None = None):
    """The item step: exact (factors, rating bias, choice bias) of every item given the users,
    written into ``out`` (training passes the model's own parameters) or new tensors.

    An item's system sums, over the users who rated it, f f^T + (w1 - w0) g g^T with the
    users' rating features f = (p, 1, 0) and choice features g = (c, 0, 1). Most of those
    entries are copies of each other, constants or zero, so the per-user table that the
    sparse product gathers (one row per rating: the step's dominant cost at scale) holds only
    the distinct ones: the factor block p p^T + (w1 - w0) c c^T (packed), p, c and a one;
    the systems are assembled from those sums (``_item_layout``).
    """
    p, c = user_factors, user_choice
    n, k = by_item.shape[0], p.shape[1]
    dtype, device = p.dtype, p.device
    w0, w1 = _weights(config)
    implicit = w0 > 0
    D = k + 2 if implicit else k + 1  # without the choice loss there is no choice bias to fit
    kk = k * (k + 1) // 2
    width = kk + (2 * k if implicit else k) + 1  # table columns: factor block, p, [c,] one
    source, scale = _item_layout(k, implicit, w1 - w0, device)
    f = torch.empty(len(p), k + 1, dtype=dtype, device=device)  # (p, 1): the rating features without their zero
    f[:, :k], f[:, k] = p, 1.0
    table = torch.empty(len(p), width, dtype=dtype, device=device)
    packed_outer_into(table[:, :kk], p)
    table[:, kk:kk + k] = p
    if implicit:
        packed_outer_into(table[:, :kk], c, add_scaled=w1 - w0)
        table[:, kk + k:kk + 2 * k] = c
    table[:, -1] = 1.0
    constant = _item_constant(c, k, config).view(D * D, 1)
    if out is None:
        out = (torch.empty(n, k, dtype=dtype, device=device), torch.empty(n, dtype=dtype, device=device),
               torch.empty(n, dtype=dtype, device=device))
    factors, bias, choice_bias = out
    if not implicit:
        choice_bias.zero_()  # no choice loss, no choice bias
    for first, part in by_item.blocks():
        m = part.shape[0]
        summed = part.pattern_product(table)
        rhs, _ = part.residual_product(float(global_mean), user_bias, f)
        if distributed:
            _reduce(summed, rhs)
        # The sums transposed once (batch last, as solve_spd wants): every entry of every
        # system is then a gather of whole contiguous rows, scaled, plus the constant.
        sums = summed.T.contiguous()
        entries = torch.index_select(sums, 0, source)
        entries.mul_(scale).add_(constant)
        A = entries.view(D, D, m)
        x = torch.empty(D, m, dtype=dtype, device=device)
        x[:k + 1] = rhs.T  # rating part: (sum r~ p, sum r~, 0)
        if implicit:  # choice part: w1 * sum of g = (w1 sum c, 0, w1 count)
            x[:k].add_(sums[kk + k:kk + 2 * k], alpha=w1)
            torch.mul(sums[-1], w1, out=x[k + 1])
        solve_spd(A, x)
        rows = slice(first, first + m)
        factors[rows], bias[rows] = x[:k].T, x[k]
        if implicit:
            choice_bias[rows] = x[k + 1]
    return factors, bias, choice_bias


@functools.lru_cache(maxsize=None)
def _item_layout(k: int, implicit: bool, choice_scale: float, device: torch.device) -> tuple:
    """Where each entry of an item's D x D system (row-major; entry (b, a) mirrors (a, b))
    comes from in the item step's table sums, and its factor: ``(source columns (D * D,),
    scales (D * D, 1))``. Table columns: packed p p^T + s c c^T (kk), p (k), c (k, implicit
    only), one; ``s = choice_scale = w1 - w0``."""
    kk = k * (k + 1) // 2
    one = kk + (2 * k if implicit else k)
    D = k + 2 if implicit else k + 1
    source, scale = [], []
    pair = 0
    for a in range(D):
        for b in range(a, D):
            if b < k:
                entry = (pair, 1.0)  # a <= b < k: the factor block, in its packed order
                pair += 1
            elif b == k:
                entry = (kk + a, 1.0) if a < k else (one, 1.0)  # sum of p_a; the count
            elif a < k:
                entry = (kk + k + a, choice_scale)  # (a, k+1): s * sum of c_a
            else:
                entry = (one, 0.0 if a == k else choice_scale)  # (k, k+1) is 0; (k+1, k+1): s * count
            source.append(entry[0])
            scale.append(entry[1])
    # Packed (upper, row-major) order -> every entry of the D x D matrix.
    rows, cols = torch.triu_indices(D, D)
    position = torch.zeros(D, D, dtype=torch.long)
    position[rows, cols] = torch.arange(len(source))
    full = torch.maximum(position, position.T).flatten()
    return (torch.tensor(source, dtype=torch.long)[full].to(device),
            torch.tensor(scale, dtype=torch.float32)[full].to(device)[:, None])


class AlsSolver:
    """One :meth:`epoch` = one sweep (items, then users) over ratings already on the device."""

    def __init__(self, model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor,
                 ratings: torch.Tensor, config, distributed: bool = False):
        self.model = model
        self.config = config
        self.distributed = distributed
        n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
        self.by_user = Csr(users, items, ratings, n_users, n_items)
        self.by_item = Csr(items, users, ratings, n_items, n_users)
        n = torch.tensor(float(len(ratings)), dtype=torch.float64, device=ratings.device)
        self.n_ratings = float(_reduce(n)[0]) if distributed else float(n)
        if distributed:
            # Ranks must cut their shards at the same rows: their block results are all-reduced.
            for csr in (self.by_user, self.by_item):
                csr.plan_blocks(_reduce(csr.row_counts())[0])

    def divergence_advice(self) -> str:
        return f"the least-squares sweeps diverged: try a larger reg (now {self.config.reg})"

    # Inference mode: a sweep is hundreds of small operations, autograd's bookkeeping is pure cost.
    @torch.inference_mode()
    def epoch(self) -> float:
        """One sweep; returns the training MSE of the ratings after it."""
        m, cfg, dist = self.model, self.config, self.distributed
        # Each step writes its solutions straight into the parameters it solves for.
        solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, self.by_item, cfg, dist,
                    out=(m.item_factors, m.item_bias, m.item_logit_bias))
        *_, sq_error = solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, self.by_user,
                                   cfg, dist, out=(m.user_bias, m.user_factors, m.user_choice_factors))
        return float(sq_error) / self.n_ratings
