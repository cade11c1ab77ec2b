"""Seeded MovieLens-shaped ratings with a planted low-rank, genre-driven taste structure.

Shape: movie popularity and user activity are long-tailed (Zipf-like with an offset, so the head
is not absurdly steep), every user has at least 20 ratings when the budget allows (as in
MovieLens), ratings are half stars 0.5-5.0, timestamps span 1996-2018, and each (user, movie)
pair is rated at most once.

Taste: each movie has 1-3 genres; its factor vector is the mean of its genres' vectors plus a
little noise, so movies that share genres sit close together and a model's embeddings should
cluster by genre. A rating is ``mean + user_bias + item_bias + user·item + noise``, rounded to
half stars and clipped. The planted parts are returned so tests can check that a model recovers
them.

Everything is vectorised numpy in blocks of users (about ``block_ratings`` ratings each), so
memory stays a small multiple of the final arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfrec.errors import ConfigError

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
# Roughly MovieLens' genre frequencies: drama and comedy dominate, film-noir is rare.
_GENRE_WEIGHTS = np.array(
    [7, 5, 2, 3, 14, 5, 2, 17, 3, 0.5, 4, 1.5, 2.5, 6, 3.5, 7, 1.5, 1], dtype=np.float64
)
RATING_MIN, RATING_MAX, RATING_STEP = 0.5, 5.0, 0.5
MIN_RATINGS_PER_USER = 20
_T0 = 820_454_400  # 1996-01-01
_T1 = 1_537_747_200  # 2018-09-24
_FILL_ROUNDS = 8


@dataclass
class SyntheticData:
    """Generated ratings and movies plus the planted structure behind them.

    Row ``i`` of the per-user arrays belongs to userId ``i + 1``; row ``j`` of the per-movie
    arrays to movieId ``j + 1``.
    """

    ratings: pd.DataFrame
    movies: pd.DataFrame
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_mean: float
    noise_sd: float
    item_genres: np.ndarray
    genre_names: tuple[str, ...] = GENRES

    def true_ratings(self, user_ids, movie_ids) -> np.ndarray:
        """Noise-free planted scores (before rounding and clipping) for id pairs."""
        u = np.asarray(user_ids, dtype=np.int64) - 1
        m = np.asarray(movie_ids, dtype=np.int64) - 1
        dot = np.einsum("ij,ij->i", self.user_factors[u], self.item_factors[m])
        return (self.global_mean + self.user_bias[u] + self.item_bias[m] + dot).astype(np.float32)


def generate(n_ratings: int, n_users: int, n_movies: int, seed: int = 0, rank: int = 8,
             noise_sd: float = 0.5, interaction_sd: float = 0.6,
             block_ratings: int = 4_000_000) -> SyntheticData:
    """Generate a seeded synthetic dataset; same arguments give identical output.

    Args:
        n_ratings: exact number of ratings (distinct user-movie pairs).
        n_users, n_movies: sizes; userIds are 1..n_users, movieIds 1..n_movies. Users or
            movies may end up with no ratings (as in MovieLens' catalogue).
        seed: seed for ``numpy.random.default_rng``.
        rank: dimension of the planted factors.
        noise_sd: standard deviation of per-rating noise before rounding.
        interaction_sd: standard deviation of the planted user·item term.
        block_ratings: ratings generated per block (memory bound, not a result parameter).

    Raises:
        ConfigError: sizes that cannot hold ``n_ratings`` distinct pairs, or non-positive sizes.
    """
    _check_sizes(n_ratings, n_users, n_movies, rank)
    rng = np.random.default_rng(seed)
    item_genres = _movie_genres(rng, n_movies)
    user_factors, item_factors = _factors(rng, item_genres, n_users, rank, interaction_sd)
    popularity = _zipf_weights(n_movies, offset=min(max(1.0, 0.005 * n_movies), 50.0))
    popularity = popularity[rng.permutation(n_movies)]  # popularity unrelated to movieId
    user_bias = rng.normal(0.0, 0.35, n_users).astype(np.float32)
    log_pop = np.log(popularity)
    item_bias = (rng.normal(0.0, 0.3, n_movies)
                 + 0.15 * (log_pop - log_pop.mean()) / (log_pop.std() or 1.0)).astype(np.float32)
    counts = _user_counts(rng, n_ratings, n_users, n_movies)
    users, movies = _sample_pairs(rng, counts, popularity, block_ratings)
    data = SyntheticData(
        ratings=pd.DataFrame(), movies=_movies_frame(rng, item_genres),
        user_factors=user_factors, item_factors=item_factors, user_bias=user_bias,
        item_bias=item_bias, global_mean=3.35, noise_sd=float(noise_sd), item_genres=item_genres,
    )
    ratings = np.empty(len(users), dtype=np.float32)
    for lo in range(0, len(users), block_ratings):
        hi = min(lo + block_ratings, len(users))
        score = data.true_ratings(users[lo:hi] + 1, movies[lo:hi] + 1)
        score += rng.normal(0.0, noise_sd, hi - lo).astype(np.float32)
        ratings[lo:hi] = np.clip(np.round(score / RATING_STEP) * RATING_STEP,
                                 RATING_MIN, RATING_MAX)
    data.ratings = pd.DataFrame({
        "userId": (users + 1).astype(np.int32),
        "movieId": (movies + 1).astype(np.int32),
        "rating": ratings,
        "timestamp": _timestamps(rng, users, n_users),
    })
    return data


def _check_sizes(n_ratings: int, n_users: int, n_movies: int, rank: int) -> None:
    if min(n_ratings, n_users, n_movies, rank) < 1:
        raise ConfigError(
            f"synthetic sizes must be positive: n_ratings={n_ratings}, n_users={n_users}, "
            f"n_movies={n_movies}, rank={rank}"
        )
    if n_ratings > n_users * n_movies:
        raise ConfigError(
            f"{n_ratings:,} distinct ratings do not fit {n_users:,} users x {n_movies:,} movies"
        )
    if max(n_users, n_movies) >= 2**31 - 1:
        raise ConfigError("synthetic ids must fit int32")


def _zipf_weights(n: int, offset: float, exponent: float = 1.0) -> np.ndarray:
    w = (np.arange(n, dtype=np.float64) + offset) ** -exponent
    return w / w.sum()


def _movie_genres(rng: np.random.Generator, n_movies: int) -> np.ndarray:
    p = _GENRE_WEIGHTS / _GENRE_WEIGHTS.sum()
    genres = np.zeros((n_movies, len(GENRES)), dtype=bool)
    rows = np.arange(n_movies)
    genres[rows, rng.choice(len(GENRES), n_movies, p=p)] = True
    # Up to two more genres per movie; a repeat draw simply adds nothing.
    for share in (0.6, 0.3):
        extra = rows[rng.random(n_movies) < share]
        genres[extra, rng.choice(len(GENRES), len(extra), p=p)] = True
    return genres


def _factors(rng, item_genres, n_users, rank, interaction_sd):
    genre_vectors = rng.normal(0.0, 1.0, (item_genres.shape[1], rank))
    n_genres = item_genres.sum(axis=1, keepdims=True)
    items = (item_genres @ genre_vectors) / n_genres
    items += rng.normal(0.0, 0.3, items.shape)
    items /= items.std(axis=0, keepdims=True)  # unit variance per dimension
    users = rng.normal(0.0, interaction_sd / np.sqrt(rank), (n_users, rank))
    return users.astype(np.float32), items.astype(np.float32)


def _user_counts(rng, n_ratings: int, n_users: int, n_movies: int) -> np.ndarray:
    """Ratings per user: a floor of 20 (budget permitting) plus a Zipf-like share, capped."""
    floor = min(MIN_RATINGS_PER_USER, n_ratings // n_users, n_movies)
    cap = n_movies if n_ratings > n_users * (n_movies // 2) else max(floor, n_movies // 2)
    weights = _zipf_weights(n_users, offset=max(1.0, 0.01 * n_users))[rng.permutation(n_users)]
    counts = np.full(n_users, floor, dtype=np.int64)
    counts += rng.multinomial(n_ratings - counts.sum(), weights)
    # Users over the cap hand their excess to users with room, in proportion to their weight.
    while (over := counts - cap).max() > 0:
        counts = np.minimum(counts, cap)
        room = counts < cap
        w = np.where(room, weights, 0.0)
        counts += rng.multinomial(int(over[over > 0].sum()), w / w.sum())
    return counts


def _sample_pairs(rng, counts: np.ndarray, popularity: np.ndarray, block_ratings: int):
    """Distinct (user, movie) pairs with ``counts[u]`` movies per user, by popularity.

    Returns 0-based int32 user and movie indices sorted by user then movie.
    """
    n_movies = len(popularity)
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    ends = np.cumsum(counts)
    users_out, movies_out = [], []
    start = 0
    while start < len(counts):
        # Block of whole users: duplicates can only occur within a user, hence within a block.
        stop = int(np.searchsorted(ends, ends[start] - counts[start] + block_ratings, "right"))
        stop = max(stop, start + 1)
        keys = _block_keys(rng, counts[start:stop], start, cdf, n_movies)
        users_out.append((keys // n_movies).astype(np.int32))
        movies_out.append((keys % n_movies).astype(np.int32))
        start = stop
    return np.concatenate(users_out), np.concatenate(movies_out)


def _block_keys(rng, counts, first_user: int, cdf, n_movies: int) -> np.ndarray:
    """Sorted unique keys ``user * n_movies + movie`` for one block of users."""
    users = np.arange(first_user, first_user + len(counts), dtype=np.int64)

    def draw(u_rep: np.ndarray, uniform: bool) -> np.ndarray:
        if uniform:
            movies = rng.integers(0, n_movies, len(u_rep))
        else:
            movies = np.searchsorted(cdf, rng.random(len(u_rep)), side="right")
            movies = np.minimum(movies, n_movies - 1)
        return u_rep * n_movies + movies

    keys = _sorted_unique(draw(np.repeat(users, counts), uniform=False))
    extra = np.empty(0, dtype=np.int64)
    for round_ in range(_FILL_ROUNDS + 1):
        have = np.bincount(np.concatenate([keys, extra]) // n_movies - first_user,
                           minlength=len(counts))
        deficit = counts - have
        if not deficit.any():
            break
        needy = np.flatnonzero(deficit)
        if round_ == _FILL_ROUNDS:
            filled = _exact_fill(rng, keys, extra, users[needy], deficit[needy], n_movies)
            extra = _sorted_unique(np.concatenate([extra, filled]))
            break
        # Popularity draws first; switch to uniform ones when heavy users keep colliding.
        new = _sorted_unique(draw(np.repeat(users[needy], deficit[needy]), uniform=round_ >= 4))
        new = new[~_contains(keys, new) & ~_contains(extra, new)]
        extra = _sorted_unique(np.concatenate([extra, new]))
    return np.sort(np.concatenate([keys, extra])) if len(extra) else keys


def _exact_fill(rng, keys, extra, users, deficits, n_movies) -> np.ndarray:
    # Few users are left by now, so a per-user draw from the unrated movies is cheap.
    out = []
    taken_all = np.concatenate([keys, extra])
    for user, need in zip(users, deficits):
        lo, hi = user * n_movies, (user + 1) * n_movies
        taken = taken_all[(taken_all >= lo) & (taken_all < hi)] - lo
        free = np.setdiff1d(np.arange(n_movies), taken, assume_unique=True)
        out.append(lo + rng.choice(free, int(need), replace=False))
    return np.concatenate(out)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # np.unique hashes first on numpy 2.3+, slower than a plain sort here.
    a = np.sort(a)
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _contains(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def _timestamps(rng, users: np.ndarray, n_users: int) -> np.ndarray:
    """Each user rates in a window (a day to years) starting somewhere in 1996-2018."""
    span = np.minimum(np.exp(rng.normal(np.log(30 * 86_400), 2.0, n_users)), _T1 - _T0)
    start = _T0 + rng.random(n_users) * (_T1 - _T0 - span)
    out = np.empty(len(users), dtype=np.int64)
    block = 4_000_000
    for lo in range(0, len(users), block):
        u = users[lo:lo + block]
        out[lo:lo + block] = (start[u] + rng.random(len(u)) * span[u]).astype(np.int64)
    return out


def _movies_frame(rng, item_genres: np.ndarray) -> pd.DataFrame:
    n_movies = len(item_genres)
    ids = np.arange(1, n_movies + 1, dtype=np.int32)
    # Release years skew recent, as in MovieLens.
    years = np.clip(np.round(2018 - rng.exponential(18.0, n_movies)), 1920, 2018).astype(int)
    titles = "Synthetic Movie " + pd.Series(ids).astype(str) + " (" + pd.Series(years).astype(
        str) + ")"
    names = np.array(GENRES, dtype=object)
    genres = ["|".join(names[row]) for row in item_genres]  # movies are few next to ratings
    return pd.DataFrame({"movieId": ids, "title": titles.astype("str"),
                         "genres": pd.Series(genres, dtype="str")})
