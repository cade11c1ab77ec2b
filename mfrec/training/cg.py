"""Conjugate-gradient ALS steps: a few warm-started CG iterations per row instead of an exact solve.

The systems are those of :mod:`mfrec.training.als` (its docstring has the objective). The
exact steps build every row's D x D matrix (``nnz * D^2`` work) and factorise it
(``rows * D^3``); conjugate gradients only multiply by it. A product with a row's matrix is
a sum over its ratings of ``w f (f . v)`` plus a shared dense part, so for a whole block of
rows it is one sampled dense-dense product (``f . v`` per rating) and one sparse-dense
product per data term, ``O(nnz * D)``, plus one ``rows x D x D`` matrix product. A sweep
therefore grows like ``k^2`` (the dense parts) instead of ``k^3``. Each CG step runs on every
row of a block at once (per-row step sizes), starting from the current factors, as
implicit's CPU solver does; ``cg_steps`` iterations per side and sweep (3 by default) do
not solve a row exactly, but the sweeps converge to the same objective (tests compare the
loss with the exact steps).
"""

from __future__ import annotations

import torch

from mfrec.training.csr import Csr
from mfrec.training.shards import all_reduce


class _Rows:
    """A block of rows whose systems ``A x = b`` CG solves together: ``apply(V)`` is ``A V``
    row by row; ``x`` the current solutions (warm start), ``residual`` ``b - A x`` and
    ``diagonal`` each row's diagonal of ``A`` (the Jacobi preconditioner)."""

    def __init__(self, apply, x: torch.Tensor, residual: torch.Tensor, diagonal: torch.Tensor):
        self.apply, self.x, self.residual, self.inverse = apply, x, residual, diagonal.reciprocal()


def conjugate_gradient(systems: list[_Rows], steps: int) -> None:
    """``steps`` preconditioned CG iterations on every row of every system (each row its own
    step sizes), updating ``x`` and ``residual`` in place.

    Jacobi preconditioning: a row's system mixes a bias, whose diagonal entry is its number of
    ratings, with factors whose entries are sums of small squares; scaled by the diagonal,
    two steps do what three did without (docs/benchmarks.md, "CG steps").
    """
    scaled = [s.residual * s.inverse for s in systems]
    directions = [z.clone() for z in scaled]
    norms = [(s.residual * z).sum(1) for s, z in zip(systems, scaled)]
    for step in range(steps):
        for s, d, rz in zip(systems, directions, norms):
            ad = s.apply(d)
            curvature = (d * ad).sum(1)
            # A converged row (zero direction) takes no step rather than 0/0.
            alpha = torch.where(curvature > 0, rz / curvature.clamp_min(1e-30), torch.zeros_like(rz))
            s.x.addcmul_(alpha[:, None], d)
            s.residual.addcmul_(alpha[:, None], ad, value=-1.0)
        if step == steps - 1:
            break
        for i, (s, d, rz) in enumerate(zip(systems, directions, norms)):
            z = s.residual * s.inverse
            new = (s.residual * z).sum(1)
            beta = torch.where(rz > 0, new / rz.clamp_min(1e-30), torch.zeros_like(rz))
            d.mul_(beta[:, None]).add_(z)
            norms[i] = new


def solve_users(item_factors, item_bias, item_choice_bias, global_mean, by_user: Csr, weights: tuple,
                bias_reg: float, row_reg: torch.Tensor, steps: int, out: tuple, workers=None):
    """The user step by CG, warm-started from and written into ``out = (bias, p, c)``.

    Rating system of user u, unknowns ``x = (p_u, b_u)``: ``sum over rated f f^T + diag(reg_u,
    bias_reg) `` with ``f = (q_i, 1)``, right side ``sum r~ f``. Choice system, unknown
    ``c_u``: ``(w1 - w0) sum over rated q q^T + w0 Q^T Q + reg_u I``, right side
    ``sum over rated (w1 - (w1 - w0) d_i) q_i - w0 Q^T d``. Returns the squared rating error
    at the new factors.
    """
    q = item_factors
    k, dtype, device = q.shape[1], q.dtype, q.device
    w0, w1 = weights
    omega = w1 - w0
    bias, p, c = out
    if w0 == 0:
        c.zero_()  # no choice loss, no choice vectors (as in the exact step)
    f = torch.cat([q, torch.ones(len(q), 1, dtype=dtype, device=device)], 1)
    f_t, q_t = f.T, q.T  # the sampled product reads an item's features contiguously this way
    f_squared = f * f
    if w0 > 0:
        gram = w0 * (q.T @ q)
        offset = w0 * (q.T @ item_choice_bias)
        choice_target = w1 - omega * item_choice_bias  # per item: what a rated pair pulls towards

    def block(first, part):
        rows = slice(first, first + part.shape[0])
        lam = row_reg[rows][:, None]
        prior = torch.cat([lam.expand(-1, k), torch.full_like(lam, bias_reg)], 1)
        target = part.residuals(float(global_mean), item_bias)

        def rating_product(v, part=part, prior=prior):
            return part.product(part.dots(v, f_t), f).add_(prior * v)

        x = torch.cat([p[rows], bias[rows][:, None]], 1)
        residual = part.product(target - part.dots(x, f_t), f).sub_(prior * x)
        squares = part.pattern_product(f_squared).add_(prior)  # the rating systems' diagonals
        systems = [_Rows(rating_product, x, residual, squares)]
        if w0 > 0:
            def choice_product(v, part=part, lam=lam):
                return part.product(part.dots(v, q_t), q).mul_(omega).add_(v @ gram + lam * v)

            y = c[rows].clone()
            pulled = part.gather(choice_target) - omega * part.dots(y, q_t)
            diagonal = (squares[:, :k] - prior[:, :k]).mul_(omega).add_(gram.diagonal()[None, :] + lam)
            systems.append(_Rows(choice_product, y, part.product(pulled, q).sub_(offset + y @ gram + lam * y),
                                 diagonal))
        conjugate_gradient(systems, steps)
        p[rows], bias[rows] = x[:, :k], x[:, k]
        if w0 > 0:
            c[rows] = systems[1].x
        error = target - part.dots(x, f_t)
        return torch.dot(error, error).to(torch.float64)

    return sum(_map(workers, block, by_user.blocks()), torch.zeros((), dtype=torch.float64, device=device))


def solve_items(user_factors, user_choice, user_bias, global_mean, by_item: Csr, weights: tuple, bias_reg: float,
                row_reg: torch.Tensor, constant: torch.Tensor, steps: int, out: tuple, distributed: bool = False,
                workers=None):
    """The item step by CG, warm-started from and written into ``out = (q, b_i, d_i)``.

    Item i's unknowns ``z = (q_i, b_i, d_i)``; its matrix sums, over the users who rated it,
    ``f f^T + (w1 - w0) g g^T`` with ``f = (p_u, 1, 0)`` and ``g = (c_u, 0, 1)``, plus
    ``constant`` (``w0`` times every user's ``g g^T``: :func:`mfrec.training.als._item_constant`
    without its prior) and ``diag(reg_i, bias_reg, bias_reg)``; right side ``sum r~ f + w1
    sum g``.
    """
    p, c = user_factors, user_choice
    k, dtype, device = p.shape[1], p.dtype, p.device
    w0, w1 = weights
    omega = w1 - w0
    implicit = w0 > 0
    factors, bias, choice_bias = out
    if not implicit:
        choice_bias.zero_()  # no choice loss, no choice bias (as in the exact step)
    D = k + 2 if implicit else k + 1
    # The users' features as full-width rows: f = (p, 1, 0) and g = (c, 0, 1).
    f = torch.zeros(len(p), D, dtype=dtype, device=device)
    f[:, :k], f[:, k] = p, 1.0
    f_t = f.T  # the sampled product reads a user's features contiguously this way
    if implicit:
        g = torch.zeros(len(p), D, dtype=dtype, device=device)
        g[:, :k], g[:, k + 1] = c, 1.0
        g_t = g.T
    squares = f * f + omega * g * g if implicit else f * f

    def block(first, part):
        m = part.shape[0]
        rows = slice(first, first + m)
        lam = row_reg[rows][:, None]
        prior = torch.cat([lam.expand(-1, k), torch.full((m, D - k), bias_reg, dtype=dtype, device=device)], 1)
        target = part.residuals(float(global_mean), user_bias)

        def sums(rating_values, choice_values):
            """Per item, sum over its ratings of rating_values f + choice_values g."""
            data = part.product(rating_values, f)
            if implicit:
                data.add_(part.product(choice_values, g))
            return all_reduce(data)[0] if distributed else data

        def product(z, part=part, prior=prior):
            choice = omega * part.dots(z, g_t) if implicit else None
            return sums(part.dots(z, f_t), choice).add_(z @ constant).add_(prior * z)

        z = torch.empty(m, D, dtype=dtype, device=device)
        z[:, :k], z[:, k] = factors[rows], bias[rows]
        if implicit:
            z[:, k + 1] = choice_bias[rows]
        rating_values = target - part.dots(z, f_t)
        choice_values = (w1 - omega * part.dots(z, g_t)) if implicit else None
        residual = sums(rating_values, choice_values).sub_(z @ constant).sub_(prior * z)
        diagonal = part.pattern_product(squares)
        if distributed:
            all_reduce(diagonal)
        diagonal.add_(constant.diagonal()).add_(prior)
        conjugate_gradient([_Rows(product, z, residual, diagonal)], steps)
        factors[rows], bias[rows] = z[:, :k], z[:, k]
        if implicit:
            choice_bias[rows] = z[:, k + 1]

    _map(workers, block, by_item.blocks())
    return factors, bias, choice_bias


def _map(workers, fn, blocks) -> list:
    """``fn`` over the blocks, by ``workers`` (:class:`mfrec.training.parallel.Workers`) or here."""
    return workers.map(fn, blocks) if workers is not None else [fn(*block) for block in blocks]
