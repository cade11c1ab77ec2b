"""Item-item weights for the ranking score: EASE over the most-rated films.

A few factors cannot hold which films go together; a closed-form item-item model can
(Steck, *Embarrassingly Shallow Autoencoders for Sparse Data*, WWW 2019). With ``X`` the
users x films 0/1 matrix of rated films, restricted to the ``MAX_ITEMS`` most-rated films,

    B = I - P diag(1 / diag P),    P = (X^T X + lam I)^-1

(so ``B`` has a zero diagonal: a film does not recommend itself), and a user's neighbour
score for film ``j`` is ``sum over their rated films i of B[i, j]``. The ranking score adds
it times ``neighbour_weight`` (:mod:`mfrec.serving.scoring`); ratings (RMSE) are untouched.
``lam = neighbour_reg * mean diag(X^T X)``, relative to the films' mean count so that one
value suits datasets of any size. Both are chosen on validation (:mod:`mfrec.training.search`).
Keeping ``MAX_ITEMS`` films bounds the solve (``M^3``) and the bundle (``M^2`` floats): the
rest of the catalogue has no neighbour score (docs/tuning.md measures what that costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mfrec.data.ids import csr_rows
from mfrec.training.parallel import job_workers

MAX_ITEMS = 2048
# Users whose 0/1 rows are multiplied at once while summing X^T X (a dense users x films block).
CHUNK_USERS = 4096


@dataclass
class Neighbours:
    """EASE weights among ``items`` (item rows, ascending): ``weights[a, b]`` is what rating
    film ``items[a]`` adds to film ``items[b]``'s score."""

    items: np.ndarray  # int64 (M,)
    weights: np.ndarray  # float32 (M, M)

    def positions(self, n_items: int) -> np.ndarray:
        """Each item row's place among ``items`` (-1 for films without weights)."""
        return positions(self.items, n_items)


def positions(films: np.ndarray, n_items: int) -> np.ndarray:
    """Each of ``n_items`` item rows' place among ``films`` (-1 elsewhere)."""
    where = np.full(n_items, -1, dtype=np.int64)
    where[films] = np.arange(len(films))
    return where


def most_rated(item_rows: np.ndarray, n_items: int, max_items: int | None = None,
               counts: np.ndarray | None = None) -> np.ndarray:
    """The ``max_items`` (default ``MAX_ITEMS``) most-rated item rows (ties: lower row first),
    ascending. ``counts``: the items' rating counts when known (every rank's, on shards)."""
    max_items = MAX_ITEMS if max_items is None else max_items
    if counts is None:
        counts = np.bincount(np.asarray(item_rows, dtype=np.int64), minlength=n_items)
    counts = np.asarray(counts)
    top = np.lexsort((np.arange(n_items), -counts))[:max_items]
    return np.sort(top[counts[top] > 0])


def gramian(indptr: np.ndarray, indices: np.ndarray, films: np.ndarray, n_items: int) -> torch.Tensor:
    """``X^T X`` over ``films`` (float32, M x M): how many users rated each pair, for the users'
    rated item rows as a CSR (``indptr``, ``indices``: :func:`mfrec.data.ids.csr_from_pairs`).

    Summed over blocks of ``CHUNK_USERS`` users, each a sparse ``X^T`` times its dense 0/1
    rows (the work is the block's ratings times M, not its users times M^2), the blocks
    shared by :func:`~mfrec.training.parallel.job_workers`. Counts are whole numbers, exact in
    float32 up to 16M users, so the order the parts are added in does not change them.
    scipy's product releases the GIL: 4.9 s for 20M ratings on 2 cores, where torch's sparse
    product took 9.1 s."""
    where = positions(films, n_items)
    n_users, m = len(indptr) - 1, len(films)
    starts = list(range(0, n_users, CHUNK_USERS))

    def part(first: int, last: int) -> np.ndarray:  # blocks starts[first:last]
        gram = np.zeros((m, m), dtype=np.float32)
        for start in starts[first:last]:
            x = _rated(indptr, indices, np.arange(start, min(start + CHUNK_USERS, n_users)), where, m)
            if x.nnz:
                gram += x.T @ x.toarray()
        return gram

    with job_workers(len(starts)) as workers:
        cuts = [len(starts) * j // workers.n for j in range(workers.n + 1)]
        parts = workers.map(part, zip(cuts[:-1], cuts[1:]))
    return torch.from_numpy(sum(parts[1:], parts[0]) if parts else np.zeros((m, m), dtype=np.float32))


def _rated(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, where: np.ndarray, m: int) -> sp.csr_matrix:
    """The users ``rows``' rated films among the M of ``where`` (each item row's place, or -1)
    as a sparse 0/1 float32 matrix (len(rows) x M)."""
    owner, items = csr_rows(indptr, indices, rows)
    cols = where[items]
    keep = cols >= 0
    crow = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=len(rows)), out=crow[1:])
    return sp.csr_matrix((np.ones(int(crow[-1]), dtype=np.float32), cols[keep], crow), shape=(len(rows), m))


def solve(films: np.ndarray, gram: torch.Tensor, reg: float) -> Neighbours:
    """EASE's weights from ``X^T X`` over ``films`` with ``lam = reg * mean diag`` (float32:
    with ``lam`` at least the films' mean count the regularised matrix is well conditioned)."""
    g = gram.float().clone()
    lam = float(reg) * max(float(g.diagonal().mean()), 1e-12)
    g.diagonal().add_(lam)
    p = torch.cholesky_inverse(torch.linalg.cholesky(g))
    weights = -p / p.diagonal()[None, :]
    weights.fill_diagonal_(0.0)
    return Neighbours(np.asarray(films, dtype=np.int64), weights.float().numpy())


def fit(indptr: np.ndarray, indices: np.ndarray, n_items: int, reg: float, max_items: int | None = None) -> Neighbours:
    """EASE weights from the users' rated item rows as a CSR (``indptr``, ``indices``)."""
    films = most_rated(indices, n_items, max_items)
    return solve(films, gramian(indptr, indices, films, n_items), reg)


def scores(neighbours: Neighbours, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray,
           n_items: int, where: np.ndarray | None = None) -> torch.Tensor:
    """Neighbour scores (len(rows) x M, the films of ``neighbours.items``) of the users ``rows``
    of a CSR of rated item rows (``indptr``, ``indices``). ``where``: ``positions(n_items)``,
    when the caller keeps it."""
    where = neighbours.positions(n_items) if where is None else where
    # The users' rated films as a sparse 0/1 matrix: the product costs their ratings times M,
    # not users times M^2 (scipy's: 2.4x as fast as torch's sparse product, one thread each).
    x = _rated(indptr, indices, rows, where, len(neighbours.items))
    return torch.from_numpy(np.ascontiguousarray(x @ neighbours.weights, dtype=np.float32))


class Scorer:
    """:func:`scores` times a weight, with what every call shares (the films' places and columns)."""

    def __init__(self, neighbours: Neighbours, n_items: int):
        self.neighbours, self.n_items = neighbours, n_items
        self.where = neighbours.positions(n_items)
        self.columns = torch.from_numpy(neighbours.items)  # the score columns the result adds to

    def __call__(self, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, weight: float) -> torch.Tensor:
        return scores(self.neighbours, indptr, indices, rows, self.n_items, self.where).mul_(float(weight))
