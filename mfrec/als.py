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

import functools
import warnings

import torch

from mfrec.model import MatrixFactorization


# torch's sparse CSR matmul is stable for what we use (CSR @ dense, CPU and CUDA); the
# "beta" notice would otherwise greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def solve_spd(A: torch.Tensor, b: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Solve many small symmetric positive-definite systems, batch dimension **last**.

    ``A`` is (D, D, N), ``b`` is (D, N); returns x (D, N). Gaussian elimination without
    pivoting (safe for SPD matrices) vectorised over N: D^2 elementwise operations on
    length-N rows, several times faster on CPU than ``torch.linalg.solve`` on (N, D, D)
    for D around 10, and it runs unchanged on any device. ``overwrite=True`` eliminates in
    ``A`` and ``b`` themselves (no copies: at 160k users they are tens of MB each).
    """
    if not overwrite:
        A, b = A.clone(), b.clone()
    D = A.shape[0]
    for j in range(D):
        factor = A[j + 1:, j] / A[j, j]
        A[j + 1:, j + 1:].addcmul_(factor[:, None], A[j, None, j + 1:], value=-1.0)
        b[j + 1:].addcmul_(factor, b[j], value=-1.0)
    x = torch.empty_like(b)
    for j in range(D - 1, -1, -1):
        x[j] = (b[j] - (A[j, j + 1:] * x[j + 1:]).sum(0)) / A[j, j]
    return x


class Csr:
    """Ratings as compressed sparse rows (rows = one side, columns = the other).

    Built for 25M+ ratings on a small machine: a chunked counting sort (no n-sized int64
    permutation), int32 column indices when they fit, half-star ratings stored as one-byte
    codes, and one float32 ``values`` buffer per matrix that the solver refills (ones,
    residuals) instead of allocating per product; two matrices over the same ratings can
    share it.
    """

    CHUNK = 1 << 20

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int, n_cols: int,
                 values: torch.Tensor | None = None):
        n, device = len(ratings), ratings.device
        index_dtype = torch.int32 if max(n, n_rows, n_cols) < 2**31 else torch.long
        counts = torch.bincount(rows, minlength=n_rows)
        self.crow = torch.zeros(n_rows + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=self.crow[1:])
        self.scale = 0.5 if _half_stars(ratings, self.CHUNK) else 1.0
        self.cols = torch.empty(n, dtype=index_dtype, device=device)
        self.ratings = torch.empty(n, dtype=torch.uint8 if self.scale == 0.5 else torch.float32, device=device)
        fill = self.crow[:-1].clone()  # next free slot of each row
        for start in range(0, n, self.CHUNK):
            chunk_rows = rows[start:start + self.CHUNK].to(torch.long)
            order = torch.argsort(chunk_rows, stable=True)
            sorted_rows = chunk_rows[order]
            rank = torch.arange(len(order), device=device) - torch.searchsorted(sorted_rows, sorted_rows)
            dest = fill[sorted_rows] + rank
            self.cols[dest] = cols[start:start + self.CHUNK][order].to(index_dtype)
            self.ratings[dest] = (ratings[start:start + self.CHUNK][order] / self.scale).to(self.ratings.dtype)
            fill += torch.bincount(chunk_rows, minlength=n_rows)
        self.crow = self.crow.to(index_dtype)
        self.shape = (n_rows, n_cols)
        self.values = values if values is not None else torch.empty(n, dtype=torch.float32, device=device)

    def blocks(self, rows_per_block: int):
        """(first row, view of rows [first, first + rows_per_block)) pairs sharing this storage;
        they bound the solver's per-row temporaries at any scale."""
        n_rows = self.shape[0]
        for first in range(0, n_rows, rows_per_block):
            last = min(first + rows_per_block, n_rows)
            lo, hi = int(self.crow[first]), int(self.crow[last])
            part = object.__new__(Csr)
            part.crow = self.crow[first:last + 1] - lo
            part.cols, part.ratings, part.values = self.cols[lo:hi], self.ratings[lo:hi], self.values[lo:hi]
            part.scale, part.shape = self.scale, (last - first, self.shape[1])
            yield first, part

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
        self.values.neg_().add_(self.ratings, alpha=self.scale).sub_(offset)
        return self.matrix() @ table, torch.dot(self.values, self.values)


def _half_stars(ratings: torch.Tensor, chunk: int) -> bool:
    """Whether every rating is a multiple of 0.5 in [0, 127.5] (one byte per rating then)."""
    for start in range(0, len(ratings), chunk):
        twice = ratings[start:start + chunk] * 2
        if not (torch.all(twice == torch.round(twice)) and twice.min() >= 0 and twice.max() <= 255):
            return False
    return len(ratings) > 0


@functools.lru_cache(maxsize=None)
def _packed_positions(D: int, device: torch.device) -> torch.Tensor:
    """For every (i, j) of a D x D symmetric matrix, the column of its pair in the packed
    upper triangle (D(D+1)/2 columns, row-major: the order _packed_outer_into writes)."""
    i, j = torch.triu_indices(D, D, device=device)
    position = torch.empty(D, D, dtype=torch.long, device=device)
    position[i, j] = torch.arange(len(i), device=device)
    position[j, i] = position[i, j].clone()
    return position.flatten()


def _packed_outer_into(out: torch.Tensor, x: torch.Tensor, scale: float = 1.0, add: bool = False) -> None:
    """Row-wise outer products of ``x`` (N, D), upper triangle only, written (or added, times
    ``scale``) into ``out`` (N, D(D+1)/2), in place; row a of the triangle is x_a * x[a:]."""
    D, start = x.shape[1], 0
    for a in range(D):
        block = out[:, start:start + D - a]
        if add:
            block.addcmul_(x[:, a:a + 1], x[:, a:], value=scale)
        else:
            torch.mul(x[:, a:a + 1], x[:, a:], out=block)
            if scale != 1.0:
                block.mul_(scale)
        start += D - a


def _unpack(packed: torch.Tensor, D: int) -> torch.Tensor:
    """Packed symmetric rows (N, D(D+1)/2) -> full matrices (D, D, N), batch last: the layout
    :func:`solve_spd` vectorises over."""
    return torch.index_select(packed.T.contiguous(), 0, _packed_positions(D, packed.device)).view(D, D, -1)


def _reduce(*tensors):
    """Sum over the ranks of an initialised process group (each rank holds a shard of ratings)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for t in tensors:
            torch.distributed.all_reduce(t)
    return tensors


def _weights(config) -> tuple[float, float]:
    """(weight of an unrated pair, weight of a rated pair) in the choice loss."""
    return config.implicit_weight, config.implicit_weight * config.confidence


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, config,
                distributed: bool = False, catalogue: tuple | None = None):
    """The user step: exact (bias, rating vector, choice vector) of every row of ``by_user``.

    Returns ``(bias (N,), p (N, k), c (N, k), squared rating error at the solution)``.
    Used by training (all users) and by fold-in (new customers, ratings in ``by_user``).
    ``catalogue`` is (factors, choice bias) of *every* item when the ``item_*`` arguments
    and ``by_user``'s columns cover only the rated ones (fold-in of a few customers: the
    per-item tables then cost a handful of rows, not the catalogue); the choice term's
    Gramian still sums over the whole catalogue.
    """
    q = item_factors
    n, k = by_user.shape[0], q.shape[1]
    dtype, device = q.dtype, q.device
    w0, w1 = _weights(config)
    D = k + 1
    P = D * (D + 1) // 2
    f = torch.cat([q, torch.ones(len(q), 1, dtype=dtype, device=device)], 1)
    table = torch.empty(len(q), P + (k if w0 > 0 else 0), dtype=dtype, device=device)
    _packed_outer_into(table[:, :P], f)
    if w0 > 0:
        torch.mul(q, (w1 - (w1 - w0) * item_choice_bias)[:, None], out=table[:, P:])
        all_q, all_d = catalogue if catalogue is not None else (q, item_choice_bias)
        shared_c = w0 * (all_q.T @ all_q) + config.reg * torch.eye(k, dtype=dtype, device=device)
        offset_c = w0 * (all_q * all_d[:, None]).sum(0)
    prior = torch.full((D,), float(config.reg), dtype=dtype, device=device)
    prior[k] = config.bias_reg
    bias = torch.empty(n, dtype=dtype, device=device)
    p = torch.empty(n, k, dtype=dtype, device=device)
    c = torch.zeros(n, k, dtype=dtype, device=device)
    sq_error = torch.zeros((), dtype=torch.float64, device=device)
    for first, part in by_user.blocks(BLOCK_ROWS):
        rows = slice(first, first + part.shape[0])
        summed = part.pattern_product(table)
        rhs, sq = part.residual_product(float(global_mean), item_bias, f)
        if distributed:
            _reduce(summed, rhs, sq)
        m = part.shape[0]
        gram = _unpack(summed[:, :P], D)  # sum over rated items of f f^T
        b = rhs.T.contiguous()
        # One batched solve for both systems of every user: the rating system (D x D) and,
        # padded to D x D with a unit pivot, the choice system (w1 - w0) * sum over rated
        # q q^T + w0 * Q^T Q + reg I. Half the per-operation overhead of two solves.
        A = torch.zeros(D, D, 2 * m if w0 > 0 else m, dtype=dtype, device=device)
        A[:, :, :m] = gram
        A[:, :, :m] += torch.diag(prior)[:, :, None]
        rhs_all = torch.zeros(D, A.shape[2], dtype=dtype, device=device)
        rhs_all[:, :m] = b
        if w0 > 0:
            torch.mul(gram[:k, :k], w1 - w0, out=A[:k, :k, m:])
            A[:k, :k, m:] += shared_c[:, :, None]
            A[k, k, m:] = 1.0
            rhs_all[:k, m:] = summed[:, P:].T - offset_c[:, None]
        del summed, rhs, gram
        x_all = solve_spd(A, rhs_all, overwrite=True)
        del A
        x = x_all[:, :m]
        # Squared rating error at the solution without another pass over the ratings: with
        # (G + L) x = b, sum (z - f.x)^2 = sum z^2 - x.b - x^T L x.
        sq_error += sq - (x * b).sum() - (prior[:, None] * x * x).sum()
        bias[rows], p[rows] = x[k], x[:k].T
        if w0 > 0:
            c[rows] = x_all[:k, m:].T
    return bias, p, c, sq_error


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, config, distributed: bool = False):
    """The item step: exact (factors, rating bias, choice bias) of every item given the users."""
    p, c = user_factors, user_choice
    n, k = by_item.shape[0], p.shape[1]
    dtype, device = p.dtype, p.device
    w0, w1 = _weights(config)
    implicit = w0 > 0
    D = k + 2 if implicit else k + 1  # without the choice loss there is no choice bias to fit
    ones = torch.ones(len(p), 1, dtype=dtype, device=device)
    zeros = torch.zeros(len(p), 1, dtype=dtype, device=device)
    f = torch.cat([p, ones, zeros] if implicit else [p, ones], 1)  # rating features of each user
    P = D * (D + 1) // 2
    table = torch.empty(len(p), P + (D if implicit else 0), dtype=dtype, device=device)
    _packed_outer_into(table[:, :P], f)
    if implicit:
        g = torch.cat([c, zeros, ones], 1)  # choice features of each user
        _packed_outer_into(table[:, :P], g, scale=w1 - w0, add=True)
        torch.mul(g, w1, out=table[:, P:])
        shared = w0 * (g.T @ g)
    prior = torch.full((D,), float(config.reg), dtype=dtype, device=device)
    prior[k:] = config.bias_reg
    out = torch.zeros(D + (0 if implicit else 1), n, dtype=dtype, device=device)
    for first, part in by_item.blocks(BLOCK_ROWS):
        summed = part.pattern_product(table)
        rhs, _ = part.residual_product(float(global_mean), user_bias, f)
        if distributed:
            _reduce(summed, rhs)
        A = _unpack(summed[:, :P], D)
        A += torch.diag(prior)[:, :, None]
        b = rhs.T.contiguous()
        if implicit:
            A += shared[:, :, None]
            b += summed[:, P:].T
        del summed, rhs
        out[:D, first:first + part.shape[0]] = solve_spd(A, b, overwrite=True)
    # Rows k and k+1: rating bias and choice bias (zero without the choice loss).
    return out[:k].T.contiguous(), out[k], out[k + 1]


# Rows solved together: large enough to keep the vectorised solves efficient, small enough
# that per-row temporaries (a few hundred bytes each) stay far below the ratings' size.
BLOCK_ROWS = 32768


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

    def divergence_advice(self) -> str:
        return f"the least-squares sweeps diverged: try a larger reg (now {self.config.reg})"

    # Inference mode rather than no_grad: a sweep is hundreds of small operations, and
    # skipping autograd's version counting took ~10% off a sweep on ml-latest-small.
    @torch.inference_mode()
    def epoch(self) -> float:
        """One sweep; returns the training MSE of the ratings after it."""
        m, cfg, dist = self.model, self.config, self.distributed
        q, b_i, d = solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean,
                                self.by_item, cfg, dist)
        m.item_factors.copy_(q)
        m.item_bias.copy_(b_i)
        m.item_logit_bias.copy_(d)
        b_u, p, c, sq_error = solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean,
                                          self.by_user, cfg, dist)
        m.user_bias.copy_(b_u)
        m.user_factors.copy_(p)
        m.user_choice_factors.copy_(c)
        return float(sq_error) / self.n_ratings
