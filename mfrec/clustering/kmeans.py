"""KMeans on movie embeddings, and how well the clusters line up with genres.

Genres are never an input: they only score the clusters afterwards. Defaults were chosen
by measurement on ml-latest-small (docs/clustering.md):

* ``normalize=True``: cluster directions (unit vectors), matching the cosine similarity the
  served ``similar`` task ranks by. A raw vector's length mostly tracks how much evidence the
  movie has, so raw KMeans partly sorts movies by popularity.
* ``min_ratings=10``: fit centroids only on movies with at least 10 training ratings. A
  rarely-rated movie's vector is mostly the prior, and thousands of them would spend clusters
  on noise. They are assigned to the nearest centroid afterwards (``fitted=False``) so every
  movie has a cluster; those assignments are weak (most land in one cluster).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from mfrec.errors import ConfigError, DataError

NO_GENRES = "(no genres listed)"
SILHOUETTE_SAMPLE = 5000
N_SHUFFLES = 20


@dataclass(frozen=True)
class ClusterConfig:
    """KMeans settings, checked when made (the module docstring says why these defaults).

    ``seed`` is KMeans' ``random_state``; it also seeds the silhouette sample and the shuffles.
    ``normalize``: cluster unit vectors (cosine geometry) instead of raw ones.
    ``min_ratings``: only movies with at least this many training ratings fit the centroids;
    the rest are assigned to the nearest centroid afterwards (0 fits on all).
    """

    n_clusters: int = 10
    seed: int = 0
    normalize: bool = True
    min_ratings: int = 10
    n_init: int = 10

    def __post_init__(self) -> None:
        for name, low in (("n_clusters", 2), ("min_ratings", 0), ("n_init", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")


@dataclass
class ClusterResult:
    """Output of :func:`cluster_movies`.

    Attributes
    ----------
    assignments:
        One row per movie: movieId, title, genres, n_ratings, cluster, distance (to its
        centroid, in the clustered space), fitted (True if the movie was a KMeans input).
    centroids:
        (n_clusters, n_factors) float32, in the clustered space (unit-normalised inputs when
        ``normalize``; centroids themselves are means, so shorter than 1).
    metrics:
        ``cluster_silhouette``, ``cluster_inertia``, ``cluster_genre_purity``,
        ``cluster_genre_purity_shuffled`` (all over fitted movies), plus counts.
    params:
        The settings that produced it.
    """

    assignments: pd.DataFrame
    centroids: np.ndarray
    metrics: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- vectors
def prepare_vectors(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """float64 copy of ``vectors``, L2-normalised per row when ``normalize``.

    A zero vector stays zero rather than becoming NaN.
    """
    out = np.asarray(vectors, dtype=np.float64).copy()
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
    return out


# ---------------------------------------------------------------------- genre metrics
def genre_sets(genres) -> list[frozenset]:
    """Each movie's genres as a set; ``(no genres listed)`` and blanks carry none."""
    return [frozenset(g for g in str(s).split("|") if g and g != NO_GENRES) for s in genres]


def _genre_matrix(sets: list[frozenset]) -> tuple[np.ndarray, list[str]]:
    """Boolean (movies x genres) indicator matrix and the genre names (sorted)."""
    names = sorted(set().union(*sets)) if sets else []
    col = {g: j for j, g in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=bool)
    for i, s in enumerate(sets):
        matrix[i, [col[g] for g in s]] = True
    return matrix, names


def _purity(indicator: np.ndarray, labels: np.ndarray, n_clusters: int) -> float:
    """Size-weighted share of each cluster's movies carrying its most common genre."""
    if len(labels) == 0 or indicator.shape[1] == 0:
        return float("nan")
    counts = np.zeros((n_clusters, indicator.shape[1]))
    np.add.at(counts, labels, indicator)
    return float(counts.max(axis=1).sum() / len(labels))


def genre_purity(genres, labels, n_clusters: int | None = None) -> float:
    """Genre purity of a labelling.

    For each cluster take the genre carried by most of its movies (a movie carries every
    genre in its ``|``-separated list) and the share of the cluster carrying it; average the
    shares weighted by cluster size. Movies without any genre are left out: they cannot
    carry one, and counting them would only measure how many there are.
    """
    labels = np.asarray(labels)
    sets = genre_sets(genres)
    keep = np.array([bool(s) for s in sets], dtype=bool)
    indicator, _ = _genre_matrix([s for s, k in zip(sets, keep) if k])
    n = int(labels.max()) + 1 if n_clusters is None and len(labels) else (n_clusters or 0)
    return _purity(indicator, labels[keep], n)


def shuffled_genre_purity(genres, labels, seed: int = 0, n_shuffles: int = N_SHUFFLES,
                          n_clusters: int | None = None) -> float:
    """Chance level of :func:`genre_purity`: movies shuffled across clusters of the same sizes.

    Averaged over ``n_shuffles`` seeded permutations. Purity alone rewards any clustering for
    big genres (about half the movies are dramas); only the gap to this number is signal.
    """
    labels = np.asarray(labels)
    sets = genre_sets(genres)
    keep = np.array([bool(s) for s in sets], dtype=bool)
    indicator, _ = _genre_matrix([s for s, k in zip(sets, keep) if k])
    kept = labels[keep]
    n = int(labels.max()) + 1 if n_clusters is None and len(labels) else (n_clusters or 0)
    rng = np.random.default_rng(seed)
    return float(np.mean([_purity(indicator, rng.permutation(kept), n) for _ in range(n_shuffles)]))


def top_genres(genres, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` genres carried by most of ``genres``' movies, with the share carrying each."""
    sets = genre_sets(genres)
    if not sets:
        return []
    counts = pd.Series([g for s in sets for g in s], dtype=object).value_counts()
    # Ties broken by name so reports are stable across pandas versions.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(g, c / len(sets)) for g, c in ranked]


# ---------------------------------------------------------------------- clustering
def cluster_silhouette(x: np.ndarray, labels: np.ndarray, seed: int = 0,
                       sample_size: int = SILHOUETTE_SAMPLE) -> float:
    """Silhouette score, on a seeded sample of ``sample_size`` rows when there are more."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    size = sample_size if len(x) > sample_size else None
    return float(silhouette_score(x, labels, sample_size=size, random_state=seed))


def cluster_movies(meta: pd.DataFrame, vectors: np.ndarray, config: ClusterConfig = ClusterConfig(),
                   silhouette_sample: int = SILHOUETTE_SAMPLE, n_shuffles: int = N_SHUFFLES) -> ClusterResult:
    """KMeans on movie vectors; every movie gets a cluster.

    ``meta`` has one row per movie, aligned with the (n_movies, n_factors) ``vectors``:
    movieId, title, genres, n_ratings.

    Raises:
        ConfigError: ``n_clusters`` above the number of movies with >= ``min_ratings`` ratings.
        DataError: ``meta`` and ``vectors`` disagree in length, or ``meta`` lacks a column.
    """
    missing = [c for c in ("movieId", "title", "genres", "n_ratings") if c not in meta.columns]
    if missing:
        raise DataError(f"movie metadata lacks column(s) {', '.join(missing)}")
    if len(meta) != len(vectors):
        raise DataError(f"{len(meta)} movies but {len(vectors)} vectors")
    n_clusters, seed = config.n_clusters, config.seed
    x = prepare_vectors(vectors, config.normalize)
    fitted = meta["n_ratings"].to_numpy() >= config.min_ratings
    if n_clusters > fitted.sum():
        raise ConfigError(f"n_clusters={n_clusters} is more than the {int(fitted.sum())} movies to cluster "
                          f"(movies with >= {config.min_ratings} training ratings); lower n_clusters")
    km = KMeans(n_clusters=n_clusters, n_init=config.n_init, random_state=seed).fit(x[fitted])
    labels = km.predict(x).astype(np.int64)
    distance = np.linalg.norm(x - km.cluster_centers_[labels], axis=1)

    assignments = pd.DataFrame({
        "movieId": meta["movieId"].to_numpy(np.int64),
        "title": meta["title"].astype(str).to_numpy(),
        "genres": meta["genres"].astype(str).to_numpy(),
        "n_ratings": meta["n_ratings"].to_numpy(np.int64),
        "cluster": labels,
        "distance": distance,
        "fitted": fitted,
    })
    fit_genres = assignments.loc[fitted, "genres"].to_numpy()
    fit_labels = labels[fitted]
    metrics = {
        "cluster_silhouette": cluster_silhouette(x[fitted], fit_labels, seed, silhouette_sample),
        "cluster_inertia": float(km.inertia_),
        "cluster_genre_purity": genre_purity(fit_genres, fit_labels, n_clusters),
        "cluster_genre_purity_shuffled": shuffled_genre_purity(fit_genres, fit_labels, seed, n_shuffles, n_clusters),
        "cluster_movies_fitted": int(fitted.sum()),
        "cluster_movies_assigned": int((~fitted).sum()),
    }
    return ClusterResult(assignments, km.cluster_centers_.astype(np.float32), metrics, asdict(config))
