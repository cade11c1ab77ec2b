"""The rating matrices an ALS fit builds once: by user and by movie, their blocks planned for
the solve and the workers, and for CG the link between their orders."""

from __future__ import annotations

import torch

from mfrec.training import csr as csr_module
from mfrec.training.csr import Csr
from mfrec.training.shards import Shard, all_reduce


def table_width(config, side: str) -> int:
    """Columns of the widest table a step of ``side`` multiplies its ratings with."""
    k, implicit = config.n_factors, config.implicit_weight > 0
    if config.solve == "cg":
        return k + 1
    if side == "users":
        return (k + 1) * (k + 2) // 2 + (k if implicit else 0)
    return k * (k + 1) // 2 + (2 * k if implicit else k) + 1


def build_matrices(users, items, ratings, n_users: int, n_items: int, config, shard: Shard | None, workers) -> tuple:
    """(by-user matrix, by-movie matrix, (ratings per user, per movie), for CG the by-user
    place of each rating of the by-movie matrix's storage, else None), blocks planned.

    With ``shard`` (this rank's users), the movies' counts are every rank's."""
    linked = config.solve == "cg"
    matrices, counts, place = [], [], None
    for side in ("users", "items"):
        # One matrix at a time, and the by-user one's origins folded into ``place`` before
        # the other's exist: CG's link costs the build 8 bytes a rating at its peak.
        rows_, cols_, n_rows, n_cols = (users, items, n_users, n_items) if side == "users" else \
            (items, users, n_items, n_users)
        csr = Csr(rows_, cols_, ratings, n_rows, n_cols, workers, origin=linked)
        rows = csr.row_counts()
        if shard and side == "items":
            # Ranks cut the items into the same blocks (their block sums are all-reduced
            # pairwise) and penalise them alike: by the whole matrix's counts.
            rows = all_reduce(rows)[0]
        # Tiles pay off where the table a product gathers from outgrows the CPU's cache.
        tile = Csr.tile_width(table_width(config, side)) if ratings.device.type == "cpu" else None
        # At least a few blocks per worker (when big enough), so that a worker slowed by other
        # work on its core leaves the rest to the others; the blocks in flight together hold
        # as many ratings as one block of a single worker.
        csr.plan_blocks(rows if shard and side == "items" else None, tile,
                        min_blocks=4 * workers.n if workers.n > 1 else 1,
                        max_ratings=(csr_module.CG_BLOCK_RATINGS if linked else csr_module.BLOCK_RATINGS) // workers.n,
                        workers=workers)
        matrices.append(csr)
        counts.append(rows)
        if linked and side == "users":
            place = torch.empty_like(csr.origin)  # each input rating's place in the by-user matrix
            for start, chunk in _chunks(csr.origin):
                place.index_copy_(0, chunk.long(), torch.arange(start, start + len(chunk), dtype=place.dtype,
                                                                 device=place.device))
            csr.origin = None
    by_user, by_item = matrices
    link = None
    if linked:  # the by-movie matrix's origins become their by-user places, in place
        link, by_item.origin = by_item.origin, None
        for _, chunk in _chunks(link):
            chunk.copy_(place.index_select(0, chunk))
    return by_user, by_item, tuple(counts), link


def _chunks(values: torch.Tensor):
    """(first index, view) of ``values`` a build chunk at a time."""
    step = csr_module.BUILD_CHUNK
    return ((start, values[start:start + step]) for start in range(0, len(values), step))
