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

import warnings

import numpy as np
import torch

# torch's sparse CSR products are stable for what we use; the "beta" notice would greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

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
    rated item rows as a CSR (``indptr``, ``indices``: :func:`mfrec.data.ids.csr_from_pairs`),
    summed from dense 0/1 blocks of ``CHUNK_USERS`` users (one matrix product each; exact up
    to 16M users). Temporaries are a block's: at 25M ratings, reordering every rating for
    the blocks took a gigabyte."""
    where = torch.from_numpy(positions(films, n_items))
    n_users, m = len(indptr) - 1, len(films)
    gram = torch.zeros(m, m, dtype=torch.float32)
    block = torch.zeros(min(CHUNK_USERS, max(n_users, 1)), m, dtype=torch.float32)
    for start in range(0, n_users, CHUNK_USERS):
        rows = min(CHUNK_USERS, n_users - start)
        lo, hi = int(indptr[start]), int(indptr[start + rows])
        if lo == hi:
            continue
        users = torch.repeat_interleave(torch.arange(rows), torch.from_numpy(np.diff(indptr[start:start + rows + 1])))
        cols = where[torch.from_numpy(np.asarray(indices[lo:hi], dtype=np.int64))]
        keep = cols >= 0
        users, cols = users[keep], cols[keep]
        block[:rows].zero_()
        block[users, cols] = 1.0
        # X^T as a sparse matrix times X dense: the work is the block's ratings times M, not
        # its users times M^2 (most users rate a small share of the films).
        transposed = torch.sparse_coo_tensor(torch.stack([cols, users]), torch.ones(len(cols)), (m, rows),
                                             check_invariants=False).to_sparse_csr()
        gram.add_(transposed @ block[:rows])
    return gram


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
    rows = np.asarray(rows, dtype=np.int64)
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    taken = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    cols = where[indices[taken]]
    keep = cols >= 0
    # The users' rated films as a sparse 0/1 matrix (rows in order already): the product costs
    # their ratings times M, not users times M^2.
    crow = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=len(rows)), out=crow[1:])
    x = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols[keep]), torch.ones(int(crow[-1])),
                                (len(rows), len(neighbours.items)), check_invariants=False)
    return x @ torch.from_numpy(neighbours.weights)


class Scorer:
    """:func:`scores` times a weight, with what every call shares (the films' places and columns)."""

    def __init__(self, neighbours: Neighbours, n_items: int):
        self.neighbours, self.n_items = neighbours, n_items
        self.where = neighbours.positions(n_items)
        self.columns = torch.from_numpy(neighbours.items)  # the score columns the result adds to

    def __call__(self, indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, weight: float) -> torch.Tensor:
        return scores(self.neighbours, indptr, indices, rows, self.n_items, self.where).mul_(float(weight))
