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
implicit-ALS trick). A sweep costs two sparse-dense products per side and one batched solve
of (k+2)-sized systems; on ml-latest-small it takes milliseconds.

The user step is also how a new customer is folded in (:func:`solve_users`), so serving and
training share one code path.
"""

from __future__ import annotations

import warnings

import torch

from mfrec.model import MatrixFactorization


# torch's sparse CSR matmul is stable for what we use (CSR @ dense, CPU and CUDA); the
# "beta" notice would otherwise greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def solve_spd(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve many small symmetric positive-definite systems, batch dimension **last**.

    ``A`` is (D, D, N), ``b`` is (D, N); returns x (D, N). Gaussian elimination without
    pivoting (safe for SPD matrices) vectorised over N: D^2 elementwise operations on
    length-N rows, several times faster on CPU than ``torch.linalg.solve`` on (N, D, D)
    for D around 10, and it runs unchanged on any device.
    """
    A = A.clone()
    b = b.clone()
    D = A.shape[0]
    for j in range(D):
        factor = A[j + 1:, j] / A[j, j]
        A[j + 1:, j + 1:] -= factor[:, None] * A[j, None, j + 1:]
        b[j + 1:] -= factor * b[j]
    x = torch.empty_like(b)
    for j in range(D - 1, -1, -1):
        x[j] = (b[j] - (A[j, j + 1:] * x[j + 1:]).sum(0)) / A[j, j]
    return x


class Csr:
    """Ratings as compressed sparse rows (rows = one side, columns = the other).

    Column indices are int32 when they fit; ``values`` is one float32 buffer per matrix
    that the solver refills (ones, residuals) instead of allocating per product.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int, n_cols: int,
                 values: torch.Tensor | None = None):
        index_dtype = torch.int32 if max(len(ratings), n_rows, n_cols) < 2**31 else torch.long
        order = torch.argsort(rows, stable=True)
        self.cols = cols[order].to(index_dtype)
        self.ratings = ratings[order]
        del order
        counts = torch.bincount(rows.to(torch.long) if rows.dtype != torch.long else rows, minlength=n_rows)
        self.crow = torch.zeros(n_rows + 1, dtype=index_dtype, device=ratings.device)
        self.crow[1:] = torch.cumsum(counts, 0)
        self.counts = counts
        self.shape = (n_rows, n_cols)
        self.values = values if values is not None else torch.empty_like(self.ratings)

    def matrix(self) -> torch.Tensor:
        """The sparse matrix over the current contents of ``values``."""
        return torch.sparse_csr_tensor(self.crow, self.cols, self.values, self.shape, check_invariants=False)

    def pattern_product(self, table: torch.Tensor) -> torch.Tensor:
        """Per row, the sum of ``table`` rows over that row's rated columns."""
        self.values.fill_(1.0)
        return self.matrix() @ table

    def residual_product(self, offset: float, col_bias: torch.Tensor, table: torch.Tensor) -> tuple:
        """(per row: sum of ``(r - offset - col_bias[col]) * table[col]``, total squared residual)."""
        torch.index_select(col_bias, 0, self.cols, out=self.values)
        self.values.neg_().add_(self.ratings).sub_(offset)
        return self.matrix() @ table, torch.dot(self.values, self.values)


def _outer(x: torch.Tensor) -> torch.Tensor:
    """Row-wise outer products, flattened: (N, D) -> (N, D*D)."""
    return (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)


def _batch_last(flat: torch.Tensor, D: int) -> torch.Tensor:
    return flat.T.reshape(D, D, -1).contiguous()


def _reduce(*tensors):
    """Sum over the ranks of an initialised process group (each rank holds a shard of ratings)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            torch.distributed.all_reduce(t)
    return tensors


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, config,
                distributed: bool = False):
    """The user step: exact (bias, rating vector, choice vector) of every row of ``by_user``.

    Returns ``(bias (N,), p (N, k), c (N, k), squared rating error at the solution)``.
    Used by training (all users) and by fold-in (new customers, ratings in ``by_user``).
    """
    q = item_factors
    n, k = by_user.shape[0], q.shape[1]
    dtype, device = q.dtype, q.device
    w0 = config.implicit_weight
    w1 = config.implicit_weight * config.confidence
    D = k + 1
    f = torch.cat([q, torch.ones(len(q), 1, dtype=dtype, device=device)], 1)
    tables = [_outer(f)]
    if w0 > 0:
        tables.append(q * (w1 - (w1 - w0) * item_choice_bias)[:, None])
    summed = by_user.pattern_product(torch.cat(tables, 1))
    rhs, sq = by_user.residual_product(float(global_mean), item_bias, f)
    if distributed:
        _reduce(summed, rhs, sq)
    gram = _batch_last(summed[:, :D * D], D)  # sum over rated items of f f^T
    prior = torch.full((D,), float(config.reg), dtype=dtype, device=device)
    prior[k] = config.bias_reg
    x = solve_spd(gram + torch.diag(prior)[:, :, None], rhs.T.contiguous())
    # Squared rating error at the solution: sum z^2 - 2 x.rhs + x^T G x (no extra pass over ratings).
    fitted = (x * rhs.T).sum() * 2 - torch.einsum("in,ijn,jn->", x, gram, x)
    sq_error = sq - fitted
    bias, p = x[k], x[:k].T.contiguous()
    if w0 > 0:
        rated = gram[:k, :k] * (w1 - w0)
        shared = w0 * (q.T @ q) + config.reg * torch.eye(k, dtype=dtype, device=device)
        rhs_c = summed[:, D * D:].T - (w0 * (q * item_choice_bias[:, None]).sum(0))[:, None]
        c = solve_spd(rated + shared[:, :, None], rhs_c.contiguous()).T.contiguous()
    else:
        c = torch.zeros(n, k, dtype=dtype, device=device)
    return bias, p, c, sq_error


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, config, distributed: bool = False):
    """The item step: exact (factors, rating bias, choice bias) of every item given the users."""
    p, c = user_factors, user_choice
    n, k = by_item.shape[0], p.shape[1]
    dtype, device = p.dtype, p.device
    w0 = config.implicit_weight
    w1 = config.implicit_weight * config.confidence
    implicit = w0 > 0
    D = k + 2 if implicit else k + 1  # without the choice loss there is no choice bias to fit
    ones = torch.ones(len(p), 1, dtype=dtype, device=device)
    zeros = torch.zeros(len(p), 1, dtype=dtype, device=device)
    f = torch.cat([p, ones, zeros] if implicit else [p, ones], 1)  # rating features of each user
    table = _outer(f)
    if implicit:
        g = torch.cat([c, zeros, ones], 1)  # choice features of each user
        table = torch.cat([table + (w1 - w0) * _outer(g), w1 * g], 1)
    summed = by_item.pattern_product(table)
    rhs, _ = by_item.residual_product(float(global_mean), user_bias, f)
    if distributed:
        _reduce(summed, rhs)
    A = _batch_last(summed[:, :D * D], D)
    prior = torch.full((D,), float(config.reg), dtype=dtype, device=device)
    prior[k:] = config.bias_reg
    A += torch.diag(prior)[:, :, None]
    b = rhs.T.contiguous()
    if implicit:
        A += (w0 * (g.T @ g))[:, :, None]
        b += summed[:, D * D:].T
    x = solve_spd(A, b)
    choice_bias = x[k + 1] if implicit else torch.zeros(n, dtype=dtype, device=device)
    return x[:k].T.contiguous(), x[k], choice_bias


class AlsSolver:
    """One :meth:`epoch` = one sweep (items, then users) over ratings already on the device."""

    def __init__(self, model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor,
                 ratings: torch.Tensor, config, distributed: bool = False):
        self.model = model
        self.config = config
        self.distributed = distributed
        n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
        self.by_user = Csr(users, items, ratings, n_users, n_items)
        # Both matrices hold the same number of ratings: one scratch buffer serves both.
        self.by_item = Csr(items, users, ratings, n_items, n_users, values=self.by_user.values)
        n = torch.tensor(float(len(ratings)), dtype=torch.float64, device=ratings.device)
        self.n_ratings = float(_reduce(n)[0]) if distributed else float(n)

    @torch.no_grad()
    def epoch(self) -> float:
        """One sweep; returns the training MSE of the ratings after it."""
        m = self.model
        q, b_i, d = solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean,
                                self.by_item, self.config, self.distributed)
        m.item_factors.copy_(q)
        m.item_bias.copy_(b_i)
        m.item_logit_bias.copy_(d)
        b_u, p, c, sq_error = solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean,
                                          self.by_user, self.config, self.distributed)
        m.user_bias.copy_(b_u)
        m.user_factors.copy_(p)
        m.user_choice_factors.copy_(c)
        return float(sq_error) / self.n_ratings
