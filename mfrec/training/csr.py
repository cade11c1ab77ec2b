"""Ratings as a compressed sparse row matrix, and the two sparse products ALS needs."""

from __future__ import annotations

import warnings

import torch

# torch's sparse CSR matmul is stable for what we use (CSR @ dense, CPU and CUDA); the
# "beta" notice would otherwise greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# A block of rows solved together has at most this many rows and ratings: it bounds the
# per-row temporaries and the one-float-per-rating values of a product at any scale.
BLOCK_ROWS = 8192
BLOCK_RATINGS = 1 << 20
# Ratings sorted per pass while building: bounds the build's temporaries, and what the
# allocator keeps of them afterwards.
BUILD_CHUNK = 1 << 16


class Csr:
    """Ratings by row (rows = one side, columns = the other), compact enough for 25M+ ratings.

    Column indices are int32 (two bytes on a CPU when there are at most 65,536 columns,
    widened per block when multiplied); half-star ratings are stored as one-byte codes.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int, n_cols: int):
        n, device = len(ratings), ratings.device
        if not len(rows) == len(cols) == n:
            raise ValueError(f"rows, columns and ratings differ in length: {len(rows)}, {len(cols)}, {n}")
        counts = torch.bincount(rows, minlength=n_rows)
        if len(counts) != n_rows:  # (bincount itself refuses negative rows)
            raise ValueError(f"a row index is {len(counts) - 1}, past the matrix's {n_rows} rows")
        if n:
            low, high = (int(v) for v in torch.aminmax(cols))
            if low < 0 or high >= n_cols:
                raise ValueError(f"column indices span {low}..{high}, outside the matrix's {n_cols} columns")
        index_dtype = torch.int32 if max(n, n_rows, n_cols) < 2**31 else torch.long
        compact = device.type == "cpu" and n_cols <= 2**16 and n > BLOCK_RATINGS
        col_dtype = torch.uint16 if compact else index_dtype
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=device)
        torch.cumsum(counts, 0, out=crow[1:])
        self.scale = 0.5 if _half_stars(ratings) else 1.0
        code_dtype = torch.uint8 if self.scale == 0.5 else torch.float32
        self.cols = torch.empty(n, dtype=col_dtype, device=device)
        self.ratings = torch.empty(n, dtype=code_dtype, device=device)
        _fill(self.cols, self.ratings, rows, cols, ratings, crow, self.scale)
        self.crow = crow.to(index_dtype)
        self.shape = (n_rows, n_cols)
        self.block_starts = None  # row where each block starts; planned on first use

    def row_counts(self) -> torch.Tensor:
        """Ratings per row."""
        return self.crow[1:].long() - self.crow[:-1].long()

    def plan_blocks(self, row_counts: torch.Tensor | None = None) -> None:
        """Cut the rows into blocks of at most ``BLOCK_ROWS`` rows and ``BLOCK_RATINGS`` ratings
        (a row with more ratings is a block of its own). Ranks holding shards of one matrix pass
        the all-reduced ``row_counts``, so that every rank cuts at the same rows."""
        n_rows = self.shape[0]
        if row_counts is None and n_rows <= BLOCK_ROWS and len(self.cols) <= BLOCK_RATINGS:
            self.block_starts = [0, n_rows]
            return
        ends = torch.cumsum((row_counts if row_counts is not None else self.row_counts()).cpu().long(), 0)
        starts, first = [], 0
        while first < n_rows:
            before = int(ends[first - 1]) if first else 0
            fits = int(torch.searchsorted(ends, before + BLOCK_RATINGS, right=True))
            starts.append(first)
            first = min(first + BLOCK_ROWS, max(fits, first + 1))
        self.block_starts = starts + [n_rows]

    def max_block_rows(self) -> int:
        starts = self._starts()
        return max((b - a for a, b in zip(starts[:-1], starts[1:])), default=0)

    def blocks(self):
        """(first row, view of the block's rows) pairs sharing this matrix's storage."""
        starts = self._starts()
        for first, last in zip(starts[:-1], starts[1:]):
            lo, hi = int(self.crow[first]), int(self.crow[last])
            part = object.__new__(Csr)
            part.crow = self.crow[first:last + 1] - lo
            part.cols, part.ratings = self.cols[lo:hi], self.ratings[lo:hi]
            part.scale, part.shape, part.block_starts = self.scale, (last - first, self.shape[1]), [0, last - first]
            yield first, part

    def pattern_product(self, table: torch.Tensor) -> torch.Tensor:
        """Per row, the sum of ``table`` rows over that row's rated columns."""
        cols = self._index_cols()
        return self._matrix(cols, torch.ones(len(cols), dtype=table.dtype, device=table.device)) @ table

    def residual_product(self, offset: float, col_bias: torch.Tensor, table: torch.Tensor) -> tuple:
        """(per row: sum of ``(r - offset - col_bias[col]) * table[col]``, total squared residual)."""
        cols = self._index_cols()
        values = torch.index_select(col_bias, 0, cols)
        values.neg_().add_(self.ratings, alpha=self.scale).sub_(offset)
        return self._matrix(cols, values) @ table, torch.dot(values, values)

    def _starts(self) -> list:
        if self.block_starts is None:
            self.plan_blocks()
        return self.block_starts

    def _index_cols(self) -> torch.Tensor:
        """Column indices in the products' dtype (the crow's)."""
        return self.cols.to(self.crow.dtype) if self.cols.dtype == torch.uint16 else self.cols

    def _matrix(self, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, cols, values, self.shape, check_invariants=False)


def _fill(out_cols, out_codes, rows, cols, ratings, crow, scale) -> None:
    """Write columns and rating codes in row order (stable: equal rows keep their input order).

    Input sorted by row (prepared data is, by user) is copied as is; otherwise a counting sort
    places each chunk's ratings at its rows' next free slots, without an n-sized permutation.
    """
    n = len(ratings)
    # uint16 has no index_put: write through an int16 view (same bits).
    cols_out = out_cols.view(torch.int16) if out_cols.dtype == torch.uint16 else out_cols
    in_order = n < 2 or bool(torch.all(rows[1:] >= rows[:-1]))
    fill = crow[:-1].clone()  # next free slot of each row
    for start in range(0, n, BUILD_CHUNK):
        part = slice(start, start + BUILD_CHUNK)
        if in_order:
            out_cols[part] = cols[part]
            out_codes[part] = ratings[part] / scale
            continue
        chunk_rows = rows[part].to(torch.long)
        order = torch.argsort(chunk_rows, stable=True)
        sorted_rows = chunk_rows[order]
        rank = torch.arange(len(order), device=rows.device) - torch.searchsorted(sorted_rows, sorted_rows)
        dest = fill[sorted_rows] + rank
        cols_out[dest] = cols[part][order].to(out_cols.dtype).view(cols_out.dtype)
        out_codes[dest] = (ratings[part][order] / scale).to(out_codes.dtype)
        fill += torch.bincount(chunk_rows, minlength=len(fill))


def _half_stars(ratings: torch.Tensor) -> bool:
    """Whether every rating is a multiple of 0.5 in [0, 127.5] (one byte per rating then)."""
    for start in range(0, len(ratings), BUILD_CHUNK):
        twice = ratings[start:start + BUILD_CHUNK] * 2
        if not (torch.all(twice == torch.round(twice)) and twice.min() >= 0 and twice.max() <= 255):
            return False
    return len(ratings) > 0
