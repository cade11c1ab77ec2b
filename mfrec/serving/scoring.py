"""Ranking scores shared by evaluation and serving: one code path from test metrics to REST.

All functions take a fitted :class:`~mfrec.training.model.MatrixFactorization` and row
indices; id mapping lives in :mod:`mfrec.serving.bundle`.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mfrec.data.ids import csr_rows
from mfrec.training.parallel import job_workers

# Scores computed per matrix product when ranking: about a million (4 MB) stays in the CPU's
# cache for the top-k that reads them back; a block of 1024 users x 62k films (256 MB) made
# ranking at 25M ratings 3x slower (memory traffic, not arithmetic).
BLOCK_SCORES = 1 << 20


def rows_per_block(n_items: int) -> int:
    """Users ranked per matrix product for a catalogue of ``n_items``: ``BLOCK_SCORES``
    scores, within 8 to 1024 rows."""
    return int(min(1024, max(8, BLOCK_SCORES // max(n_items, 1))))


class ScoreBlocks:
    """One reused buffer for the blocks of scores a ranking loop computes.

    A fresh few-megabyte tensor per block makes the process's memory grow by about a block
    each time (freed blocks of that size go back to a fragmented heap, not to the system:
    2.9 GB after 1,000 blocks of 16 x 62k scores); writing each product into one buffer
    keeps it flat.
    """

    def __init__(self, n_rows: int, n_items: int):
        self.block = rows_per_block(n_items)
        self.n_rows, self.n_items = n_rows, n_items
        self._buffers = {}

    def slices(self, span: slice | None = None) -> list[slice]:
        """The blocks' rows (of ``span``, default all), in order."""
        start, stop = (0, self.n_rows) if span is None else (span.start, span.stop)
        return [slice(first, min(first + self.block, stop)) for first in range(start, stop, self.block)]

    @torch.no_grad()
    def product(self, rows: torch.Tensor, table: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """``rows @ table`` (rows: at most one block), written into buffer ``slot`` (a loop
        that keeps several blocks of scores at once gives each its slot)."""
        return torch.matmul(rows.to(table.dtype), table, out=self.buffer(len(rows), table, slot))

    def buffer(self, n_rows: int, like: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """Buffer ``slot``'s first ``n_rows`` rows, one score per column of ``like`` (its dtype
        and device)."""
        if n_rows > self.block:
            raise ValueError(f"{n_rows} rows do not fit a block of {self.block}")
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[slot] = torch.empty(min(self.block, self.n_rows), like.shape[1],
                                                       dtype=like.dtype, device=like.device)
        return buffer[:n_rows]


def in_spans(n_rows: int, n_items: int, rank: Callable, span_rows: int, parallel: bool = False) -> list:
    """``rank(span, blocks)`` over consecutive spans of about ``span_rows`` rows (whole blocks),
    results in span order; ``blocks`` is the :class:`ScoreBlocks` (one buffer) of the thread
    that runs it. With ``parallel``, spans run on :func:`~mfrec.training.parallel.job_workers`
    (on the CPU: the caller keeps to models there; REST requests rank on their own thread)."""
    block = rows_per_block(n_items)
    size = block * max(1, span_rows // block)
    spans = [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]
    with job_workers(len(spans) if parallel else 1) as workers:
        free = queue.SimpleQueue()
        for _ in range(workers.n):
            free.put(ScoreBlocks(min(size, n_rows), n_items))

        def run(span):
            blocks = free.get()
            try:
                return rank(span, blocks)
            finally:
                free.put(blocks)

        return workers.map(run, [(span,) for span in spans])


@torch.no_grad()
def ranking_table(model, rating_weight: float,
                  item_genres: torch.Tensor | None = None) -> torch.Tensor:
    """The items' side of a ranking score, (k + 2 [+ genres]) x items: factors, the combined
    item bias, the genre matrix when users' genre taste is to count, and ones (for each
    user's constant). :func:`ranking_rows` times this table is every user's score for every
    item: ``choice score + rating_weight * predicted rating`` [+ genre score]."""
    w = float(rating_weight)
    q = model.item_factors
    ones = torch.ones(len(q), 1, dtype=q.dtype, device=q.device)
    parts = [q, (model.item_logit_bias + w * model.item_bias)[:, None]]
    if item_genres is not None:
        parts.append(item_genres.to(q.dtype))
    return torch.cat(parts + [ones], 1).T.contiguous()


@torch.no_grad()
def ranking_rows(model, users: torch.Tensor | None, rating_weight: float,
                 folded: "FoldedUsers | None" = None, genre_taste: torch.Tensor | None = None) -> torch.Tensor:
    """The users' side of a ranking score, users x (k + 2 [+ genres]), matching
    :func:`ranking_table`'s rows: learned users, or ``folded`` new customers (their fitted
    bias and vectors), with ``genre_taste`` (users x genres, weight included) if it counts."""
    if folded is None:
        folded = FoldedUsers(model.user_bias[users], model.user_factors[users], model.user_choice_factors[users])
    w = float(rating_weight)
    # (c + w p).q + d + w (mu + b_u + b_i) [+ taste.genres]: both heads share q, so one
    # product scores everything; the user-constant w (mu + b_u) only shifts the row.
    p = folded.factors
    parts = [folded.choice + w * p, torch.ones(len(p), 1, dtype=p.dtype, device=p.device)]
    if genre_taste is not None:
        parts.append(genre_taste.to(p.dtype))
    parts.append((w * (model.global_mean + folded.bias))[:, None])
    return torch.cat(parts, 1)


@torch.no_grad()
def rating_parts(model, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, table) whose product is each user's predicted rating of every item less the
    user's constant ``mu + b_u`` (a constant per row does not change a ranking): ``p_u . q_i
    + b_i``. :func:`ranking_rows` at a rating weight ``w`` scores ``w`` times this more than
    at weight 0, up to rounding."""
    p, q = model.user_factors[users], model.item_factors
    rows = torch.cat([p, torch.ones(len(p), 1, dtype=p.dtype, device=p.device)], 1)
    return rows, torch.cat([q, model.item_bias[:, None]], 1).T.contiguous()


def mask_seen(scores: torch.Tensor, seen_indptr: np.ndarray, seen_indices: np.ndarray, users: np.ndarray) -> torch.Tensor:
    """Set each row's already-rated items to -inf (seen lists in CSR form, by user index)."""
    # On the CPU, through the tensor's numpy view: cheaper than torch's index_put for one user.
    target = scores.numpy() if scores.device.type == "cpu" else scores
    if len(users) == 1:  # one user per request is the common case: a plain slice
        cols = seen_indices[seen_indptr[users[0]]:seen_indptr[users[0] + 1]]
        rows = 0
    else:
        rows, cols = csr_rows(seen_indptr, seen_indices, users)
    if target is scores:
        rows = torch.as_tensor(rows, device=scores.device)
        cols = torch.as_tensor(cols, device=scores.device)
    target[rows, cols] = -np.inf
    return scores


# Columns per chunk when the top-k is found from chunk maxima (:func:`top_k`).
CHUNK = 64


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, indices) per row, values descending; k is capped at the number of columns.

    On the CPU, with at least ``8 k`` chunks of ``CHUNK`` columns, the k largest lie in the k
    chunks with the largest maxima (or the tail past the last whole chunk): a row's chunk
    maxima (a vectorised pass) pick those, and ``torch.topk`` sorts through ``k * CHUNK``
    candidates instead of the whole row (top 10 of 59k films: 1.8 -> 0.36 ms a million
    scores, one thread; torch's CPU topk costs about 1.5 ns a score). Equal values may come
    back as other columns than ``torch.topk`` would give.
    """
    n = scores.shape[1]
    k = min(k, n)
    chunks = n // CHUNK
    if scores.device.type != "cpu" or k == 0 or chunks < 8 * k or scores.stride(1) != 1:
        return torch.topk(scores, k, dim=1)
    whole = scores[:, :chunks * CHUNK].unflatten(1, (chunks, CHUNK))
    best = torch.topk(whole.amax(2), k, dim=1, sorted=False).indices
    candidates = torch.gather(whole, 1, best[:, :, None].expand(-1, -1, CHUNK)).flatten(1)
    columns = (best[:, :, None] * CHUNK + torch.arange(CHUNK)).flatten(1)
    if chunks * CHUNK < n:
        candidates = torch.cat([candidates, scores[:, chunks * CHUNK:]], 1)
        columns = torch.cat([columns, torch.arange(chunks * CHUNK, n).expand(len(scores), -1)], 1)
    values, picked = torch.topk(candidates, k, dim=1)
    return values, columns.gather(1, picked)


@torch.no_grad()
def unit_factors(model) -> torch.Tensor:
    """The item factors scaled to unit length: what :func:`similar_items` compares."""
    return torch.nn.functional.normalize(model.item_factors, dim=1)


@torch.no_grad()
def similar_items(unit: torch.Tensor, items: torch.Tensor, k: int,
                  blocks: ScoreBlocks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-nearest items to each of ``items`` (the item itself excluded), given
    :func:`unit_factors`; ``blocks`` holds the buffer to compute them in (a loop's)."""
    sims = blocks.product(unit[items], unit.T) if blocks is not None else unit[items] @ unit.T
    sims[torch.arange(len(items)), items] = -torch.inf
    return top_k(sims, k)


@dataclass
class FoldedUsers:
    """Fitted parameters of users (rows): rating bias, rating vector, choice vector, and
    optionally a genre taste (users x genres, weight included; see :mod:`mfrec.serving.genres`)
    and neighbour scores (users x the neighbour films, weight included; :mod:`mfrec.serving.neighbours`)."""

    bias: torch.Tensor
    factors: torch.Tensor
    choice: torch.Tensor
    genre_taste: torch.Tensor | None = None
    neighbour_scores: torch.Tensor | None = None

    def finite(self) -> np.ndarray:
        """Per user, whether every fitted parameter is finite."""
        return (self.bias.isfinite() & self.factors.isfinite().all(1) & self.choice.isfinite().all(1)).numpy()

    def __getitem__(self, rows) -> "FoldedUsers":
        taste = None if self.genre_taste is None else self.genre_taste[rows]
        near = None if self.neighbour_scores is None else self.neighbour_scores[rows]
        return FoldedUsers(self.bias[rows], self.factors[rows], self.choice[rows], taste, near)
