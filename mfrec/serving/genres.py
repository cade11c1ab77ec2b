"""Genre taste: a naive-Bayes score from the genres of the films a user rated.

At 8 factors a user's vectors miss much of what their genres say: five 5-star Pixar films
fold in next to the 2000s family blockbusters. Each genre is a coin: a rated film counts
``(r - low) / (high - low)`` of a vote for each of its genres; all training votes give
everyone's rate ``b_g``, a user's own votes their rate, shrunk towards ``b_g`` by ``prior``
pseudo-films. A film's
genre score is the Bernoulli log-likelihood ratio of its genre set under the user's rates
against the base rates: the genres it has count, and so do the ones it lacks. The
user-constant part of that ratio is dropped, as it cannot change a ranking. Ranking adds
the score, times a weight chosen on validation, to the factor model's (mfrec/serving/scoring.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NO_GENRE = "(no genres listed)"
# Keeps log() finite for a genre every (or no) training rating touches.
_EPS = 1e-6


def genre_matrix(genres: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Genre names and the item x genre 0/1 matrix of MovieLens ``A|B|C`` genre strings."""
    split = [str(s).split("|") for s in genres]
    names = sorted({g for parts in split for g in parts if g and g != NO_GENRE})
    column = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(split), len(names)), np.float32)
    for i, parts in enumerate(split):
        for g in parts:
            if g in column:
                matrix[i, column[g]] = 1.0
    return names, matrix


def base_rates(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Everyone's rates: the share of all training votes (as :func:`votes` counts them) that
    fall on films of each genre. Measured like a user's own rates, so a user whose films
    mix genres like everyone's has no taste."""
    rates = np.asarray(counts, np.float64).sum(0) / max(float(np.asarray(total, np.float64).sum()), 1e-12)
    return np.clip(rates, _EPS, 1 - _EPS)


# Ratings per pass when summing votes: bounds the temporaries at about a hundred MB at any scale.
_CHUNK = 1 << 22


def votes(matrix: np.ndarray, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int,
          rating_range) -> tuple[np.ndarray, np.ndarray]:
    """Per user (rows), the rating-weighted count of their films in each genre, and their
    total weight. ``users`` are rows ``0..n_users-1`` and ``items`` item rows, one per rating.

    A rating counts ``(r - low) / (high - low)`` of a film: a top rating is a whole vote for
    the film's genres, the lowest none.
    """
    from scipy import sparse

    low, high = float(rating_range[0]), float(rating_range[1])
    if not low < high:
        raise ValueError(f"rating_range must be (low, high) with low < high, got {rating_range}")
    counts = np.zeros((n_users, matrix.shape[1]))
    total = np.zeros(n_users)
    for start in range(0, len(users), _CHUNK):
        u = np.asarray(users[start:start + _CHUNK], dtype=np.int64)
        weight = np.clip((np.asarray(ratings[start:start + _CHUNK], np.float64) - low) / (high - low), 0.0, 1.0)
        total += np.bincount(u, weights=weight, minlength=n_users)
        # (users x films) weights times (films x genres): a sparse product, not a gather per rating.
        films = sparse.csr_matrix((weight, (u, np.asarray(items[start:start + _CHUNK], dtype=np.int64))),
                                  shape=(n_users, len(matrix)))
        counts += films @ matrix  # float64: the weights' type
    return counts.astype(np.float32), total.astype(np.float32)


def taste(counts: np.ndarray, total: np.ndarray, rates: np.ndarray, prior: float) -> np.ndarray:
    """Per user (rows) and genre, the score a film gains for having that genre.

    ``counts`` and ``total`` come from :func:`votes`; ``prior`` pseudo-films of the base
    mix shrink a user's rates, so a user with few votes has almost no taste.
    """
    rate = (counts.astype(np.float64) + prior * rates) / (total.astype(np.float64)[:, None] + prior)
    return (np.log(rate / rates) - np.log((1 - rate) / (1 - rates))).astype(np.float32)
