"""A fitted model with everything needed to answer questions about real MovieLens ids.

:class:`Recommender` is what evaluation scores and what the served pyfunc model wraps, so
test metrics and REST answers come from the same code. It saves to a folder of JSON,
parquet, ``.npz`` (no pickle) and a ``weights_only`` state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from mfrec import als, genres, scoring
from mfrec.errors import DataError
from mfrec.interactions import IdIndex
from mfrec.model import MatrixFactorization
from mfrec.train import TrainConfig

FORMAT_VERSION = 3  # 2: users have a separate choice vector; 3: users' genre votes
_FILES = ("weights.pt", "meta.json", "items.parquet", "users.npz")
# Users ranked per matrix product: bounds memory at CHUNK x n_items floats.
CHUNK = 1024
# Known users' top-LIST_LENGTH films, and every film's LIST_LENGTH most similar ones, are
# ranked once, all rows at a time, when that ranking has at most LIST_SCORES scores and its
# lists at most LIST_ENTRIES entries (12 bytes each): ml-latest-small (5.5M user x film and
# 95M film x film scores) and ml-1m qualify, ml-25m (10G) does not. A request then slices
# its list instead of running a handful of torch operations, which a serving process that
# just ran MLflow's request handling finds cold in the caches (measured: 150 us of a ~1 ms
# `recommend` request; the slice takes ~5 us).
LIST_LENGTH = 100
LIST_SCORES = 100_000_000
LIST_ENTRIES = 10_000_000
_DEFAULTS = TrainConfig()


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of a boolean sparse matrix given its nonzero coordinates."""
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, cols[order].astype(np.int64)


class Recommender:
    """Fitted model + id maps + movie metadata + per-user seen lists + popularity + clusters."""

    def __init__(self, model: MatrixFactorization, user_index: IdIndex, item_index: IdIndex,
                 items: pd.DataFrame, seen_indptr: np.ndarray, seen_indices: np.ndarray, meta: dict,
                 genre_votes: np.ndarray, vote_total: np.ndarray):
        self.model = model.eval()
        self.user_index = user_index
        self.item_index = item_index
        self.items = items.reset_index(drop=True)  # one row per item index, in index order
        self.seen_indptr = seen_indptr
        self.seen_indices = seen_indices
        self.meta = meta
        # Per known user: rating-weighted films per genre and their total (mfrec/genres.py).
        self.genre_votes = genre_votes
        self.vote_total = vote_total
        self.rating_range = tuple(meta["rating_range"])
        self._columns = {}
        self._cache = {}
        self.rating_weight = float(meta.get("rating_weight", scoring.DEFAULT_RATING_WEIGHT))
        self._popular_order = np.lexsort((self.column("movieId"), -self.column("n_ratings")))

    @property
    def rating_weight(self) -> float:
        """Weight of the predicted rating in the ranking score (:mod:`mfrec.scoring`)."""
        return self._rating_weight

    @rating_weight.setter
    def rating_weight(self, value: float) -> None:
        self._rating_weight = float(value)
        # The ranking table, users' rows and lists bake the weight in; the rest does not.
        self._cache = {key: value for key, value in self._cache.items() if key in _WEIGHTLESS}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, model, user_index: IdIndex, item_index: IdIndex, train: pd.DataFrame,
              movies: pd.DataFrame, meta: dict) -> "Recommender":
        """Assemble from a fitted model and the ratings it was fitted on."""
        u = user_index.index(train["userId"].to_numpy())
        i = item_index.index(train["movieId"].to_numpy())
        indptr, indices = csr_from_pairs(u, i, len(user_index))
        items = pd.DataFrame({"movieId": item_index.ids})
        items = items.merge(movies[["movieId", "title", "genres"]], on="movieId", how="left")
        items["title"] = items["title"].fillna("").astype(str)
        items["genres"] = items["genres"].fillna("(no genres listed)").astype(str)
        items["n_ratings"] = np.bincount(i, minlength=len(item_index)).astype(np.int64)
        items["cluster"] = -1
        meta = {"format_version": FORMAT_VERSION, "rating_weight": scoring.DEFAULT_RATING_WEIGHT, **meta}
        _, matrix = genres.genre_matrix(items["genres"].to_numpy())
        votes, total = genres.votes(matrix, u, i, train["rating"].to_numpy(), len(user_index), meta["rating_range"])
        return cls(model.cpu(), user_index, item_index, items, indptr, indices, meta, votes, total)

    def set_clusters(self, assignments: pd.DataFrame) -> None:
        """Attach KMeans cluster ids (movieId, cluster); movies not clustered keep -1."""
        mapping = dict(zip(assignments["movieId"].to_numpy(), assignments["cluster"].to_numpy()))
        self.items["cluster"] = self.items["movieId"].map(mapping).fillna(-1).astype(np.int64)
        self._columns.clear()

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path / "weights.pt")
        self.items.to_parquet(path / "items.parquet", index=False)
        np.savez(path / "users.npz", user_ids=self.user_index.ids, seen_indptr=self.seen_indptr,
                 seen_indices=self.seen_indices, genre_votes=self.genre_votes, vote_total=self.vote_total)
        meta = dict(self.meta)
        meta["checksums"] = {name: _sha256(path / name) for name in _FILES if name != "meta.json"}
        tmp = path / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, path / "meta.json")

    @classmethod
    def load(cls, path) -> "Recommender":
        """Load a saved recommender, refusing files that are missing or altered."""
        path = Path(path)
        missing = [name for name in _FILES if not (path / name).is_file()]
        if missing:
            raise DataError(f"model folder {path} is missing {', '.join(missing)}")
        try:
            meta = json.loads((path / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"model folder {path}: meta.json is not valid JSON ({exc})") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"model folder {path} has format version {meta.get('format_version')}; this mfrec "
                            f"reads version {FORMAT_VERSION}: retrain the model with this version")
        for name, expected in meta.get("checksums", {}).items():
            actual = _sha256(path / name)
            if actual != expected:
                raise DataError(f"model file {path / name} was altered: sha256 {actual}, expected {expected}")
        try:
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
            arrays = np.load(path / "users.npz", allow_pickle=False)
            items = pd.read_parquet(path / "items.parquet")
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad artifact
            raise DataError(f"model folder {path} could not be read: {exc}") from exc
        n_users, k = state["user_factors"].shape
        model = MatrixFactorization(n_users, state["item_factors"].shape[0], k)
        model.load_state_dict(state)
        user_index = IdIndex(arrays["user_ids"])
        item_index = IdIndex(items["movieId"].to_numpy())
        return cls(model, user_index, item_index, items, arrays["seen_indptr"], arrays["seen_indices"], meta,
                   arrays["genre_votes"], arrays["vote_total"])

    # ------------------------------------------------------------------ ranking core
    def top_items(self, user_rows: np.ndarray, k: int, exclude_seen: bool = True,
                  folded: scoring.FoldedUsers | None = None,
                  extra_seen: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores for known user rows, ``CHUNK`` users per matrix product.

        This is the one ranking path: evaluation's NDCG and the ``recommend`` task call it;
        ``fold_in`` passes its fitted users as ``folded`` (their seen films as ``extra_seen``).
        Known users' lists of up to ``LIST_LENGTH`` come from :meth:`known_lists` when the
        model is small enough to rank everyone at once (the same ranking, done ahead).
        """
        if folded is None and extra_seen is None:
            listed = _sliced(self.known_lists(exclude_seen), user_rows, k, len(self.item_index))
            if listed is not None:
                return listed
        return self._rank(user_rows, k, exclude_seen, folded, extra_seen)

    def known_lists(self, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """Every known user's top ``LIST_LENGTH`` (item indices, scores), ranked once per
        setting; None when the model is too large (``LIST_SCORES``, ``LIST_ENTRIES``)."""
        key = ("lists", exclude_seen, self._trained("genre_weight"), self._trained("genre_prior"))
        n_users = len(self.user_index)
        return self._lists(key, n_users, lambda: self._rank(np.arange(n_users), LIST_LENGTH, exclude_seen))

    def similar_lists(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Every item's ``LIST_LENGTH`` most similar items (indices, cosine), found once; None
        when the catalogue is too large (``LIST_SCORES``, ``LIST_ENTRIES``)."""
        n_items = len(self.item_index)
        return self._lists("similar_lists", n_items, lambda: self._similar(np.arange(n_items), LIST_LENGTH))

    def _lists(self, key, n_rows: int, make):
        """``make()``'s (indices, scores), built once and read-only, if ranking ``n_rows`` rows
        against the catalogue is small enough to do ahead."""
        n_items = len(self.item_index)
        if n_rows * n_items > LIST_SCORES or n_rows * min(LIST_LENGTH, n_items) > LIST_ENTRIES:
            return None
        return self._cached(key, lambda: _read_only(make()))

    def _similar(self, item_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`scoring.similar_items` of ``item_rows``, ``CHUNK`` items per matrix product."""
        k = min(k, len(self.item_index) - 1)
        unit = self._cached("unit", lambda: scoring.unit_factors(self.model))
        parts = [scoring.similar_items(unit, torch.as_tensor(item_rows[start:start + CHUNK]), k)
                 for start in range(0, len(item_rows), CHUNK)]
        if not parts:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return (np.concatenate([indices.numpy() for _, indices in parts]),
                np.concatenate([values.numpy() for values, _ in parts]))

    def _rank(self, user_rows: np.ndarray, k: int, exclude_seen: bool, folded: scoring.FoldedUsers | None = None,
              extra_seen: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_items` computed: score every item, mask, take the top k."""
        out_idx, out_val = [], []
        for start in range(0, len(user_rows), CHUNK):
            rows = user_rows[start:start + CHUNK]
            if folded is None:
                # Rows gathered through numpy: cheaper than a torch gather for one user.
                vectors = torch.from_numpy(self._known_rows().numpy()[rows])
                with_genres = self._taste_on()
            else:
                part = folded[slice(start, start + CHUNK)]
                vectors = scoring.ranking_rows(self.model, None, self.rating_weight, part, part.genre_taste)
                with_genres = part.genre_taste is not None
            scores = vectors @ self._ranking_table(with_genres)
            if exclude_seen and folded is None:
                scores = scoring.mask_seen(scores, self.seen_indptr, self.seen_indices, rows)
            if exclude_seen and extra_seen is not None:
                indptr, indices = extra_seen
                scores = scoring.mask_seen(scores, indptr, indices, np.arange(start, start + len(rows)))
            values, indices = scoring.top_k(scores, k)
            out_idx.append(indices.numpy())
            out_val.append(values.numpy())
        if len(out_idx) == 1:
            return out_idx[0], out_val[0]
        if not out_idx:
            return np.zeros((0, min(k, len(self.item_index))), np.int64), np.zeros((0, min(k, len(self.item_index))), np.float32)
        return np.concatenate(out_idx), np.concatenate(out_val)

    def popular_items(self, k: int) -> np.ndarray:
        return self._popular_order[:k]

    # ------------------------------------------------------------------ tasks
    def predict(self, user_ids, movie_ids) -> pd.DataFrame:
        """Clipped rating predictions: userId, movieId, prediction, known (both ids seen in training)."""
        return to_frame(self.predict_columns(user_ids, movie_ids))

    def recommend(self, user_ids, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Per user, k rows: userId, rank, movieId, title, genres, score, source (personal | popular)."""
        return to_frame(self.recommend_columns(user_ids, k, exclude_seen))

    def similar(self, movie_ids, k: int = 10) -> pd.DataFrame:
        """Per known movie, k rows: movieId, rank, similar_movieId, title, genres, score (cosine), cluster."""
        return to_frame(self.similar_columns(movie_ids, k))

    def fold_in(self, user_ids, movie_ids, ratings, k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Recommend for new customers from their ratings, without retraining.

        Each distinct ``user_ids`` value is one customer; their known movies' ratings fit a
        user bias and vectors in closed form; unknown movies are ignored. A customer with no
        known movie gets the popular list. Rows as in :meth:`recommend`.
        """
        return to_frame(self.fold_in_columns(user_ids, movie_ids, ratings, k, exclude_seen))

    # The *_columns methods answer the same questions as equal-length numpy columns: the
    # served model turns those into JSON rows without building a DataFrame (half of a small
    # request's cost in MLflow's serialiser).
    def predict_columns(self, user_ids, movie_ids) -> dict:
        u = self.user_index.index(user_ids)
        i = self.item_index.index(movie_ids)
        tables = self._cached("prediction", lambda: _read_only(t.numpy() for t in scoring.prediction_tables(self.model)))
        pred = scoring.predict_indices(self.model, u, i, self.rating_range, tables)
        return {
            "userId": np.asarray(user_ids, dtype=np.int64),
            "movieId": np.asarray(movie_ids, dtype=np.int64),
            "prediction": pred.astype(np.float64),
            "known": (u >= 0) & (i >= 0),
        }

    def recommend_columns(self, user_ids, k: int = 10, exclude_seen: bool = True) -> dict:
        user_ids = np.asarray(user_ids, dtype=np.int64)
        distinct = unique_in_order(user_ids)
        rows = self.user_index.index(distinct)
        known = rows >= 0
        parts = []
        if known.any():
            idx, val = self.top_items(rows[known], k, exclude_seen)
            parts.append(self._ranked(distinct[known], idx, val, "personal"))
        if (~known).any():
            parts.append(self._popular(distinct[~known], k))
        return _in_request_order(parts, "userId", distinct, RANKED_COLUMNS)

    def similar_columns(self, movie_ids, k: int = 10) -> dict:
        distinct = unique_in_order(np.asarray(movie_ids, dtype=np.int64))
        rows = self.item_index.index(distinct)
        known = rows >= 0
        if not known.any():
            return _empty(SIMILAR_COLUMNS)
        rows = rows[known]
        listed = _sliced(self.similar_lists(), rows, k, len(self.item_index) - 1)
        idx, val = listed if listed is not None else self._similar(rows, k)
        n, kk = idx.shape
        flat = idx.ravel()
        out = {
            "movieId": np.repeat(distinct[known], kk),
            "rank": np.tile(np.arange(1, kk + 1), n),
            "similar_movieId": self.column("movieId")[flat],
            "title": self.column("title")[flat],
            "genres": self.column("genres")[flat],
            "score": val.ravel().astype(np.float64),
            "cluster": self.column("cluster")[flat].astype(np.int64),
        }
        return _in_request_order([out], "movieId", distinct, SIMILAR_COLUMNS)

    def fold_in_columns(self, user_ids, movie_ids, ratings, k: int = 10, exclude_seen: bool = True) -> dict:
        user_ids = np.asarray(user_ids, np.int64)
        movie_rows = self.item_index.index(np.asarray(movie_ids, np.int64))
        ratings = np.asarray(ratings, np.float32)
        customers = unique_in_order(user_ids)
        known = movie_rows >= 0
        fitted = unique_in_order(user_ids[known])
        position = pd.Index(fitted).get_indexer(user_ids[known])
        parts = []
        if len(fitted):
            folded = self.fold_in_users(position, movie_rows[known], ratings[known], len(fitted))
            seen = csr_from_pairs(position, movie_rows[known], len(fitted))
            idx, val = self.top_items(np.zeros(len(fitted), np.int64), k, exclude_seen, folded, seen)
            parts.append(self._ranked(np.asarray(fitted), idx, val, "personal"))
        cold = np.setdiff1d(customers, np.asarray(fitted, dtype=np.int64))
        if len(cold):
            parts.append(self._popular(cold, k))
        return _in_request_order(parts, "userId", customers, RANKED_COLUMNS)

    def fold_in_users(self, customers: np.ndarray, item_rows: np.ndarray, ratings: np.ndarray, n_customers: int,
                      unrated_weight: float | None = None, genre_weight: float | None = None) -> scoring.FoldedUsers:
        """Fit new customers (rows ``0..n_customers-1``) from their ratings of known item rows.

        Their bias and vectors come from the training's user step (:func:`scoring.fold_in`),
        their genre taste from :mod:`mfrec.genres`. ``unrated_weight`` and ``genre_weight``
        override the trained ``fold_in_unrated_weight`` and ``fold_in_genre_weight``.
        """
        catalogue = self._cached("catalogue", lambda: als.catalogue_terms(self.model.item_factors,
                                                                           self.model.item_logit_bias))
        folded = scoring.fold_in(self.model, customers, item_rows, ratings, n_customers,
                                 self.fold_in_config(unrated_weight), catalogue)
        weight = self._trained("fold_in_genre_weight") if genre_weight is None else float(genre_weight)
        if weight > 0:
            counts, total = genres.votes(self._genres()[0], customers, item_rows, ratings, n_customers,
                                         self.rating_range)
            folded.genre_taste = self._weighted_taste(counts, total, weight)
        return folded

    def fold_in_config(self, unrated_weight: float | None = None) -> SimpleNamespace:
        """The training objective's weights for a new customer's user step.

        ``unrated_weight`` (default: the trained ``fold_in_unrated_weight``) scales the weight
        of the films a new customer did *not* mention: someone who tells us five films has
        seen more than five, so their silence is weaker evidence than a training user's.
        ``1.0`` is exactly the training user step.
        """
        values = {name: self._trained(name)
                  for name in ("reg", "bias_reg", "implicit_weight", "confidence", "fold_in_unrated_weight")}
        trained = values.pop("fold_in_unrated_weight")
        beta = trained if unrated_weight is None else float(unrated_weight)
        # Unrated pairs weigh implicit_weight, rated ones implicit_weight * confidence: scale
        # the first and keep the second.
        values["implicit_weight"] *= beta
        values["confidence"] /= beta
        return SimpleNamespace(**values)

    # ------------------------------------------------------------------ helpers
    def _trained(self, name: str) -> float:
        """A training setting from the model's meta; this version's default if it predates it."""
        return float(self.meta.get("train_config", {}).get(name, getattr(_DEFAULTS, name)))

    def _cached(self, key, make):
        """``make()``, computed once per key (until ``rating_weight`` changes), without autograd."""
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = make()
        return self._cache[key]

    def _genres(self) -> tuple[np.ndarray, np.ndarray]:
        """Item x genre matrix and everyone's genre rates, built once."""
        return self._cached("genres", lambda: (genres.genre_matrix(self.column("genres"))[1],
                                               genres.base_rates(self.genre_votes, self.vote_total)))

    def _weighted_taste(self, counts: np.ndarray, total: np.ndarray, weight: float) -> torch.Tensor:
        """Genre taste of users with these votes, times ``weight`` (the trained prior)."""
        taste = genres.taste(counts, total, self._genres()[1], self._trained("genre_prior"))
        return torch.from_numpy(weight * taste)

    def _ranking_table(self, with_genres: bool) -> torch.Tensor:
        """:func:`scoring.ranking_table` of this model, built once (with or without genres)."""
        def make():
            item_genres = torch.from_numpy(self._genres()[0]) if with_genres else None
            return scoring.ranking_table(self.model, self.rating_weight, item_genres)

        return self._cached(("table", with_genres), make)

    def _taste_on(self) -> bool:
        """Whether known users' genre taste counts (``genre_weight`` > 0)."""
        return self._trained("genre_weight") > 0

    def _known_rows(self) -> torch.Tensor:
        """:func:`scoring.ranking_rows` of every known user, with their genre taste times
        ``genre_weight`` (none at weight 0); built once per setting."""
        weight = self._trained("genre_weight")

        def make():
            taste = self._weighted_taste(self.genre_votes, self.vote_total, weight) if weight > 0 else None
            return scoring.ranking_rows(self.model, torch.arange(len(self.user_index)), self.rating_weight, None, taste)

        return self._cached(("rows", weight, self._trained("genre_prior")), make)

    def column(self, name: str) -> np.ndarray:
        """``items[name]`` as a numpy array, converted once: string columns read from parquet
        are Arrow-backed, and converting 10k titles per request was most of a request's time."""
        if name not in self._columns:
            self._columns[name] = self.items[name].to_numpy()
        return self._columns[name]

    def _ranked(self, owners: np.ndarray, idx: np.ndarray, val: np.ndarray, source: str) -> dict:
        n, kk = idx.shape
        flat = idx.ravel()
        out = {
            "userId": np.repeat(owners.astype(np.int64), kk),
            "rank": np.tile(np.arange(1, kk + 1), n),
            "movieId": self.column("movieId")[flat],
            "title": self.column("title")[flat],
            "genres": self.column("genres")[flat],
            "score": val.ravel().astype(np.float64),
            "source": np.full(n * kk, source, dtype=object),
        }
        finite = np.isfinite(out["score"])  # fewer unseen items than k: drop the -inf fillers
        return out if finite.all() else {name: v[finite] for name, v in out.items()}

    def _popular(self, owners: np.ndarray, k: int) -> dict:
        pop = self.popular_items(k)
        counts = self.column("n_ratings")[pop].astype(np.float32)
        return self._ranked(owners, np.tile(pop, (len(owners), 1)), np.tile(counts, (len(owners), 1)), "popular")


RANKED_COLUMNS = {"userId": np.int64, "rank": np.int64, "movieId": np.int64, "title": object, "genres": object,
                  "score": np.float64, "source": object}
SIMILAR_COLUMNS = {"movieId": np.int64, "rank": np.int64, "similar_movieId": np.int64, "title": object,
                   "genres": object, "score": np.float64, "cluster": np.int64}


# Caches that do not depend on rating_weight (kept when it changes).
_WEIGHTLESS = ("unit", "similar_lists", "prediction", "catalogue", "genres")


def _sliced(lists, rows, k: int, most: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first ``min(k, most)`` of ``lists``' (indices, scores) for ``rows``, or None when
    there are no lists or they are too short (or k is negative: ranking refuses it)."""
    k = min(k, most)
    if lists is None or not 0 <= k <= lists[0].shape[1]:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    return lists[0][rows, :k], lists[1][rows, :k]


def _read_only(arrays) -> tuple:
    """``arrays`` as a tuple, each made read-only: built once and shared by every request."""
    arrays = tuple(arrays)
    for array in arrays:
        array.flags.writeable = False
    return arrays


def unique_in_order(values) -> np.ndarray:
    """Distinct values in order of first appearance (``pd.unique`` without its hash-table
    set-up, which dominated one-user requests)."""
    values = np.asarray(values)
    if len(values) < 2 or (values[0] == values).all():
        return values[:1].copy()
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _empty(schema: dict) -> dict:
    return {name: np.zeros(0, dtype=dtype) for name, dtype in schema.items()}


def _in_request_order(parts: list, key: str, order: np.ndarray, schema: dict) -> dict:
    """Concatenate answer parts, rows grouped by ``key`` in request ``order``, then by rank."""
    parts = [p for p in parts if len(p[key])]
    if not parts:
        return _empty(schema)
    if len(parts) == 1 and np.array_equal(unique_in_order(parts[0][key]), order):
        return parts[0]  # already in request order (the common case)
    out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    position = pd.Index(order).get_indexer(out[key])
    ordered = np.lexsort((out["rank"], position))
    return {name: v[ordered] for name, v in out.items()}


def to_frame(columns: dict) -> pd.DataFrame:
    """An answer's columns as a DataFrame (strings as pandas' str dtype)."""
    # pandas infers str for non-empty object columns already; this also types empty ones.
    return pd.DataFrame(columns).astype({name: "str" for name, v in columns.items() if v.dtype == object})


def to_records(columns: dict) -> list[dict]:
    """An answer's columns as JSON-ready rows of Python scalars (what the REST API returns)."""
    names = list(columns)
    return [dict(zip(names, row)) for row in zip(*(columns[name].tolist() for name in names))]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
