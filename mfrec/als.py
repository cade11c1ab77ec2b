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
import os
import warnings
import weakref

import torch

from mfrec.model import MatrixFactorization


# torch's sparse CSR matmul is stable for what we use (CSR @ dense, CPU and CUDA); the
# "beta" notice would otherwise greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def solve_spd(A: torch.Tensor, b: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """Solve many small symmetric positive-definite systems, batch dimension **last**.

    ``A`` is (D, D, N), ``b`` is (D, N); returns x (D, N). Only the upper triangle of ``A``
    is read (the lower one may hold anything), so callers fill half of it. Gaussian
    elimination without pivoting (safe for SPD matrices) vectorised over N: a few
    operations per pivot on length-N rows, several times faster on CPU than
    ``torch.linalg.solve`` on (N, D, D) for D around 10, and it runs unchanged on any
    device. ``overwrite=True`` eliminates in ``A`` and ``b`` themselves and returns ``b``
    holding x (no copies: at 160k users they are tens of MB each). A system that is not
    positive definite gets NaN.
    """
    if not overwrite:
        A, b = A.clone(), b.clone()
    if A.shape[2] < FEW_SYSTEMS:
        # A handful of systems (a fold-in request): one batched LAPACK Cholesky, which also
        # reads only the upper triangles, beats the elimination's fixed ~50 operations
        # (measured D=9, N=2: 18 us against 190 us; equal near N=200).
        factor, info = torch.linalg.cholesky_ex(A.permute(2, 0, 1), upper=True)
        b.copy_(torch.cholesky_solve(b.T.unsqueeze(-1), factor, upper=True).squeeze(-1).T)
        # A system that is not positive definite has no valid factor: NaN, not a finite
        # wrong answer, so training's divergence check sees it (both paths).
        b[:, info > 0] = float("nan")
        return b
    D = A.shape[0]
    # Eliminating with row j (not column j: by symmetry they agree) keeps every value that
    # is read later in the upper triangle; the square update also writes the lower one,
    # which is never read, because one rectangular operation is cheaper than D row slices.
    for j in range(D - 1):
        factor = A[j, j + 1:] / A[j, j]
        A[j + 1:, j + 1:].addcmul_(factor[:, None], A[j, None, j + 1:], value=-1.0)
        b[j + 1:].addcmul_(factor, b[j], value=-1.0)
    # A symmetric matrix is positive definite exactly when every pivot is positive. One
    # reduction over all pivots settles the usual case (a per-system mask and masked
    # write cost ~100 us per sweep on ml-latest-small); a NaN pivot propagates by itself.
    pivots = torch.diagonal(A)
    indefinite = (pivots <= 0).any(1) if not float(pivots.amin()) > 0 else None
    # Back substitution a column at a time: two operations per pivot.
    for j in range(D - 1, 0, -1):
        b[j].div_(A[j, j])
        b[:j].addcmul_(A[:j, j], b[j], value=-1.0)
    b[0].div_(A[0, 0])
    if indefinite is not None:
        b[:, indefinite] = float("nan")
    return b


# Below this many systems solve_spd factorises each one (LAPACK); above, it eliminates all
# of them at once, vectorised over the batch.
FEW_SYSTEMS = 128


class Scratch:
    """Float32 scratch memory reused from product to product and sweep to sweep.

    Reuse matters on CPU: torch's allocator hands large blocks back to the OS, so a fresh
    temporary of a few MB costs a page fault per 4 kB page on first touch (measured: about
    a tenth of a sweep on ml-latest-small). Three parts:

    - ``take(n)``: the ``values`` of a sparse product, one float per rating of a block;
    - ``widen(block)``: a compact block's two-byte column indices as the products need them
      (see :class:`Csr`), converted once per block;
    - ``get(*shape)``: a step's temporaries, handed out in order from one arena;
      ``rewind(mark)`` takes back everything handed out since ``mark`` (``mark()``), so every
      block reuses the same memory, and ``rewind()`` at the start of a step everything.

    Each step reserves, when it rewinds, what it is about to take, so the arena is sized
    before anything is allocated; a ``get`` beyond the arena still works (a fresh tensor)
    and the next ``rewind()`` grows the arena to the largest total seen. The item and user
    steps never run at once, so the arena is no bigger than the temporaries the larger step
    would allocate anyway.
    """

    def __init__(self, device):
        self.device = device
        self.values = torch.empty(0, dtype=torch.float32, device=device)
        self.arena = torch.empty(0, dtype=torch.float32, device=device)
        self.used = 0
        self.needed = 0
        self.index = None  # widened column indices
        # The block they belong to, weakly: a strong reference would be a cycle (blocks hold
        # their scratch) keeping a finished fit's buffers alive until the next collection.
        self.index_owner = None

    def take(self, n: int) -> torch.Tensor:
        if len(self.values) < n:
            self.values = torch.empty(0, dtype=torch.float32, device=self.device)  # free the old one first
            self.values = torch.empty(n, dtype=torch.float32, device=self.device)
        return self.values[:n]

    def widen(self, block: "Csr") -> torch.Tensor:
        n, dtype = len(block.cols), block.crow.dtype
        if self.index_owner is None or self.index_owner() is not block:
            self.index_owner = None
            if self.index is None or len(self.index) < n or self.index.dtype != dtype:
                self.index = None  # free the old one first
                self.index = torch.empty(n, dtype=dtype, device=self.device)
            self.index[:n].copy_(block.cols)
            self.index_owner = weakref.ref(block)
        return self.index[:n]

    def get(self, *shape: int) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        start, self.used = self.used, self.used + numel
        self.needed = max(self.needed, self.used)
        if self.used <= len(self.arena):
            return self.arena[start:self.used].view(shape)
        return torch.empty(shape, dtype=torch.float32, device=self.device)

    def mark(self) -> int:
        return self.used

    def rewind(self, mark: int = 0, reserve: int = 0) -> None:
        """Take back everything handed out since ``mark``; callers no longer use it. At the
        start of a step (``mark`` 0) the arena grows to ``reserve`` floats, the step's own
        estimate of what it will ``get`` (sizing it before the first step allocates anything
        keeps the first sweep from holding both fresh temporaries and the arena)."""
        self.used = mark
        self.needed = max(self.needed, reserve)
        if mark == 0 and len(self.arena) < self.needed:
            self.arena = torch.empty(0, dtype=torch.float32, device=self.device)
            self.arena = torch.empty(self.needed, dtype=torch.float32, device=self.device)


class Csr:
    """Ratings as compressed sparse rows (rows = one side, columns = the other).

    Built for 25M+ ratings on a small machine: a chunked counting sort (no n-sized int64
    permutation), int32 column indices when they fit (two-byte ones on a CPU when there are
    at most 65,536 columns and more than one block of ratings: ml-25m's users x films
    matrix keeps 50 MB less; each block is widened to int32 in scratch when multiplied),
    half-star ratings stored as one-byte codes, and products taken block by block (at most
    ``BLOCK_ROWS`` rows and, beyond one row, ``BLOCK_RATINGS`` ratings each) through one float32 ``values`` scratch buffer the
    size of the largest block, refilled (ones, residuals) instead of allocated per product;
    two matrices over the same ratings can share it.
    """

    # Ratings sorted per chunk: the chunk's int64 temporaries (~20 MB at this size) are also
    # what the allocator tends to keep after the build (1 << 20 left ~110 MB more at 25M).
    CHUNK = 1 << 18

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int, n_cols: int,
                 scratch: "Scratch | None" = None):
        n, device = len(ratings), ratings.device
        if not len(rows) == len(cols) == n:  # the native fill reads n of each
            raise ValueError(f"rows, columns and ratings differ in length: {len(rows)}, {len(cols)}, {n}")
        index_dtype = torch.int32 if max(n, n_rows, n_cols) < 2**31 else torch.long
        # uint16 has no index_put: the chunked build writes through an int16 view (same bits).
        compact = device.type == "cpu" and n_cols <= 2**16 and n > BLOCK_RATINGS
        col_dtype, write_dtype = (torch.uint16, torch.int16) if compact else (index_dtype, index_dtype)
        counts = torch.bincount(rows, minlength=n_rows)
        if len(counts) != n_rows:  # (bincount itself refuses negative rows)
            raise ValueError(f"a row index is {len(counts) - 1}, past the matrix's {n_rows} rows")
        if n:
            low, high = (int(v) for v in torch.aminmax(cols))
            if low < 0 or high >= n_cols:
                raise ValueError(f"column indices span {low}..{high}, outside the matrix's {n_cols} columns")
        self.crow = torch.zeros(n_rows + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=self.crow[1:])
        self.scale = 0.5 if _half_stars(ratings, self.CHUNK) else 1.0
        code_dtype = torch.uint8 if self.scale == 0.5 else torch.float32
        if n <= self.CHUNK:
            # One chunk: its stable sort order is the CSR order (the merge below would
            # compute dest = arange(n)).
            order = torch.argsort(rows.to(torch.long), stable=True)
            self.cols = cols[order].to(col_dtype)
            self.ratings = (ratings[order] / self.scale).to(code_dtype)
        else:
            self.cols = torch.empty(n, dtype=col_dtype, device=device)
            cols_out = self.cols.view(write_dtype)
            self.ratings = torch.empty(n, dtype=code_dtype, device=device)
            fill = self.crow[:-1].clone()  # next free slot of each row
            for start in range(0, n, self.CHUNK):
                chunk_rows = rows[start:start + self.CHUNK].to(torch.long)
                order = torch.argsort(chunk_rows, stable=True)
                sorted_rows = chunk_rows[order]
                rank = torch.arange(len(order), device=device) - torch.searchsorted(sorted_rows, sorted_rows)
                dest = fill[sorted_rows] + rank
                cols_out[dest] = cols[start:start + self.CHUNK][order].to(col_dtype).view(write_dtype)
                self.ratings[dest] = (ratings[start:start + self.CHUNK][order] / self.scale).to(code_dtype)
                fill += torch.bincount(chunk_rows, minlength=n_rows)
        self.crow = self.crow.to(index_dtype)
        self.shape = (n_rows, n_cols)
        self.scratch = scratch if scratch is not None else Scratch(device)
        self.block_starts = None  # row where each block starts; planned on first use

    @property
    def values(self) -> torch.Tensor:
        """This matrix's view of the scratch buffer (one float per rating)."""
        return self.scratch.take(len(self.cols))

    def row_counts(self) -> torch.Tensor:
        """Ratings per row."""
        return self.crow[1:].long() - self.crow[:-1].long()

    def plan_blocks(self, row_counts: torch.Tensor | None = None) -> None:
        """Split the rows into blocks of at most ``BLOCK_ROWS`` rows and ``BLOCK_RATINGS``
        ratings (a row with more ratings is a block of its own). ``row_counts`` overrides
        this matrix's own ratings per row: ranks holding shards of one matrix plan with the
        all-reduced counts, so every rank cuts its shard at the same rows."""
        n_rows = self.shape[0]
        if row_counts is None and n_rows <= BLOCK_ROWS and len(self.cols) <= BLOCK_RATINGS:
            self.block_starts = [0, n_rows]  # one block (every fold-in request): nothing to count
            return
        ends = torch.cumsum((row_counts if row_counts is not None else self.row_counts()).cpu().long(), 0)
        starts, first = [], 0
        while first < n_rows:
            before = int(ends[first - 1]) if first else 0
            fits = int(torch.searchsorted(ends, before + BLOCK_RATINGS, right=True))
            starts.append(first)
            first = min(first + BLOCK_ROWS, max(fits, first + 1))
        self.block_starts = starts + [n_rows]

    def _starts(self) -> list:
        if self.block_starts is None:
            self.plan_blocks()
        return self.block_starts

    def max_block_rows(self) -> int:
        starts = self._starts()
        return max((b - a for a, b in zip(starts[:-1], starts[1:])), default=0)

    def blocks(self):
        """(first row, view of the block's rows) pairs sharing this storage; they bound the
        solver's per-row temporaries and the scratch buffer at any scale."""
        starts = self._starts()
        for first, last in zip(starts[:-1], starts[1:]):
            lo, hi = int(self.crow[first]), int(self.crow[last])
            part = object.__new__(Csr)
            part.crow = self.crow[first:last + 1] - lo
            part.cols, part.ratings, part.scratch = self.cols[lo:hi], self.ratings[lo:hi], self.scratch
            part.scale, part.shape = self.scale, (last - first, self.shape[1])
            yield first, part

    def index_cols(self) -> torch.Tensor:
        """Column indices in the products' dtype (the crow's): compact ones widened in scratch."""
        return self.scratch.widen(self) if self.cols.dtype == torch.uint16 else self.cols

    def matrix(self) -> torch.Tensor:
        """The sparse matrix over the current contents of ``values``."""
        return torch.sparse_csr_tensor(self.crow, self.index_cols(), self.values, self.shape, check_invariants=False)

    def pattern_product(self, table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the sum of ``table`` rows over that row's rated columns (into ``out``)."""
        self.values.fill_(1.0)
        return torch.mm(self.matrix(), table, out=out) if out is not None else self.matrix() @ table

    def residual_product(self, offset: float, col_bias: torch.Tensor, table: torch.Tensor,
                         out: torch.Tensor | None = None) -> tuple:
        """(per row: sum of ``(r - offset - col_bias[col]) * table[col]``, total squared residual)."""
        values = self.values
        torch.index_select(col_bias, 0, self.index_cols(), out=values)
        values.neg_().add_(self.ratings, alpha=self.scale).sub_(offset)
        product = torch.mm(self.matrix(), table, out=out) if out is not None else self.matrix() @ table
        return product, torch.dot(values, values)


def _half_stars(ratings: torch.Tensor, chunk: int) -> bool:
    """Whether every rating is a multiple of 0.5 in [0, 127.5] (one byte per rating then)."""
    for start in range(0, len(ratings), chunk):
        twice = ratings[start:start + chunk] * 2
        if not (torch.all(twice == torch.round(twice)) and twice.min() >= 0 and twice.max() <= 255):
            return False
    return len(ratings) > 0


@functools.lru_cache(maxsize=None)
def _upper_positions(D: int, device: torch.device) -> torch.Tensor:
    """Flat positions in a D x D matrix of the packed upper triangle's entries (row-major:
    the order :func:`_packed_outer_into` writes)."""
    i, j = torch.triu_indices(D, D, device=device)
    return i * D + j


def _packed_outer_into(out: torch.Tensor, x: torch.Tensor, add_scaled: float | None = None) -> None:
    """Row-wise outer products of ``x`` (N, D), upper triangle only, written into ``out``
    (N, D(D+1)/2) in place, or added times ``add_scaled``; row a of the triangle is x_a * x[a:]."""
    D, start = x.shape[1], 0
    for a in range(D):
        block = out[:, start:start + D - a]
        if add_scaled is None:
            torch.mul(x[:, a:a + 1], x[:, a:], out=block)
        else:
            block.addcmul_(x[:, a:a + 1], x[:, a:], value=add_scaled)
        start += D - a


def _unpack_into(A: torch.Tensor, packed_t: torch.Tensor) -> None:
    """Packed upper triangles, one column per system (D(D+1)/2, N), into the upper triangles
    of ``A`` (D, D, N), batch last: the layout :func:`solve_spd` vectorises over."""
    A.flatten(0, 1).index_copy_(0, _upper_positions(A.shape[0], A.device), packed_t)


def _packed(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a D x D matrix in packed order, as a (D(D+1)/2, 1) column."""
    D = matrix.shape[0]
    return matrix.flatten()[_upper_positions(D, matrix.device)][:, None]


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
    ws = by_user.scratch
    width = P + (k if w0 > 0 else 0)
    block = by_user.max_block_rows()
    ws.rewind(reserve=len(q) * (D + width) + block * (width + D + P) + (D * D + D) * block * (2 if w0 > 0 else 1))
    f = ws.get(len(q), D)
    f[:, :k], f[:, k] = q, 1.0
    table = ws.get(len(q), width)
    _packed_outer_into(table[:, :P], f)
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
    prior_packed = _packed(torch.diag(prior))
    if w0 > 0:
        # The choice system is (w1 - w0) * gram + shared_c, made from the rating system's
        # (gram + prior) in place: subtract what the prior contributes there.
        choice_const = shared_c - (w1 - w0) * torch.diag(prior[:k])
    per_step = ws.mark()
    for first, part in by_user.blocks():
        ws.rewind(per_step)
        m = part.shape[0]
        rows = slice(first, first + m)
        summed = part.pattern_product(table, out=ws.get(m, width))
        rhs, sq = part.residual_product(float(global_mean), item_bias, f, out=ws.get(m, D))
        if distributed:
            _reduce(summed, rhs, sq)
        # One batched solve for both systems of every user: the rating system (D x D) and,
        # padded to D x D with a unit pivot, the choice system (w1 - w0) * sum over rated
        # q q^T + w0 * Q^T Q + reg I. Half the per-operation overhead of two solves.
        n_systems = 2 * m if w0 > 0 else m
        A = ws.get(D, D, n_systems).zero_()
        packed_t = ws.get(P, m)
        torch.add(summed[:, :P].T, prior_packed, out=packed_t)  # sum over rated items of f f^T + prior
        _unpack_into(A[:, :, :m], packed_t)
        b = rhs.T
        x_all = ws.get(D, n_systems)
        x_all[:, :m] = b
        if w0 > 0:
            torch.mul(A[:k, :k, :m], w1 - w0, out=A[:k, :k, m:])
            A[:k, :k, m:] += choice_const[:, :, None]
            A[:k, k, m:] = 0.0
            A[k, k, m:] = 1.0
            torch.sub(summed[:, P:].T, offset_c[:, None], out=x_all[:k, m:])
            x_all[k, m:] = 0.0
        solve_spd(A, x_all, overwrite=True)
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
    ws = by_item.scratch
    block = by_item.max_block_rows()
    ws.rewind(reserve=len(p) * (k + 1 + width) + block * (2 * width + k + 1 + D * D + D))
    f = ws.get(len(p), k + 1)  # (p, 1): the rating features without their zero
    f[:, :k], f[:, k] = p, 1.0
    table = ws.get(len(p), width)
    _packed_outer_into(table[:, :kk], p)
    table[:, kk:kk + k] = p
    if implicit:
        _packed_outer_into(table[:, :kk], c, add_scaled=w1 - w0)
        table[:, kk + k:kk + 2 * k] = c
    table[:, -1] = 1.0
    constant = _item_constant(c, k, config).view(D * D, 1)
    if out is None:
        out = (torch.empty(n, k, dtype=dtype, device=device), torch.empty(n, dtype=dtype, device=device),
               torch.empty(n, dtype=dtype, device=device))
    factors, bias, choice_bias = out
    if not implicit:
        choice_bias.zero_()  # no choice loss, no choice bias
    per_step = ws.mark()
    for first, part in by_item.blocks():
        ws.rewind(per_step)
        m = part.shape[0]
        summed = part.pattern_product(table, out=ws.get(m, width))
        rhs, _ = part.residual_product(float(global_mean), user_bias, f, out=ws.get(m, k + 1))
        if distributed:
            _reduce(summed, rhs)
        # The sums transposed once (batch last, as solve_spd wants): every entry of every
        # system is then a gather of whole contiguous rows, scaled, plus the constant.
        # (Gathering and scaling the row-major sums through a transposed view cost twice
        # as much: 0.74 against 0.51 ms for ml-latest-small's 9k items.)
        sums = ws.get(width, m)
        sums.copy_(summed.T)
        A = ws.get(D, D, m)
        entries = A.view(D * D, m)
        torch.index_select(sums, 0, source, out=entries)
        entries.mul_(scale).add_(constant)
        x = ws.get(D, m)
        x[:k + 1] = rhs.T  # rating part: (sum r~ p, sum r~, 0)
        if implicit:  # choice part: w1 * sum of g = (w1 sum c, 0, w1 count)
            x[:k].add_(sums[kk + k:kk + 2 * k], alpha=w1)
            torch.mul(sums[-1], w1, out=x[k + 1])
        solve_spd(A, x, overwrite=True)
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


# Rows solved together: large enough to keep the vectorised solves efficient (25M ratings:
# the same sweep time as 32768), small enough that per-row temporaries (a few hundred bytes
# each) stay far below the ratings' size.
BLOCK_ROWS = 16384
# Ratings per block, which sizes the scratch buffer (4 bytes each): 8 MB instead of 4 bytes
# for every rating (100 MB at 25M ratings).
BLOCK_RATINGS = 1 << 21


class AlsSolver:
    """One :meth:`epoch` = one sweep (items, then users) over ratings already on the device."""

    def __init__(self, model: MatrixFactorization, users: torch.Tensor, items: torch.Tensor,
                 ratings: torch.Tensor, config, distributed: bool = False):
        self.model = model
        self.config = config
        self.distributed = distributed
        n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
        self.by_user = Csr(users, items, ratings, n_users, n_items)
        # The two steps never run at once: one scratch buffer serves both matrices.
        self.by_item = Csr(items, users, ratings, n_items, n_users, scratch=self.by_user.scratch)
        n = torch.tensor(float(len(ratings)), dtype=torch.float64, device=ratings.device)
        self.n_ratings = float(_reduce(n)[0]) if distributed else float(n)
        if distributed:
            # Ranks must cut their shards at the same rows: their block results are all-reduced.
            for csr in (self.by_user, self.by_item):
                csr.plan_blocks(_reduce(csr.row_counts())[0])

    def divergence_advice(self) -> str:
        return f"the least-squares sweeps diverged: try a larger reg (now {self.config.reg})"

    # Inference mode rather than no_grad: a sweep is hundreds of small operations, and
    # skipping autograd's version counting took ~10% off a sweep on ml-latest-small.
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
