"""Training on shards of users: each rank of a torch.distributed group holds only its users' ratings.

A rank's users are numbered locally: its row ``j`` is row ``users[j]`` of the whole training
set's user index. The items are every rank's. With the items fixed, a user's system needs
only that user's ratings, so each rank solves its own users alone. An item's system sums
over the users who rated it, who live on every rank: the item step all-reduces its
per-item sums (and the choice term's Gramian over every user), so every rank solves the
same item systems that one process would, up to the order of float additions.

Per sweep the ranks exchange only item-sized sums (:func:`all_reduce` counts the bytes); the
user tables never travel until the end (:meth:`Shard.gather`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mfrec.data.ids import distinct


@dataclass
class Traffic:
    """Bytes this process has all-reduced (each call's tensor sizes), and how many calls."""

    bytes: int = 0
    calls: int = 0


TRAFFIC = Traffic()


def all_reduce(*tensors: torch.Tensor) -> tuple:
    """Sum each tensor over the ranks of the initialised process group, in place."""
    for t in tensors:
        torch.distributed.all_reduce(t)
        TRAFFIC.bytes += t.numel() * t.element_size()
        TRAFFIC.calls += 1
    return tensors


def union(ids: np.ndarray) -> np.ndarray:
    """The sorted distinct ids of every rank's ``ids`` (each rank gets them): how the ranks
    agree on one user and one item index without reading each other's ratings."""
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, distinct(np.asarray(ids, dtype=np.int64)))
    return distinct(np.concatenate(out))


@dataclass
class Shard:
    """This rank's place in the group: which users of the whole training set it holds."""

    rank: int
    world: int
    users: np.ndarray  # int64: the global user row of each local row, ascending
    n_users: int  # users of the whole training set

    @classmethod
    def current(cls, users: np.ndarray, n_users: int) -> "Shard":
        return cls(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                   np.asarray(users, dtype=np.int64), int(n_users))

    def device(self) -> str:
        return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"

    def total(self, *values: float) -> list[float]:
        """Each value summed over the ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device())
        torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def sum(self, array: np.ndarray) -> np.ndarray:
        """A numpy array (same shape on every rank) summed over the ranks, as float64."""
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(self.device())
        torch.distributed.all_reduce(t)
        return t.cpu().numpy()

    def gather(self, value):
        """Every rank's ``value`` on rank 0 (a list in rank order; None elsewhere)."""
        out = [None] * self.world if self.rank == 0 else None
        torch.distributed.gather_object(value, out, dst=0)
        return out
