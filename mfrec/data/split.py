"""Train/validation/test splits of a ratings table.

``test_fraction`` is the share of all ratings held out for test; ``val_fraction`` the share of the
remaining ratings held out for validation (defaults give 72/8/20). Outputs are sorted by
(userId, movieId) with a fresh index, so equal inputs and seed give identical frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mfrec.data.ids import distinct
from mfrec.errors import ConfigError

METHODS = ("random", "temporal")


@dataclass(frozen=True)
class SplitConfig:
    """How ratings are split, checked when made.

    ``method``: ``random`` (a seeded permutation of all ratings) or ``temporal`` (per user, the
    latest ratings go to test and the next latest to validation; ties by movieId).
    ``test_fraction`` is the share of all ratings held out for test, ``val_fraction`` the share
    of the rest held out for validation; ``seed`` seeds the random method.
    """

    method: str = "random"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"split must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            try:
                f = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}") from None
            if not (math.isfinite(f) and 0.0 <= f < 1.0):
                raise ConfigError(f"{name} must be in [0, 1) so that training data remains, got {value!r}")
            object.__setattr__(self, name, f)
        try:
            seed = int(str(self.seed).strip())
        except ValueError:
            raise ConfigError(f"seed must be an integer, got {self.seed!r}") from None
        if not 0 <= seed < 2**63:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", seed)

    def as_dict(self) -> dict:
        return asdict(self)


def split_ratings(ratings: pd.DataFrame, config: SplitConfig = SplitConfig()
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split ratings into (train, val, test), each with the input's columns and dtypes,
    sorted by (userId, movieId).

    Raises:
        ConfigError: no ratings left for training.
    """
    if config.method == "random":
        part = _random_parts(len(ratings), config.test_fraction, config.val_fraction, config.seed)
    else:
        part = _temporal_parts(ratings, config.test_fraction, config.val_fraction)
    if len(ratings) and not (part == 0).any():
        raise ConfigError(
            f"split leaves no training ratings ({len(ratings)} ratings, "
            f"test_fraction={config.test_fraction}, val_fraction={config.val_fraction})"
        )
    return tuple(_sorted(ratings, part == p) for p in (0, 1, 2))  # type: ignore[return-value]


def _random_parts(n: int, test_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """Part per row: 0 train, 1 val, 2 test."""
    n_test = _round_half_up(n * test_fraction)
    n_val = _round_half_up((n - n_test) * val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    part = np.zeros(n, dtype=np.int8)
    part[perm[:n_test]] = 2
    part[perm[n_test:n_test + n_val]] = 1
    return part


def _temporal_parts(ratings: pd.DataFrame, test_fraction: float,
                    val_fraction: float) -> np.ndarray:
    users = ratings["userId"].to_numpy()
    order = _user_time_order(users, ratings["timestamp"].to_numpy(), ratings["movieId"].to_numpy())
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]]) if len(su) else np.empty(0, int)
    counts = np.diff(np.r_[starts, len(su)])
    n_test = _round_half_up(counts * test_fraction)
    n_val = _round_half_up((counts - n_test) * val_fraction)
    # Keep at least one training rating per user: shrink validation first, then test.
    excess = np.maximum(n_test + n_val - (counts - 1), 0)
    cut_val = np.minimum(excess, n_val)
    n_val -= cut_val
    n_test -= excess - cut_val
    # Position from each user's end: 0 is the latest rating.
    from_end = np.repeat(starts + counts, counts) - 1 - np.arange(len(su))
    t, v = np.repeat(n_test, counts), np.repeat(n_val, counts)
    part_sorted = np.where(from_end < t, 2, np.where(from_end < t + v, 1, 0)).astype(np.int8)
    part = np.empty(len(su), dtype=np.int8)
    part[order] = part_sorted
    return part


def _user_time_order(u: np.ndarray, t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row order by (userId, timestamp, movieId)."""
    if len(u) < 2:
        return np.arange(len(u))
    in_order = ((u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (m[1:] >= m[:-1]))).all()
    t_rel = t.astype(np.int64) - t.min()
    if in_order and t_rel.max() < 2**32:
        # Rows already in (user, movie) order: a stable sort on one (user, time) key keeps movie
        # order within ties, and is faster than a three-key lexsort at scale.
        u_idx = np.cumsum(np.r_[0, u[1:] != u[:-1]], dtype=np.int64)
        return np.argsort((u_idx << 32) | t_rel, kind="stable")
    return np.lexsort((m, t, u))


def _round_half_up(x):
    # Half-up rather than numpy's half-to-even, so 0.5 of a rating always rounds the same way.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _sorted(ratings: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    sub = ratings.loc[mask]
    u, m = sub["userId"].to_numpy(), sub["movieId"].to_numpy()
    # Parsed and generated ratings are already in (userId, movieId) order: skip a 25M-row sort.
    in_order = (u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (m[1:] >= m[:-1]))
    if not in_order.all():
        sub = sub.take(np.lexsort((m, u)))
    return sub.reset_index(drop=True)


def unseen_report(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> dict[str, int]:
    """Count validation/test ratings whose user or movie never appears in train.

    Returns:
        ``{val,test}_unseen_users`` (ratings by users absent from train),
        ``{val,test}_unseen_movies`` (ratings of movies absent from train),
        ``{val,test}_unseen_any`` (either).
    """
    users = distinct(train["userId"].to_numpy())
    movies = distinct(train["movieId"].to_numpy())
    out: dict[str, int] = {}
    for name, df in (("val", val), ("test", test)):
        u = ~np.isin(df["userId"].to_numpy(), users)
        m = ~np.isin(df["movieId"].to_numpy(), movies)
        out[f"{name}_unseen_users"] = int(u.sum())
        out[f"{name}_unseen_movies"] = int(m.sum())
        out[f"{name}_unseen_any"] = int((u | m).sum())
    return out
