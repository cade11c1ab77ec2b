"""Conjugate-gradient ALS steps: a few warm-started CG iterations per row instead of an exact solve.

The systems are those of :mod:`mfrec.training.als` (its docstring has the objective). The
exact steps build every row's D x D matrix (``nnz * D^2`` work) and factorise it
(``rows * D^3``); conjugate gradients only multiply by it. A product with a row's matrix is
a sum over its ratings of ``w f (f . v)`` plus a shared part, so for a whole block of rows it
is one sampled dense-dense product (``f . v`` per rating) and one sparse-dense product per
data term, ``O(nnz * D)``. Each CG step runs on every row of a block at once (per-row step
sizes), starting from the current factors, as implicit's CPU solver does; ``cg_steps``
iterations per side and sweep (2 by default) do not solve a row exactly, but the sweeps
converge to the same objective (tests compare the loss with the exact steps).

**Preconditioning in an eigenbasis.** A row's matrix is a shared part ``A0`` (penalties at
their mean, the choice term's Gramian) plus a sum over its ``n`` ratings of outer products
``h h^T``, which is about ``n E`` with ``E`` the mean outer product over every rating. One
generalised eigendecomposition per side and sweep (``D^3``, :class:`mfrec.training.linalg.Basis`) gives a basis in
which ``A0 + n E`` is diagonal for every ``n`` at once. CG runs in it (unknowns ``w`` with
``x = V w``, tables ``h V``): the shared part becomes a per-coordinate scale, with no
``D x D`` product per step, and the preconditioner is the inverse of that diagonal. Two steps
there reach the exact sweeps' objective (docs/benchmarks.md, "CG steps"). Rows whose
penalty differs from the mean add ``(reg_r - mean) V^T J V w`` (``J`` the factor
coordinates), one ``D x D`` product a step.
"""

from __future__ import annotations

import torch

from mfrec.training.csr import Csr
from mfrec.training.linalg import Basis
from mfrec.training.shards import all_reduce


# Rows of a column-side table per piece of its per-sweep products, which the workers share
# (a fixed size, so that sums come out the same for any number of workers): at k=128 over 1M
# ratings these products took 15 % of a sweep on one thread while the others waited.
TABLE_CHUNK = 8192


def _outer_sum(table: torch.Tensor, counts: torch.Tensor | None, workers=None) -> torch.Tensor:
    """``sum_j n_j h_j h_j^T`` over ``table``'s rows ``h_j`` (``n_j`` = 1 without ``counts``):
    with counts per rating, the outer products of every rating."""
    def piece(start):
        rows = table[start:start + TABLE_CHUNK]
        return (rows if counts is None else rows * counts[start:start + TABLE_CHUNK, None]).T @ rows

    parts = _map(workers, piece, _pieces(table))
    return torch.stack(parts).sum(0) if parts else table.new_zeros(table.shape[1], table.shape[1])


def _transform(table: torch.Tensor, matrix: torch.Tensor, workers=None) -> torch.Tensor:
    """``table @ matrix``, pieces of rows shared by the workers."""
    out = table.new_empty(len(table), matrix.shape[1])

    def piece(start):
        torch.matmul(table[start:start + TABLE_CHUNK], matrix, out=out[start:start + TABLE_CHUNK])

    _map(workers, piece, _pieces(table))
    return out


def _pieces(table: torch.Tensor) -> list:
    """The first row of each ``TABLE_CHUNK``-row piece of ``table``, as work items."""
    return [(start,) for start in range(0, len(table), TABLE_CHUNK)]


def _penalties(row_reg: torch.Tensor) -> tuple:
    """(the rows' mean penalty, each row's penalty minus it as a column, or None when the
    rows share one penalty)."""
    if not len(row_reg) or bool((row_reg == row_reg[0]).all()):
        return (float(row_reg[0]) if len(row_reg) else 0.0), None
    typical = float(row_reg.mean())
    return typical, (row_reg - typical)[:, None]


class Predictions:
    """Per rating, in the by-user matrix's storage order, the rating residual ``r - mu - b_u -
    b_i - p_u.q_i`` and the choice prediction ``c_u.q_i + d_i`` at the current factors.

    Each step moves the predictions by its CG step sizes times products it computes anyway,
    so the other side's step starts from these instead of a pass over the ratings per system
    to recompute them (with two CG steps: 16 passes a sweep instead of 20). ``link`` is, per
    rating of the by-item matrix's storage, its place in the by-user one. Empty (``ready``
    False) until a step has filled them; the solver empties them when something else wrote
    to the model between sweeps.
    """

    def __init__(self, link: torch.Tensor, dtype: torch.dtype, choice: bool):
        self.link = link
        self.error = torch.empty(len(link), dtype=dtype, device=link.device)
        self.choice = torch.empty(len(link), dtype=dtype, device=link.device) if choice else None
        self.ready = False


def _moved(values: torch.Tensor, part, taken: list, moves: list, sign: float) -> torch.Tensor:
    """``values`` (per rating) plus ``sign`` times each CG step's size times its moves (in place)."""
    for alpha, move in zip(taken, moves):
        values.addcmul_(part.spread(alpha), move, value=sign)
    return values


class _Rows:
    """A block of rows whose systems ``A x = b`` CG solves together: ``apply(V)`` is ``A V``
    row by row and ``curvature(V)`` each row's ``v . A v`` (without ``A V``'s product over the
    ratings); ``x`` the current solutions (warm start), ``residual`` ``b - A x`` and
    ``inverse`` each row's diagonal preconditioner."""

    def __init__(self, apply, curvature, x: torch.Tensor, residual: torch.Tensor, inverse: torch.Tensor):
        self.apply, self.curvature, self.x, self.residual, self.inverse = apply, curvature, x, residual, inverse


def conjugate_gradient(systems: list[_Rows], steps: int) -> list[list[torch.Tensor]]:
    """``steps`` preconditioned CG iterations on every row of every system (each row its own
    step sizes), updating ``x`` in place; returns each system's step sizes (``x`` moved by
    ``alpha`` times the direction ``apply`` or ``curvature`` was called with, step by step).

    The last step needs only each row's ``d . A d``, not ``A d``: no later step reads the
    residual (left as it was before that step), so it saves a product with the other side's
    table per system (with two steps: 20 passes over the ratings a sweep instead of 24; its
    per-row sum of squares is a one-column product)."""
    scaled = [s.residual * s.inverse for s in systems]
    directions = [z.clone() for z in scaled]
    norms = [torch.linalg.vecdot(s.residual, z) for s, z in zip(systems, scaled)]
    taken = [[] for _ in systems]
    for step in range(steps):
        last = step == steps - 1
        for s, d, rz, sizes in zip(systems, directions, norms, taken):
            ad = None if last else s.apply(d)
            curvature = s.curvature(d) if last else torch.linalg.vecdot(d, ad)
            # A converged row (zero direction) takes no step rather than 0/0.
            alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
            s.x.addcmul_(alpha[:, None], d)
            if ad is not None:
                s.residual.addcmul_(alpha[:, None], ad, value=-1.0)
            sizes.append(alpha)
        if last:
            break
        for i, (s, d, rz) in enumerate(zip(systems, directions, norms)):
            z = s.residual * s.inverse
            new = torch.linalg.vecdot(s.residual, z)
            beta = torch.where(rz > 0, new / rz.clamp_min(1e-30), torch.zeros_like(rz))
            d.mul_(beta[:, None]).add_(z)
            norms[i] = new
    return taken


def _diagonal(k: int, first: float, rest: float, D: int, like: torch.Tensor) -> torch.Tensor:
    """``diag(first (k times), rest (D - k times))``."""
    return torch.diag(torch.cat([torch.full((k,), first, dtype=like.dtype, device=like.device),
                                 torch.full((D - k,), rest, dtype=like.dtype, device=like.device)]))


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, weights: tuple,
                bias_reg: float, row_reg: torch.Tensor, steps: int, out: tuple, workers=None, *,
                counts: tuple, typical_count: float | None = None, predictions: Predictions | None = None):
    """The user step by CG, warm-started from and written into ``out = (bias, p, c)``.

    Rating system of user u, unknowns ``x = (p_u, b_u)``: ``sum over rated f f^T + diag(reg_u,
    bias_reg) `` with ``f = (q_i, 1)``, right side ``sum r~ f``. Choice system, unknown
    ``c_u``: ``(w1 - w0) sum over rated q q^T + w0 Q^T Q + reg_u I``, right side
    ``sum over rated (w1 - (w1 - w0) d_i) q_i - w0 Q^T d``. ``counts`` are (ratings per user,
    per item) as floats; ``typical_count`` the ratings of a typical user (default: the mean of
    these users'; a rank of a sharded fit passes every rank's mean). ``predictions``, when
    given, are read instead of recomputed (when ready) and moved to the new factors (filled
    when not). Returns the
    squared rating error at the new factors.
    """
    q = item_factors
    k, dtype, device = q.shape[1], q.dtype, q.device
    w0, w1 = weights
    omega = w1 - w0
    bias, p, c = out
    user_counts, item_counts = counts
    if w0 == 0:
        c.zero_()  # no choice loss, no choice vectors (as in the exact step)
    f = torch.cat([q, torch.ones(len(q), 1, dtype=dtype, device=device)], 1)
    per_rating = _outer_sum(f, item_counts, workers) / item_counts.sum().clamp_min(1.0)
    typical, extra = _penalties(row_reg)
    typical_count = float(user_counts.mean()) if typical_count is None else typical_count
    rating = Basis(_diagonal(k, typical, bias_reg, k + 1, f), per_rating, k, typical_count)
    f_w = _transform(f, rating.V, workers)
    f_w_t = f_w.T  # the sampled product reads an item's features contiguously this way
    if w0 > 0:
        gram = w0 * _outer_sum(q, None, workers)
        choice = Basis(gram + typical * torch.eye(k, dtype=dtype, device=device), omega * per_rating[:k, :k], k,
                       typical_count)
        q_w = _transform(q, choice.V, workers)
        q_w_t = q_w.T
        offset = (w0 * (q.T @ item_choice_bias)) @ choice.V

    tracked = predictions is not None and predictions.ready

    def block(first, part):
        rows = slice(first, first + part.shape[0])
        more = extra[rows] if extra is not None else None
        n = user_counts[rows]
        moves, choice_moves = [], []  # per rating, the predictions' change along each CG direction

        def rating_product(v, part=part, more=more):
            moves.append(part.dots(v, f_w_t))
            return rating.add_shared(part.product(moves[-1], f_w), v, more)

        def rating_curvature(v, part=part, more=more):
            moves.append(part.dots(v, f_w_t))
            return part.row_sums(moves[-1].square()).add_(rating.shared_form(v, more))

        w = torch.cat([p[rows], bias[rows][:, None]], 1) @ rating.to_basis
        # (A view of the tracked residuals: moved in place below.)
        error = predictions.error[part.slots] if tracked else \
            part.residuals(float(global_mean), item_bias).sub_(part.dots(w, f_w_t))
        residual = rating.add_shared(part.product(error, f_w), w, more, -1.0)
        systems = [_Rows(rating_product, rating_curvature, w, residual, rating.inverse(n))]
        if w0 > 0:
            def choice_product(v, part=part, more=more):
                choice_moves.append(part.dots(v, q_w_t))
                return choice.add_shared(part.product(choice_moves[-1], q_w).mul_(omega), v, more)

            def choice_curvature(v, part=part, more=more):
                choice_moves.append(part.dots(v, q_w_t))
                return part.row_sums(choice_moves[-1].square()).mul_(omega).add_(choice.shared_form(v, more))

            y = c[rows] @ choice.to_basis
            predicted = predictions.choice[part.slots] if tracked else \
                part.gather(item_choice_bias).add_(part.dots(y, q_w_t))
            pulled = torch.mul(predicted, -omega).add_(w1)  # what a rated pair pulls towards, less its prediction
            residual = choice.add_shared(part.product(pulled, q_w).sub_(offset), y, more, -1.0)
            systems.append(_Rows(choice_product, choice_curvature, y, residual, choice.inverse(n)))
        taken = conjugate_gradient(systems, steps)
        x = w @ rating.V_t
        p[rows], bias[rows] = x[:, :k], x[:, k]
        if w0 > 0:
            c[rows] = systems[1].x @ choice.V_t
        # The error at the new factors without another pass over the ratings: the predictions
        # moved by each step's size times that direction's products.
        _moved(error, part, taken[0], moves, -1.0)
        if predictions is not None and not tracked:
            predictions.error[part.slots] = error
        if w0 > 0 and predictions is not None:
            _moved(predicted, part, taken[1], choice_moves, 1.0)
            if not tracked:
                predictions.choice[part.slots] = predicted
        return torch.dot(error, error).to(torch.float64)

    total = sum(_map(workers, block, by_user.blocks()), torch.zeros((), dtype=torch.float64, device=device))
    if predictions is not None:
        predictions.ready = True
    return total


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, weights: tuple, bias_reg: float,
                row_reg: torch.Tensor, constant: torch.Tensor, steps: int, out: tuple, distributed: bool = False,
                workers=None, *, counts: tuple, predictions: Predictions | None = None):
    """The item step by CG, warm-started from and written into ``out = (q, b_i, d_i)``.

    Item i's unknowns ``z = (q_i, b_i, d_i)``; its matrix sums, over the users who rated it,
    ``f f^T + (w1 - w0) g g^T`` with ``f = (p_u, 1, 0)`` and ``g = (c_u, 0, 1)``, plus
    ``constant`` (``w0`` times every user's ``g g^T``: :func:`mfrec.training.als._item_constant`
    without its prior) and ``diag(reg_i, bias_reg, bias_reg)``; right side ``sum r~ f + w1
    sum g``. ``counts`` are (ratings per item, over every rank's users; per user of this
    rank) as floats. ``predictions``: as in :func:`solve_users` (filled here when not ready).
    """
    p, c = user_factors, user_choice
    k, dtype, device = p.shape[1], p.dtype, p.device
    w0, w1 = weights
    omega = w1 - w0
    implicit = w0 > 0
    factors, bias, choice_bias = out
    item_counts, user_counts = counts
    if not implicit:
        choice_bias.zero_()  # no choice loss, no choice bias (as in the exact step)
    D = k + 2 if implicit else k + 1
    # The users' features as full-width rows: f = (p, 1, 0) and g = (c, 0, 1).
    f = torch.zeros(len(p), D, dtype=dtype, device=device)
    f[:, :k], f[:, k] = p, 1.0
    per_rating = _outer_sum(f, user_counts, workers)
    if implicit:
        g = torch.zeros(len(p), D, dtype=dtype, device=device)
        g[:, :k], g[:, k + 1] = c, 1.0
        per_rating.add_(_outer_sum(g, user_counts, workers), alpha=omega)
    if distributed:  # a sum over every rank's users
        all_reduce(per_rating)
    per_rating /= item_counts.sum().clamp_min(1.0)
    typical, extra = _penalties(row_reg)
    basis = Basis(constant + _diagonal(k, typical, bias_reg, D, f), per_rating, k, float(item_counts.mean()))
    f_w = _transform(f, basis.V, workers)
    f_w_t = f_w.T  # the sampled product reads a user's features contiguously this way
    if implicit:
        g_w = _transform(g, basis.V, workers)
        g_w_t = g_w.T
    tracked = predictions is not None and predictions.ready

    def block(first, part):
        m = part.shape[0]
        rows = slice(first, first + m)
        more = extra[rows] if extra is not None else None
        moves, choice_moves = [], []  # per rating, the predictions' change along each CG direction

        def directions(v):
            """The rating and choice predictions' change per rating along ``v`` (kept when they
            are to be moved)."""
            a = part.dots(v, f_w_t)
            b = part.dots(v, g_w_t) if implicit else None
            if predictions is not None:
                moves.append(a)
                choice_moves.append(b)
            return a, b

        def sums(rating_values, choice_values):
            """Per item, sum over its ratings of rating_values f + choice_values g (in the basis)."""
            data = part.product(rating_values, f_w)
            if implicit:
                data.add_(part.product(choice_values, g_w))
            return all_reduce(data)[0] if distributed else data

        def product(v, part=part, more=more):
            a, b = directions(v)
            return basis.add_shared(sums(a, omega * b if implicit else None), v, more)

        def curvature(v, part=part, more=more):
            a, b = directions(v)
            squares = a.square()
            if implicit:
                squares.addcmul_(b, b, value=omega)
            data = part.row_sums(squares)
            return (all_reduce(data)[0] if distributed else data).add_(basis.shared_form(v, more))

        x = torch.empty(m, D, dtype=dtype, device=device)
        x[:, :k], x[:, k] = factors[rows], bias[rows]
        if implicit:
            x[:, k + 1] = choice_bias[rows]
        z = x @ basis.to_basis
        # This block's ratings' places in the by-user order of the tracked predictions.
        # (index_select and index_copy_: several times faster than indexing with [] here)
        slots = predictions.link[part.slots].long() if predictions is not None else None
        if tracked:
            rating_values = predictions.error.index_select(0, slots)
            predicted = predictions.choice.index_select(0, slots) if implicit else None
        else:
            rating_values = part.residuals(float(global_mean), user_bias).sub_(part.dots(z, f_w_t))
            predicted = part.dots(z, g_w_t) if implicit else None
        choice_values = torch.mul(predicted, -omega).add_(w1) if implicit else None
        residual = basis.add_shared(sums(rating_values, choice_values), z, more, -1.0)
        taken = conjugate_gradient([_Rows(product, curvature, z, residual, basis.inverse(item_counts[rows]))],
                                   steps)[0]
        x = z @ basis.V_t
        factors[rows], bias[rows] = x[:, :k], x[:, k]
        if implicit:
            choice_bias[rows] = x[:, k + 1]
        if predictions is not None:
            predictions.error.index_copy_(0, slots, _moved(rating_values, part, taken, moves, -1.0))
            if implicit:
                predictions.choice.index_copy_(0, slots, _moved(predicted, part, taken, choice_moves, 1.0))

    _map(workers, block, by_item.blocks())
    if predictions is not None:
        predictions.ready = True
    return factors, bias, choice_bias


def _map(workers, fn, blocks) -> list:
    """``fn`` over the blocks, by ``workers`` (:class:`mfrec.training.parallel.Workers`) or here."""
    return workers.map(fn, blocks) if workers is not None else [fn(*block) for block in blocks]
