"""The fitted bundle: everything a served model answers from, saved without pickle.

A bundle folder holds ``weights.pt`` (a ``weights_only`` state dict), ``items.parquet`` (one
row per item index: movieId, title, genres, n_ratings, cluster), ``users.npz`` (user ids,
each user's rated items, genre votes) and ``meta.json`` (settings and the files' sha256); a
model of data with ids of its own (``dataset=custom``) also ``user_ids.parquet`` and
``item_ids.parquet``: the id of each user and item code (:class:`~mfrec.data.ids.ExternalIds`);
one whose ranking counts the neighbour term also ``neighbours.npz`` (its films and EASE weights).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mfrec.data.ids import ExternalIds, IdIndex, csr_from_pairs, read_id_file
from mfrec.errors import ConfigError, DataError
from mfrec.serving import genres
from mfrec.serving import neighbours as neighbours_module
from mfrec.serving.neighbours import Neighbours
from mfrec.training.model import MatrixFactorization

FORMAT_VERSION = 6  # 6: EASE neighbour weights (neighbours.npz) in the ranking score
_FILES = ("weights.pt", "meta.json", "items.parquet", "users.npz")
ID_FILES = {"users": "user_ids.parquet", "items": "item_ids.parquet"}
NEIGHBOURS_FILE = "neighbours.npz"
OBJECTIVE_KEYS = ("reg", "bias_reg", "reg_exponent", "implicit_weight", "confidence")
AUTO = "auto"  # a ranking weight chosen on validation by the train step (mfrec.training.search)
# Where the search starts. The neighbour term starts off (weight 0): it is turned on only when
# validation ranks clearly better with it; its reg is relative to the films' mean count.
RANKING_PRIOR = {"rating_weight": 0.25, "genre_weight": 0.1, "neighbour_weight": 0.0, "neighbour_reg": 2.0}


@dataclass(frozen=True)
class RankingConfig:
    """How a bundle ranks films.

    A score is ``choice score + rating_weight * predicted rating + genre_weight * genre
    taste + neighbour_weight * neighbour score`` (taste shrunk towards the average mix by
    ``genre_prior`` pseudo-films; the neighbour score from EASE weights with regularisation
    ``neighbour_reg``, :mod:`mfrec.serving.neighbours`). The four may be ``"auto"`` (the
    default): the train step chooses them on validation. New customers use ``fold_in_genre_weight``
    and ``fold_in_neighbour_weight`` (0: their few films told, the term is off), and their
    unmentioned films weigh ``fold_in_unrated_weight`` times a training user's
    (docs/tuning.md).
    """

    rating_weight: float | str = AUTO
    genre_weight: float | str = AUTO
    neighbour_weight: float | str = AUTO
    neighbour_reg: float | str = AUTO
    genre_prior: float = 20.0
    fold_in_unrated_weight: float = 0.03
    fold_in_genre_weight: float = 0.15
    fold_in_neighbour_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.neighbour_reg != AUTO and not (isinstance(self.neighbour_reg, (int, float))
                                               and not isinstance(self.neighbour_reg, bool)
                                               and math.isfinite(self.neighbour_reg) and self.neighbour_reg > 0):
            raise ConfigError(f"neighbour_reg must be auto or > 0, got {self.neighbour_reg!r}")
        for name in ("rating_weight", "genre_weight", "neighbour_weight", "fold_in_genre_weight",
                     "fold_in_neighbour_weight"):
            value = getattr(self, name)
            if value == AUTO and name in RANKING_PRIOR:
                continue
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise ConfigError(f"{name} must be {'auto or ' if name in RANKING_PRIOR else ''}>= 0, got {value!r}")
        if not (math.isfinite(self.genre_prior) and self.genre_prior > 0):
            raise ConfigError(f"genre_prior must be > 0, got {self.genre_prior}")
        if not (math.isfinite(self.fold_in_unrated_weight) and 0 < self.fold_in_unrated_weight <= 1):
            raise ConfigError(f"fold_in_unrated_weight must be in (0, 1], got {self.fold_in_unrated_weight}")

    def auto_fields(self) -> tuple:
        """The weights still to be chosen on validation (not the neighbour reg when there
        is no neighbour term)."""
        return tuple(name for name in RANKING_PRIOR if getattr(self, name) == AUTO
                     and not (name == "neighbour_reg" and self.neighbour_weight == 0))

    def with_prior(self) -> "RankingConfig":
        """Every ``auto`` weight replaced by where the search starts."""
        return replace(self, **{name: RANKING_PRIOR[name] for name in self.auto_fields()})


@dataclass
class Bundle:
    """A fitted model with its id maps, movies, the films each user rated and settings."""

    model: MatrixFactorization
    user_index: IdIndex
    item_index: IdIndex
    items: pd.DataFrame  # one row per item index, in index order
    seen_indptr: np.ndarray  # CSR by user row: the item rows each user rated
    seen_indices: np.ndarray
    genre_votes: np.ndarray  # per user: rating-weighted films per genre (mfrec.serving.genres)
    vote_total: np.ndarray
    meta: dict
    ids: ExternalIds | None = None  # the data's own ids, where codes stand for them
    neighbours: Neighbours | None = None  # EASE weights, when the ranking counts them

    @property
    def rating_range(self) -> tuple:
        return tuple(self.meta["rating_range"])

    @property
    def ranking(self) -> RankingConfig:
        return RankingConfig(**self.meta["ranking"])

    @property
    def implicit(self) -> bool:
        """Fit on implicit feedback (choices, no ratings): ``predict`` answers a choice score."""
        return self.meta.get("train_config", {}).get("feedback") == "implicit"

    @property
    def objective(self) -> dict:
        """The training objective's weights (what fold-in's user step needs)."""
        return self.meta["objective"]

    @classmethod
    def build(cls, model, user_index: IdIndex, item_index: IdIndex, ratings: pd.DataFrame, movies: pd.DataFrame,
              train_config, ranking: RankingConfig | None = None, neighbours: Neighbours | None = None,
              **meta) -> "Bundle":
        """Assemble from a fitted model, the ratings it was fitted on and its TrainConfig
        (settings chosen: no ``auto`` left in it or in ``ranking``). With a neighbour weight,
        the EASE weights are fitted on ``ratings`` unless ``neighbours`` are given."""
        ranking = ranking or RankingConfig().with_prior()
        unresolved = train_config.auto_fields() + ranking.auto_fields()
        if unresolved:
            raise ConfigError(f"a bundle needs chosen settings, but {', '.join(unresolved)} "
                              f"{'is' if len(unresolved) == 1 else 'are'} still 'auto'")
        u = user_index.index(ratings["userId"].to_numpy())
        i = item_index.index(ratings["movieId"].to_numpy())
        indptr, indices = csr_from_pairs(u, i, len(user_index))
        items = pd.DataFrame({"movieId": item_index.ids})
        items = items.merge(movies[["movieId", "title", "genres"]], on="movieId", how="left")
        items["title"] = items["title"].fillna("").astype(str)
        items["genres"] = items["genres"].fillna(genres.NO_GENRE).astype(str)
        items["n_ratings"] = np.bincount(i, minlength=len(item_index)).astype(np.int64)
        items["cluster"] = -1
        params = train_config.as_params()
        objective = {k: params[k] for k in OBJECTIVE_KEYS}
        objective["user_mean_count"] = len(ratings) / max(len(user_index), 1)  # what reg_exponent scales against
        meta = {"format_version": FORMAT_VERSION, "rating_range": list(train_config.rating_range),
                "n_factors": train_config.n_factors, "objective": objective,
                "ranking": asdict(ranking), "train_config": params, **meta}
        _, matrix = genres.genre_matrix(items["genres"].to_numpy())
        votes, total = genres.votes(matrix, u, i, ratings["rating"].to_numpy(), len(user_index), meta["rating_range"])
        if ranking.neighbour_weight > 0 and neighbours is None:
            neighbours = neighbours_module.fit(indptr, indices, len(item_index), ranking.neighbour_reg)
        elif ranking.neighbour_weight == 0:
            neighbours = None
        return cls(model.cpu().eval(), user_index, item_index, items, indptr, indices, votes, total, meta,
                   neighbours=neighbours)

    def with_ranking(self, **changes) -> "Bundle":
        """The same bundle ranking with other settings (the arrays are shared)."""
        ranking = replace(self.ranking, **changes)
        return replace(self, meta={**self.meta, "ranking": asdict(ranking)})

    def with_seen(self, ratings: pd.DataFrame, **meta) -> "Bundle":
        """A copy whose users' rated films are those of ``ratings`` (ids the bundle does not
        know are left out), with ``meta`` added."""
        u = self.user_index.index(ratings["userId"].to_numpy())
        i = self.item_index.index(ratings["movieId"].to_numpy())
        known = (u >= 0) & (i >= 0)
        indptr, indices = csr_from_pairs(u[known], i[known], len(self.user_index))
        return replace(self, seen_indptr=indptr, seen_indices=indices, meta={**self.meta, **meta})

    def with_ids(self, ids: ExternalIds | None) -> "Bundle":
        """A copy answering with the data's own ids (codes are their positions in ``ids``)."""
        if ids is None:
            return self
        meta = {**self.meta, "ids": ids.kinds()}
        return replace(self, ids=ids, meta=meta)

    def with_clusters(self, assignments: pd.DataFrame) -> "Bundle":
        """A copy whose items carry KMeans cluster ids (movieId, cluster); others keep -1."""
        mapping = dict(zip(assignments["movieId"].to_numpy(), assignments["cluster"].to_numpy()))
        items = self.items.copy()
        items["cluster"] = items["movieId"].map(mapping).fillna(-1).astype(np.int64)
        return replace(self, items=items)

    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path / "weights.pt")
        self.items.to_parquet(path / "items.parquet", index=False)
        np.savez(path / "users.npz", user_ids=self.user_index.ids, seen_indptr=self.seen_indptr,
                 seen_indices=self.seen_indices, genre_votes=self.genre_votes, vote_total=self.vote_total)
        files = [name for name in _FILES if name != "meta.json"]
        if self.neighbours is not None:
            np.savez(path / NEIGHBOURS_FILE, items=self.neighbours.items, weights=self.neighbours.weights)
            files.append(NEIGHBOURS_FILE)
        for side, name in ID_FILES.items() if self.ids is not None else ():
            pd.DataFrame({"id": getattr(self.ids, side)}).to_parquet(path / name, index=False)
            files.append(name)
        meta = {**self.meta, "checksums": {name: _sha256(path / name) for name in files}}
        tmp = path / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, path / "meta.json")

    @classmethod
    def load(cls, path) -> "Bundle":
        """Load a saved bundle, refusing files that are missing or altered."""
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
        for name, expected in meta.pop("checksums", {}).items():
            actual = _sha256(path / name)
            if actual != expected:
                raise DataError(f"model file {path / name} was altered: sha256 {actual}, expected {expected}")
        try:
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
            arrays = np.load(path / "users.npz", allow_pickle=False)
            items = pd.read_parquet(path / "items.parquet")
            ids = ExternalIds(*(read_id_file(path / ID_FILES[side]) for side in ("users", "items"))) if "ids" in meta else None
            neighbours = None
            if RankingConfig(**meta["ranking"]).neighbour_weight > 0:
                saved = np.load(path / NEIGHBOURS_FILE, allow_pickle=False)
                neighbours = Neighbours(saved["items"], saved["weights"])
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad artifact
            raise DataError(f"model folder {path} could not be read: {exc}") from exc
        n_users, k = state["user_factors"].shape
        model = MatrixFactorization(n_users, state["item_factors"].shape[0], k)
        model.load_state_dict(state)
        return cls(model.eval(), IdIndex(arrays["user_ids"]), IdIndex(items["movieId"].to_numpy()), items,
                   arrays["seen_indptr"], arrays["seen_indices"], arrays["genre_votes"], arrays["vote_total"], meta,
                   ids, neighbours)



def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
