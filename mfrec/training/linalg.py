"""Batched small dense algebra for the ALS steps: SPD solves, packed symmetric matrices, and
the eigenbasis the CG steps run in."""

from __future__ import annotations

import functools

import torch

# Below this many systems solve_spd factorises each one with LAPACK; above, it eliminates
# all of them at once, vectorised over the batch.
FEW_SYSTEMS = 128


def solve_spd(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve many small symmetric positive-definite systems in place, batch dimension **last**.

    ``A`` is (D, D, N), ``b`` is (D, N); both are overwritten and ``b`` is returned holding x.
    Only the upper triangle of ``A`` is read. Many systems: Gaussian elimination without
    pivoting (safe for SPD matrices), a few whole-batch operations per pivot, which beats a
    batched LAPACK call for D around 10 and runs unchanged on any device. A few systems (a
    fold-in request): one batched Cholesky. A system that is not positive definite gets NaN.
    """
    if A.shape[2] < FEW_SYSTEMS:
        factor, info = torch.linalg.cholesky_ex(A.permute(2, 0, 1), upper=True)
        b.copy_(torch.cholesky_solve(b.T.unsqueeze(-1), factor, upper=True).squeeze(-1).T)
        b[:, info > 0] = float("nan")
        return b
    D = A.shape[0]
    # Eliminating with row j (by symmetry, column j) keeps what is read later in the upper
    # triangle; the square update also writes the unread lower one, as one operation.
    for j in range(D - 1):
        factor = A[j, j + 1:] / A[j, j]
        A[j + 1:, j + 1:].addcmul_(factor[:, None], A[j, None, j + 1:], value=-1.0)
        b[j + 1:].addcmul_(factor, b[j], value=-1.0)
    # A symmetric matrix is positive definite exactly when every pivot is positive; one
    # reduction settles the usual case, and a NaN pivot propagates by itself.
    pivots = torch.diagonal(A)
    indefinite = (pivots <= 0).any(1) if not float(pivots.amin()) > 0 else None
    for j in range(D - 1, 0, -1):
        b[j].div_(A[j, j])
        b[:j].addcmul_(A[:j, j], b[j], value=-1.0)
    b[0].div_(A[0, 0])
    if indefinite is not None:
        b[:, indefinite] = float("nan")
    return b


@functools.lru_cache(maxsize=None)
def upper_positions(D: int, device: torch.device) -> torch.Tensor:
    """Flat positions in a D x D matrix of its packed upper triangle (row-major order)."""
    i, j = torch.triu_indices(D, D, device=device)
    return i * D + j


def packed_outer_into(out: torch.Tensor, x: torch.Tensor, add_scaled: float | None = None) -> None:
    """Row-wise outer products of ``x`` (N, D), upper triangle only, written into ``out``
    (N, D(D+1)/2), or added times ``add_scaled``; row a of the triangle is x_a * x[a:]."""
    D, start = x.shape[1], 0
    for a in range(D):
        block = out[:, start:start + D - a]
        if add_scaled is None:
            torch.mul(x[:, a:a + 1], x[:, a:], out=block)
        else:
            block.addcmul_(x[:, a:a + 1], x[:, a:], value=add_scaled)
        start += D - a


def unpack_into(A: torch.Tensor, packed_t: torch.Tensor) -> None:
    """Packed upper triangles, one column per system (D(D+1)/2, N), into the upper triangles
    of ``A`` (D, D, N), the layout :func:`solve_spd` takes."""
    A.flatten(0, 1).index_copy_(0, upper_positions(A.shape[0], A.device), packed_t)


def packed(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a D x D matrix in packed order, as a (D(D+1)/2, 1) column."""
    return matrix.flatten()[upper_positions(matrix.shape[0], matrix.device)][:, None]


class Basis:
    """A basis in which every row's approximate matrix ``shared + n per_rating`` is diagonal.

    With ``B = shared + typical per_rating`` (the matrix of a row with the typical count;
    positive definite whenever either part is), a generalised eigendecomposition (float64)
    gives ``V`` with ``V^T B V = I`` and ``V^T per_rating V = diag(nu)``, so ``V^T shared V =
    diag(mu)``, ``mu = 1 - typical nu``, and a row with ``n`` ratings has ``diag(mu + n nu)``.
    ``to_basis = B V`` maps row vectors ``x`` to ``w = x B V`` (``x = w V^T``);
    ``penalised = V^T J V`` for the factor coordinates ``J`` (the first ``k``).
    """

    def __init__(self, shared: torch.Tensor, per_rating: torch.Tensor, k: int, typical: float):
        dtype, device, D = shared.dtype, shared.device, shared.shape[0]
        a, e = shared.double().cpu(), per_rating.double().cpu()
        a, e = (a + a.T) / 2, (e + e.T) / 2
        b = a + typical * e
        # A little ridge keeps B positive definite (an unused coordinate, factors still at zero).
        b += torch.eye(D, dtype=torch.float64) * (1e-9 * float(b.diagonal().abs().max()) + 1e-12)
        lower_inverse = torch.linalg.solve_triangular(torch.linalg.cholesky(b), torch.eye(D, dtype=torch.float64),
                                                      upper=False)
        nu, u = torch.linalg.eigh(lower_inverse @ e @ lower_inverse.T)
        v = lower_inverse.T @ u

        def cast(t):
            return t.to(dtype=dtype, device=device).contiguous()

        self.V, self.V_t, self.to_basis = cast(v), cast(v.T), cast(b @ v)
        self.nu, self.mu = cast(nu), cast(1.0 - typical * nu)
        self.penalised = cast(v[:k].T @ v[:k])

    def inverse(self, counts: torch.Tensor) -> torch.Tensor:
        """The preconditioner of rows with ``counts`` ratings: ``1 / (mu + n nu)`` per
        coordinate (kept positive, so that it stays SPD where the approximation is not)."""
        return torch.addcmul(self.mu[None, :], counts[:, None], self.nu[None, :]).clamp_min(1e-6).reciprocal()

    def add_shared(self, out: torch.Tensor, w: torch.Tensor, extra: torch.Tensor | None,
                   sign: float = 1.0) -> torch.Tensor:
        """``out`` plus ``sign`` times the shared part of the rows' matrices times ``w``: ``mu w``
        plus, for rows whose penalty differs from the mean by ``extra``, ``extra V^T J V w``
        (in place: a block's rows x D temporaries are each a pass over memory)."""
        out.addcmul_(w, self.mu, value=sign)
        return out if extra is None else out.addcmul_(extra, w @ self.penalised, value=sign)

    def shared_form(self, w: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """Per row, ``w`` times the shared part of its matrix times ``w`` (see :meth:`add_shared`)."""
        form = (w * w) @ self.mu
        return form if extra is None else form.addcmul_(extra[:, 0], torch.linalg.vecdot(w, w @ self.penalised))
