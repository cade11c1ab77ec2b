"""Alternating least squares for the joint rating + choice objective.

The objective (``w0 = implicit_weight``, ``w1 = implicit_weight * confidence``)::

    sum_{rated}  (r_ui - mu - b_u - b_i - p_u.q_i)^2                      # how a user rates
  + sum_{all u,i} c_ui (y_ui - c_u.q_i - d_i)^2,  y = 1 if rated else 0,   # which films a user picks
                                                   c = w1 if rated else w0
  + sum_u reg_u (|p_u|^2 + |c_u|^2) + sum_i reg_i |q_i|^2 + bias_reg (|b_u|^2 + |b_i|^2 + |d|^2)

with frequency-scaled penalties (:func:`row_penalties`): ``reg_r = reg * (n_r / mean n)^e``
for a row with ``n_r`` ratings, ``e = reg_exponent`` (0: one ``reg`` for every row).

Item factors ``q`` serve both parts; each user has a rating vector ``p`` and a choice vector
``c``. With the items fixed, every user's problem is a small ridge regression (and vice
versa). The sum over *all* user-item pairs never materialises: its unrated part is ``w0``
times one k x k Gramian shared by every row (the implicit-ALS trick).

Two ways to solve a side (``TrainConfig.als_solve``): ``exact`` builds and factorises every
row's (k+2)-sized system (two sparse-dense products and one batched solve per block of rows;
cost ``nnz k^2 + rows k^3``); ``cg`` runs a few warm-started conjugate-gradient steps on them
(:mod:`mfrec.training.cg`; cost ``nnz k + rows k^2`` per step), faster from a few dozen factors.

The exact user step is also how a new customer is folded in (:func:`solve_users`), so
serving and training share one code path.
"""

from __future__ import annotations

import functools

import torch

from mfrec.training import cg
from mfrec.training import csr as csr_module
from mfrec.training.csr import Csr
from mfrec.training.heap import release_free_memory
from mfrec.training.linalg import packed, packed_outer_into, solve_spd, unpack_into
from mfrec.training.matrices import build_matrices, table_width
from mfrec.training.parallel import SERIAL, Workers
from mfrec.training.shards import Shard, all_reduce
from mfrec.training.model import MatrixFactorization, penalty_scale


def _weights(config) -> tuple[float, float]:
    """(weight of an unrated pair, weight of a rated pair) in the choice loss."""
    return config.implicit_weight, config.implicit_weight * config.confidence


def row_penalties(counts: torch.Tensor, reg: float, exponent: float, n_factors: int,
                  mean_count: float | None = None) -> torch.Tensor:
    """Each row's factor penalty: ``reg * sqrt(n_factors / 8) * (count / mean_count)^exponent``.

    ``mean_count`` defaults to the mean of ``counts`` (a training side's rows), so that
    ``reg`` stays the penalty of a row with the average number of ratings whatever the
    exponent and the dataset; fold-in passes the training users' mean. Rows without ratings
    get the average row's penalty.
    """
    counts = counts.to(torch.float64)
    base = float(reg) * penalty_scale(n_factors)
    if not exponent:
        return torch.full_like(counts, base)
    if mean_count is None:
        mean_count = float(counts.mean()) if len(counts) else 1.0
    scale = torch.where(counts > 0, counts / max(mean_count, 1e-12), torch.ones_like(counts))
    return base * scale.pow(float(exponent))


def catalogue_terms(item_factors: torch.Tensor, item_choice_bias: torch.Tensor) -> tuple:
    """(Q^T Q, Q^T d) over every item: what the choice term of the user step needs from the
    whole catalogue. Fixed for a trained model, so serving computes them once."""
    return item_factors.T @ item_factors, item_factors.T @ item_choice_bias


def _item_constant(user_choice: torch.Tensor, k: int, w0: float) -> torch.Tensor:
    """The part of every item's D x D system that does not depend on who rated it (no prior):
    with the choice loss, w0 * sum over every user of g g^T (without building g)."""
    c = user_choice
    D = k + 2 if w0 > 0 else k + 1
    constant = torch.zeros(D, D, dtype=c.dtype, device=c.device)
    if w0 > 0:
        choice_sum = c.sum(0)
        constant[:k, :k] += w0 * (c.T @ c)
        constant[:k, k + 1] += w0 * choice_sum
        constant[k + 1, :k] += w0 * choice_sum
        constant[k + 1, k + 1] += w0 * len(c)
    return constant


def _user_constants(item_factors, item_choice_bias, config, catalogue=None) -> tuple:
    """(rating-system bias prior (D,): zero but for bias_reg, choice system's shared part
    w0 Q^T Q (k, k), choice offset w0 Q^T d (k,)) of the user step; the last two are None
    without the choice loss. The factors' per-row penalties come on top."""
    q = item_factors
    k = q.shape[1]
    w0, _ = _weights(config)
    prior = torch.zeros(k + 1, dtype=q.dtype, device=q.device)
    prior[k] = config.bias_reg
    if w0 == 0:
        return prior, None, None
    gram, offset = catalogue if catalogue is not None else catalogue_terms(q, item_choice_bias)
    return prior, w0 * gram, w0 * offset


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, config,
                catalogue: tuple | None = None, out: tuple | None = None,
                row_reg: torch.Tensor | None = None, workers: Workers = SERIAL):
    """The user step: exact (bias, rating vector, choice vector) of every row of ``by_user``.

    Returns ``(bias (N,), p (N, k), c (N, k), squared rating error at the solution)``.
    Used by training (all users) and by fold-in (new customers, ratings in ``by_user``).
    ``catalogue`` is :func:`catalogue_terms` of *every* item when the ``item_*`` arguments
    and ``by_user``'s columns cover only the rated ones (fold-in of a few customers: the
    per-item tables then cost a handful of rows, not the catalogue); the choice term's
    Gramian still sums over the whole catalogue. ``out`` is (bias, p, c) to write into
    (training passes the model's own parameters), else they are new tensors. ``row_reg``:
    each row's factor penalty (:func:`row_penalties`; default: ``config.reg`` scaled for k).
    ``workers`` solve the blocks of rows (:mod:`mfrec.training.parallel`).
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
    if row_reg is None:
        row_reg = row_penalties(by_user.row_counts(), config.reg, 0.0, k).to(dtype=dtype, device=device)
    diagonal = torch.arange(k, device=device)
    if out is None:
        out = (torch.empty(n, dtype=dtype, device=device), torch.empty(n, k, dtype=dtype, device=device),
               torch.empty(n, k, dtype=dtype, device=device))
    bias, p, c = out
    if w0 == 0:
        c.zero_()  # no choice loss, no choice vectors
    prior_packed = packed(torch.diag(prior))

    def block(first, part):
        m = part.shape[0]
        rows = slice(first, first + m)
        summed = part.pattern_product(table)
        rhs, sq = part.residual_product(float(global_mean), item_bias, f)
        # One batched solve for both systems of every user: the rating system (D x D) and,
        # padded to D x D with a unit pivot, the choice system (w1 - w0) * sum over rated
        # q q^T + w0 * Q^T Q + reg_u I. Half the per-operation overhead of two solves.
        n_systems = 2 * m if w0 > 0 else m
        A = torch.zeros(D, D, n_systems, dtype=dtype, device=device)
        unpack_into(A[:, :, :m], summed[:, :P].T + prior_packed)  # sum over rated items of f f^T + bias prior
        b = rhs.T
        x_all = torch.empty(D, n_systems, dtype=dtype, device=device)
        x_all[:, :m] = b
        if w0 > 0:
            torch.mul(A[:k, :k, :m], w1 - w0, out=A[:k, :k, m:])
            A[:k, :k, m:] += shared_c[:, :, None]
            A[:k, k, m:] = 0.0
            A[k, k, m:] = 1.0
            torch.sub(summed[:, P:].T, offset_c[:, None], out=x_all[:k, m:])
            x_all[k, m:] = 0.0
        penalty = row_reg[rows]
        A[diagonal, diagonal] += penalty.repeat(2) if w0 > 0 else penalty
        solve_spd(A, x_all)
        x = x_all[:, :m]
        # Squared rating error at the solution without another pass over the ratings: with
        # (G + L) x = b, sum (z - f.x)^2 = sum z^2 - x.b - x^T L x.
        bias[rows], p[rows] = x[k], x[:k].T
        if w0 > 0:
            c[rows] = x_all[:k, m:].T
        return (sq - (x * b).sum() - (prior[:, None] * x * x).sum() - (penalty * x[:k] * x[:k]).sum()).double()

    sq_error = sum(workers.map(block, by_user.blocks()), torch.zeros((), dtype=torch.float64, device=device))
    return bias, p, c, sq_error


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, config, distributed: bool = False,
                out: tuple | None = None, row_reg: torch.Tensor | None = None, workers: Workers = SERIAL):
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
    constant = _item_constant(c, k, w0)
    if distributed:  # a sum over every rank's users
        all_reduce(constant)
    constant[range(k, D), range(k, D)] += config.bias_reg
    constant = constant.view(D * D, 1)
    if row_reg is None:
        row_reg = row_penalties(by_item.row_counts(), config.reg, 0.0, k).to(dtype=dtype, device=device)
    diagonal = torch.arange(k, device=device)
    if out is None:
        out = (torch.empty(n, k, dtype=dtype, device=device), torch.empty(n, dtype=dtype, device=device),
               torch.empty(n, dtype=dtype, device=device))
    factors, bias, choice_bias = out
    if not implicit:
        choice_bias.zero_()  # no choice loss, no choice bias

    def block(first, part):
        m = part.shape[0]
        summed = part.pattern_product(table)
        rhs, _ = part.residual_product(float(global_mean), user_bias, f)
        if distributed:
            all_reduce(summed, rhs)
        # The sums transposed once (batch last, as solve_spd wants): every entry of every
        # system is then a gather of whole contiguous rows, scaled, plus the constant.
        sums = summed.T.contiguous()
        entries = torch.index_select(sums, 0, source)
        entries.mul_(scale).add_(constant)
        A = entries.view(D, D, m)
        A[diagonal, diagonal] += row_reg[first:first + m]
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

    workers.map(block, by_item.blocks())
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
    """One :meth:`epoch` = one sweep (items, then users) over ratings already on the device,
    each side solved as ``config.solve`` says (``exact`` or ``cg``)."""

    def __init__(self, model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor,
                 ratings: torch.Tensor, config, shard: Shard | None = None, workers: Workers = SERIAL,
                 matrices: dict | None = None):
        self.model = model
        self.config = config
        self.shard = shard  # this rank's users, when the ranks hold shards of users
        self.workers = workers
        n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
        # ``matrices``: the caller's store for fits of one data set (the search's trials), which
        # reuse the matrices built for the same layout instead of sorting the ratings again.
        store = {} if matrices is None or shard is not None else matrices
        layout = (n_users, n_items, len(ratings), str(ratings.device), config.solve, workers.n,
                  table_width(config, "users"), table_width(config, "items"))
        built = store.get(layout)
        if built is None:
            built = build_matrices(users, items, ratings, n_users, n_items, config, shard, workers)
            store.clear()
            store[layout] = built
        self.by_user, self.by_item, counts, link = built
        n = torch.tensor(float(len(ratings)), dtype=torch.float64, device=ratings.device)
        self.n_ratings = float(all_reduce(n)[0]) if shard else float(n)
        dtype = model.user_factors.dtype
        # A user's penalty scales against the mean user of the whole training set.
        self.user_mean_count = self.n_ratings / shard.n_users if shard else float(counts[0].double().mean())
        self.user_reg = row_penalties(counts[0], config.reg, config.reg_exponent, config.n_factors,
                                      self.user_mean_count).to(dtype)
        # Ratings per user (this rank's) and per item (every rank's): the CG preconditioner's.
        self.counts = tuple(c.to(dtype) for c in counts)
        self.item_reg = row_penalties(counts[1], config.reg, config.reg_exponent, config.n_factors).to(dtype)
        # CG's steps pass each other the predictions they move (this fit's own, filled by its first sweep).
        self.predictions = cg.Predictions(link, dtype, config.implicit_weight > 0) if link is not None else None
        self._versions_after = None  # the model's tensors' versions after the last sweep

    def divergence_advice(self) -> str:
        return f"the least-squares sweeps diverged: try a larger reg (now {self.config.reg})"

    # Inference mode: a sweep is hundreds of small operations, autograd's bookkeeping is pure cost.
    @torch.inference_mode()
    def epoch(self) -> float:
        """One sweep; returns the training MSE of the ratings after it."""
        m, cfg, dist = self.model, self.config, self.shard is not None
        if self.predictions is not None and self._versions() != self._versions_after:
            self.predictions.ready = False  # the model changed since the last sweep: recompute them
        # Each step writes its solutions straight into the parameters it solves for. With
        # shards of users only the item step's sums travel: a user's ratings are all here.
        items_out = (m.item_factors, m.item_bias, m.item_logit_bias)
        users_out = (m.user_bias, m.user_factors, m.user_choice_factors)
        if cfg.solve == "cg":
            weights = _weights(cfg)
            constant = _item_constant(m.user_choice_factors, cfg.n_factors, weights[0])
            if dist:  # a sum over every rank's users
                all_reduce(constant)
            cg.solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, self.by_item, weights,
                           cfg.bias_reg, self.item_reg, constant, cfg.cg_steps, items_out, dist, self.workers,
                           counts=self.counts[::-1], predictions=self.predictions)
            sq_error = cg.solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, self.by_user,
                                      weights, cfg.bias_reg, self.user_reg, cfg.cg_steps, users_out, self.workers,
                                      counts=self.counts, typical_count=self.user_mean_count,
                                      predictions=self.predictions)
        else:
            solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, self.by_item, cfg, dist,
                        out=items_out, row_reg=self.item_reg, workers=self.workers)
            *_, sq_error = solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, self.by_user,
                                       cfg, out=users_out, row_reg=self.user_reg, workers=self.workers)
        if dist:
            all_reduce(sq_error)
        if self.n_ratings > csr_module.BLOCK_RATINGS:
            release_free_memory()  # the blocks' temporaries: else the allocator's share grows sweep by sweep
        self._versions_after = self._versions()
        return float(sq_error) / self.n_ratings

    def _versions(self) -> tuple:
        """The version counters of the model's parameters and buffers (a write bumps one)."""
        return tuple(t._version for t in self.model.state_dict(keep_vars=True).values())
