"""Ratings as a compressed sparse row matrix in blocks of rows and tiles of columns, and the
sparse products ALS needs."""

from __future__ import annotations

import functools
import warnings

import torch

from mfrec.training.heap import release_free_memory

# torch's sparse CSR matmul is stable for what we use (CSR @ dense, CPU and CUDA); the
# "beta" notice would otherwise greet every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# A block of rows solved together has at most this many rows and ratings: it bounds the
# per-row temporaries and the one-float-per-rating values of a product at any scale.
BLOCK_ROWS = 8192
BLOCK_RATINGS = 2 << 20
# CG's blocks may hold more: its per-rating temporaries are a few floats, and each of its few
# dozen products a block pays a call per column tile (a k=32 sweep over 25M ratings: 4.4 s
# with blocks of 1M ratings, 3.5 s with 4M).
CG_BLOCK_RATINGS = 4 << 20
# ... and, when more blocks are asked for (one per worker thread and more), at least this many
# ratings: smaller ones would cost more in per-operation overhead than they balance.
MIN_BLOCK_RATINGS = 1 << 15
# A column tile's slice of the table a product reads is about this many bytes, what a core's
# L2 holds while products gather rows from it in random order: a k=32 CG sweep over 25M
# ratings took 6.5 s with 8 MiB tiles, 4.0 s with 2 MiB (docs/benchmarks.md, "CG steps").
TILE_BYTES = 2 << 20
# Ratings sorted per pass while building: bounds the build's temporaries, and what the
# allocator keeps of them afterwards.
BUILD_CHUNK = 1 << 16
# ... and regrouped by column tile per pass (about 40 bytes of temporaries a rating, a
# chunk's on each worker at once: twice 2^18 kept a 25M fit's peak RSS 28 MB higher).
TILE_CHUNK = 1 << 17


class Csr:
    """Ratings by row (rows = one side, columns = the other), compact enough for 25M+ ratings.

    Column indices are int32 (two bytes on a CPU when there are at most 65,536 columns, or
    counted from their tile's first column when tiles are at most that wide; widened per
    block when multiplied); half-star ratings are stored as one-byte codes. ``workers`` (a
    :class:`~mfrec.training.parallel.Workers`, or None: the caller's thread) share the build.
    With ``origin``, ``self.origin`` holds each stored rating's position in the input (the
    row pointers' integer type), kept through tiling: how two matrices of the same ratings
    map onto each other.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, ratings: torch.Tensor, n_rows: int, n_cols: int,
                 workers=None, origin: bool = False):
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
        self.origin = torch.empty(n, dtype=index_dtype, device=device) if origin else None
        _fill(self.cols, self.ratings, self.origin, rows, cols, ratings, crow, self.scale, workers)
        if n > BLOCK_RATINGS:
            release_free_memory()  # the sort's temporaries
        self.crow = crow.to(index_dtype)
        self.shape = (n_rows, n_cols)
        self.block_starts = None  # row where each block starts; planned on first use
        self.plan = None  # per block: rows, ratings and column tiles (plan_blocks)
        self.ones = None

    def row_counts(self) -> torch.Tensor:
        """Ratings per row."""
        return self.crow[1:].long() - self.crow[:-1].long()

    def plan_blocks(self, row_counts: torch.Tensor | None = None, tile_cols: int | None = None,
                    min_blocks: int = 1, max_ratings: int | None = None, workers=None) -> None:
        """Cut the rows into blocks of at most ``BLOCK_ROWS`` rows and ``BLOCK_RATINGS`` ratings
        (or ``max_ratings``; a row with more ratings is a block of its own), and into
        ``min_blocks`` or more while each keeps ``MIN_BLOCK_RATINGS``. Ranks holding shards of one matrix pass the
        all-reduced ``row_counts``, so that every rank cuts at the same rows.

        With ``tile_cols``, each block's ratings are also regrouped by ranges of that many
        columns (tiles): a product then reads one range of the column-side table at a time,
        which stays in the cache when the whole table would not. Plan once, before the first
        product: tiling reorders the ratings.
        """
        if self.plan is not None and any(len(block[4]) > 1 for block in self.plan):
            raise RuntimeError("this matrix is already tiled: plan its blocks once")
        n_rows = self.shape[0]
        counts = (row_counts if row_counts is not None else self.row_counts()).cpu().long()
        total = int(counts.sum())
        per_block = min(max_ratings or BLOCK_RATINGS, max(MIN_BLOCK_RATINGS, -(-total // max(min_blocks, 1))))
        if n_rows <= BLOCK_ROWS and total <= per_block:
            self.block_starts = [0, n_rows]
        else:
            ends = torch.cumsum(counts, 0)
            starts, first = [], 0
            while first < n_rows:
                before = int(ends[first - 1]) if first else 0
                fits = int(torch.searchsorted(ends, before + per_block, right=True))
                starts.append(first)
                first = min(first + BLOCK_ROWS, max(fits, first + 1))
            self.block_starts = starts + [n_rows]
        tiled = tile_cols is not None and 0 < tile_cols < self.shape[1]
        # Tile-local column indices fit two bytes when tiles are at most 2^16 columns wide
        # (the by-movie matrix of 25M ratings: 50 MB less than int32).
        compact = tiled and self.cols.dtype != torch.uint16 and self.cols.device.type == "cpu" and \
            tile_cols <= 2**16 and len(self.cols) > BLOCK_RATINGS
        cols_out = torch.empty(len(self.cols), dtype=torch.uint16) if compact else self.cols

        def block(first: int, last: int) -> tuple:  # first and last row, first and last rating, tiles
            lo, hi = int(self.crow[first]), int(self.crow[last])
            if not tiled:
                return first, last, lo, hi, [(self.crow[first:last + 1] - lo, 0, hi - lo, 0, self.shape[1])]
            # Blocks regroup their own ratings: the workers' writes never meet.
            tiles = self._tile(first, last, int(tile_cols), cols_out)
            if len(self.cols) > BLOCK_RATINGS:
                # The block's temporaries, else kept by the allocator (at 25M ratings the
                # by-movie matrix's regrouping peaked 135 MB higher; 106 MB on two workers).
                release_free_memory()
            return first, last, lo, hi, tiles

        plan = _map(workers, block, zip(self.block_starts[:-1], self.block_starts[1:]))
        self.plan, self.cols = plan, cols_out
        # The pattern products' values, one float a rating of the largest block, shared by the blocks.
        self.ones = torch.ones(max(hi - lo for _, _, lo, hi, _ in plan), device=self.cols.device)

    @staticmethod
    def tile_width(table_width: int, element_size: int = 4) -> int:
        """Columns per tile for products with tables ``table_width`` elements wide."""
        return max(1024, TILE_BYTES // (table_width * element_size))

    def _tile(self, first: int, last: int, width: int, cols_out: torch.Tensor) -> list:
        """Regroup rows ``first:last``'s ratings by column range (stable: rows stay in order),
        writing tile-local column indices into ``cols_out``; returns each tile's (row
        pointers, first and last rating, first and last column).

        A counting placement, ``TILE_CHUNK`` ratings at a time: its temporaries are a chunk's,
        a copy of the block's rating codes (and of its column indices when they are regrouped
        in place) and a count per tile and row."""
        lo, hi = int(self.crow[first]), int(self.crow[last])
        n_rows, device = last - first, self.cols.device
        n_tiles = (self.shape[1] + width - 1) // width
        row_ends = self.crow[first + 1:last + 1].long() - lo
        row_starts = self.crow[first:last].long() - lo
        # Regrouping in place overwrites what later chunks read: those read a copy.
        source = self.cols[lo:hi].clone() if cols_out is self.cols else self.cols[lo:hi]
        starts = range(0, hi - lo, TILE_CHUNK)

        def chunk(start):
            cols = source[start:start + TILE_CHUNK].to(torch.int32)
            return cols, torch.div(cols, width, rounding_mode="floor")

        per_tile_rows = torch.zeros(n_tiles * n_rows, dtype=torch.long, device=device)
        for start in starts:
            _, tile = chunk(start)
            end = start + len(tile)
            in_chunk = row_ends.clamp(start, end) - row_starts.clamp(start, end)
            rows = torch.repeat_interleave(torch.arange(n_rows, device=device), in_chunk, output_size=len(tile))
            per_tile_rows += torch.bincount(tile.long() * n_rows + rows, minlength=n_tiles * n_rows)
        per_tile_rows = per_tile_rows.view(n_tiles, n_rows)
        tile_counts = per_tile_rows.sum(1)
        free = torch.cumsum(tile_counts, 0) - tile_counts  # next free slot of each tile
        codes = self.ratings[lo:hi].clone()
        origin = self.origin[lo:hi].clone() if self.origin is not None else None
        # uint16 has no index_put: write through an int16 view (same bits).
        two_bytes = cols_out.dtype == torch.uint16
        out = cols_out[lo:hi].view(torch.int16) if two_bytes else cols_out[lo:hi]
        every_tile = torch.arange(n_tiles, dtype=torch.int32, device=device)
        for start in starts:
            cols, tile = chunk(start)
            ordered, order = torch.sort(tile, stable=True)
            # A rating's place: its tile's next free slot plus its rank among the chunk's in that tile.
            shift = free - torch.searchsorted(ordered, every_tile)
            dest = shift[ordered.long()] + torch.arange(len(order), device=device)
            local = (cols - tile * width)[order]
            out[dest] = local.to(torch.uint16).view(torch.int16) if two_bytes else local.to(out.dtype)
            self.ratings[lo:hi][dest] = codes[start:start + len(order)][order]
            if origin is not None:
                self.origin[lo:hi][dest] = origin[start:start + len(order)][order]
            free += torch.bincount(ordered, minlength=n_tiles)
        tiles, start = [], 0
        for t, count in enumerate(tile_counts.tolist()):
            if count:
                crow = torch.zeros(n_rows + 1, dtype=self.crow.dtype, device=device)
                torch.cumsum(per_tile_rows[t], 0, out=crow[1:])
                tiles.append((crow, start, start + count, t * width, min((t + 1) * width, self.shape[1])))
            start += count
        if not tiles:  # rows without ratings (a shard's): one empty tile, so products are zeros
            tiles.append((torch.zeros(n_rows + 1, dtype=self.crow.dtype, device=device), 0, 0, 0,
                          min(width, self.shape[1])))
        return tiles

    def blocks(self):
        """(first row, :class:`Block` of rows) pairs sharing this matrix's storage."""
        if self.plan is None:
            self.plan_blocks()
        for first, last, lo, hi, tiles in self.plan:
            yield first, Block(self.cols[lo:hi], self.ratings[lo:hi], self.scale, (last - first, self.shape[1]), tiles,
                               self.ones, lo)

    def whole(self) -> "Block":
        """The whole matrix as one block (it must not be tiled)."""
        if self.plan is not None and any(len(block[4]) > 1 or block[4][0][3] for block in self.plan):
            raise RuntimeError("a tiled matrix is only read block by block")
        return Block(self.cols, self.ratings, self.scale, self.shape, [(self.crow, 0, len(self.cols), 0, self.shape[1])])

    def pattern_product(self, table: torch.Tensor) -> torch.Tensor:
        return self.whole().pattern_product(table)

    def residual_product(self, offset: float, col_bias: torch.Tensor, table: torch.Tensor) -> tuple:
        return self.whole().residual_product(offset, col_bias, table)


class Block:
    """Rows of a :class:`Csr` solved together, in column tiles, and the products ALS needs.

    A tile is (row pointers, first and last of the block's ratings, first and last column);
    its column indices count from the tile's first column, so it multiplies a slice of the
    column-side table. An untiled block is one tile. ``slots`` are its ratings' places in the
    matrix's storage.
    """

    def __init__(self, cols, ratings, scale: float, shape: tuple, tiles: list, ones: torch.Tensor | None = None,
                 first_slot: int = 0):
        # Two-byte column indices are widened once per block: a solver multiplies it many times.
        self.cols = cols.to(tiles[0][0].dtype) if cols.dtype == torch.uint16 else cols
        self.ratings, self.scale, self.shape, self.tiles = ratings, scale, shape, tiles
        self.ones = ones  # a read-only vector of ones at least as long, shared by the blocks (or None)
        self.slots = slice(first_slot, first_slot + len(cols))

    def pattern_product(self, table: torch.Tensor) -> torch.Tensor:
        """Per row, the sum of ``table`` rows over that row's rated columns."""
        # The matrix's shared ones (as long as its largest block) where their type fits the table's.
        ones = self.ones[:len(self.cols)] if self.ones is not None and self.ones.dtype == table.dtype else \
            torch.ones(len(self.cols), dtype=table.dtype, device=table.device)
        return self.product(ones, table)

    def residual_product(self, offset: float, col_bias: torch.Tensor, table: torch.Tensor) -> tuple:
        """(per row: sum of ``(r - offset - col_bias[col]) * table[col]``, total squared residual)."""
        values = self.residuals(offset, col_bias)
        return self.product(values, table), torch.dot(values, values)

    def residuals(self, offset: float, col_bias: torch.Tensor) -> torch.Tensor:
        """Per rating (in storage order), ``r - offset - col_bias[col]``."""
        values = self.gather(col_bias).neg_().sub_(offset)
        if self.ratings.dtype == values.dtype or values.device.type != "cpu":
            return values.add_(self.ratings, alpha=self.scale)
        # One-byte codes are cast a chunk at a time: adding them at once makes a float copy of them all.
        for start in range(0, len(values), BUILD_CHUNK):
            values[start:start + BUILD_CHUNK].add_(self.ratings[start:start + BUILD_CHUNK], alpha=self.scale)
        return values

    def gather(self, col_values: torch.Tensor) -> torch.Tensor:
        """Per rating, ``col_values[col]``."""
        out = torch.empty(len(self.cols), dtype=col_values.dtype, device=col_values.device)
        for _, start, end, first, last in self.tiles:
            torch.index_select(col_values[first:last], 0, self.cols[start:end], out=out[start:end])
        return out

    def spread(self, row_values: torch.Tensor) -> torch.Tensor:
        """Per rating (in storage order), its row's value of ``row_values``."""
        out = torch.empty(len(self.cols), dtype=row_values.dtype, device=row_values.device)
        for crow, start, end, _, _ in self.tiles:
            out[start:end] = torch.repeat_interleave(row_values, crow[1:] - crow[:-1], output_size=end - start)
        return out

    def product(self, values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Per row, the sum over its ratings of ``values * table[col]`` (sparse-dense products)."""
        # Accumulated in place: ``sparse @ dense`` would zero a result, compute into another
        # and copy it over (three passes over a block's rows x D floats, a tile).
        out = torch.zeros(self.shape[0], table.shape[1], dtype=table.dtype, device=table.device)
        for crow, start, end, first, last in self.tiles:
            out.addmm_(self._matrix(crow, start, end, values, last - first), table[first:last])
        return out

    def row_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per row, the sum of ``values`` (one per rating) over its ratings."""
        return self.product(values, torch.ones(self.shape[1], 1, dtype=values.dtype, device=values.device))[:, 0]

    def dots(self, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
        """Per rating, the dot product of its row of ``rows`` (n_rows, D) with its column of
        ``cols_t`` (D, n_cols): sampled dense-dense products, never the rows x columns matrix."""
        out = torch.zeros(len(self.cols), dtype=rows.dtype, device=rows.device)  # (beta=0 still reads them)
        for crow, start, end, first, last in self.tiles:
            if end - start > self.shape[0] * (last - first):
                # torch sizes a sampled product's result to the matrix's cells (writing past
                # them with out=; refusing without): only repeated pairs hold more ratings.
                raise ValueError("the ratings hold a (row, column) pair more than once: rate each pair once")
            # Written into ``out`` through a matrix on its slice: no copy of the tile's indices.
            tile = self._matrix(crow, start, end, out, last - first)
            torch.sparse.sampled_addmm(tile, rows, cols_t[:, first:last], beta=0.0, out=tile)
        return out

    def _matrix(self, crow, start: int, end: int, values: torch.Tensor, n_cols: int) -> torch.Tensor:
        return torch.sparse_csr_tensor(crow, self.cols[start:end], values[start:end], (self.shape[0], n_cols),
                                       check_invariants=False)


def _fill(out_cols, out_codes, out_origin, rows, cols, ratings, crow, scale, workers=None) -> None:
    """Write columns and rating codes (and, unless ``out_origin`` is None, each one's input
    position) in row order (stable: equal rows keep their input order).

    Input sorted by row (prepared data is, by user) is copied as is; otherwise a counting sort
    places each chunk's ratings at its rows' next free slots, without an n-sized permutation.
    Each worker places one contiguous part of the input, from slots that follow the earlier
    parts' ratings of each row: the same result as one pass.
    """
    n = len(ratings)
    in_order = n < 2 or bool(torch.all(rows[1:] >= rows[:-1]))
    parts = min(workers.n if workers is not None else 1, max(1, n // (BLOCK_RATINGS // 2)))
    bounds = [n * p // parts for p in range(parts + 1)]
    fill = crow[:-1].clone()  # next free slot of each row, for each part in turn
    fills = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        fills.append(fill.clone() if not in_order else None)
        if not in_order and end < n:
            fill += torch.bincount(rows[start:end].to(torch.long), minlength=len(fill))
    _map(workers, functools.partial(_fill_part, out_cols, out_codes, out_origin, rows, cols, ratings, scale, in_order),
         zip(bounds[:-1], bounds[1:], fills))


def _fill_part(out_cols, out_codes, out_origin, rows, cols, ratings, scale, in_order, begin, end, fill) -> None:
    """:func:`_fill` of input ratings ``begin:end``, from ``fill`` (each row's first free slot)."""
    # uint16 has no index_put: write through an int16 view (same bits).
    cols_out = out_cols.view(torch.int16) if out_cols.dtype == torch.uint16 else out_cols
    for start in range(begin, end, BUILD_CHUNK):
        part = slice(start, min(start + BUILD_CHUNK, end))
        if in_order:
            out_cols[part] = cols[part]
            out_codes[part] = ratings[part] / scale
            if out_origin is not None:
                torch.arange(part.start, part.stop, dtype=out_origin.dtype, device=rows.device, out=out_origin[part])
            continue
        chunk_rows = rows[part].to(torch.long)
        order = torch.argsort(chunk_rows, stable=True)
        sorted_rows = chunk_rows[order]
        rank = torch.arange(len(order), device=rows.device) - torch.searchsorted(sorted_rows, sorted_rows)
        dest = fill[sorted_rows] + rank
        cols_out[dest] = cols[part][order].to(out_cols.dtype).view(cols_out.dtype)
        out_codes[dest] = (ratings[part][order] / scale).to(out_codes.dtype)
        if out_origin is not None:
            out_origin[dest] = (order + start).to(out_origin.dtype)
        fill += torch.bincount(chunk_rows, minlength=len(fill))


def _map(workers, fn, items) -> list:
    """``fn(*item)`` for each item, on ``workers`` (:class:`mfrec.training.parallel.Workers`) if given."""
    return workers.map(fn, items) if workers is not None else [fn(*item) for item in items]


def _half_stars(ratings: torch.Tensor) -> bool:
    """Whether every rating is a multiple of 0.5 in [0, 127.5] (one byte per rating then)."""
    for start in range(0, len(ratings), BUILD_CHUNK):
        twice = ratings[start:start + BUILD_CHUNK] * 2
        if not (torch.all(twice == torch.round(twice)) and twice.min() >= 0 and twice.max() <= 255):
            return False
    return len(ratings) > 0
