"""The synthetic generator: seeded, MovieLens-shaped, valid, with recoverable structure."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from mfrec.data.datasets import get_spec, synthetic_shape
from mfrec.errors import ConfigError
from mfrec.data.synthetic import GENRES, generate


@pytest.fixture(scope="module")
def data():
    return generate(20_000, 200, 1_000, seed=7)


def test_shape_and_dtypes(data):
    r, m = data.ratings, data.movies
    assert len(r) == 20_000
    assert r.dtypes.astype(str).to_dict() == {
        "userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
    assert r["userId"].between(1, 200).all() and r["movieId"].between(1, 1_000).all()
    assert len(m) == 1_000 and m["movieId"].tolist() == list(range(1, 1_001))
    assert data.user_factors.shape == (200, 8) and data.item_factors.shape == (1_000, 8)
    assert data.user_factors.dtype == np.float32


def test_no_duplicate_pairs_and_sorted(data):
    r = data.ratings
    assert not r.duplicated(["userId", "movieId"]).any()
    keys = r["userId"].to_numpy().astype(np.int64) * 2**32 + r["movieId"].to_numpy()
    assert np.all(np.diff(keys) > 0)


def test_half_star_ratings_on_scale(data):
    x = data.ratings["rating"].to_numpy()
    assert x.min() >= 0.5 and x.max() <= 5.0
    assert np.all(x * 2 == np.round(x * 2))
    assert 3.0 < x.mean() < 4.0 and len(np.unique(x)) >= 8


def test_movielens_like_shape(data):
    per_user = data.ratings.groupby("userId").size()
    per_movie = data.ratings.groupby("movieId").size()
    assert per_user.min() >= 20  # MovieLens' floor
    assert per_user.max() > 5 * per_user.median()  # long-tailed activity
    assert per_movie.max() > 10 * per_movie.median()  # long-tailed popularity
    ts = data.ratings["timestamp"]
    assert ts.min() >= 820_454_400 and ts.max() <= 1_537_747_200


def test_titles_and_genres(data):
    m = data.movies
    assert re.fullmatch(r"Synthetic Movie 1 \(\d{4}\)", m["title"].iloc[0])
    genres = set("|".join(m["genres"]).split("|"))
    assert genres <= set(GENRES) and len(genres) > 10
    assert (data.item_genres.sum(axis=1) >= 1).all()


def test_deterministic_per_seed(data):
    again = generate(20_000, 200, 1_000, seed=7)
    pd.testing.assert_frame_equal(again.ratings, data.ratings)
    pd.testing.assert_frame_equal(again.movies, data.movies)
    other = generate(20_000, 200, 1_000, seed=8)
    assert not other.ratings.equals(data.ratings)


def test_ratings_follow_planted_structure(data):
    r = data.ratings
    truth = data.true_ratings(r["userId"], r["movieId"])
    assert np.corrcoef(truth, r["rating"])[0, 1] > 0.7
    # Movies sharing a genre have more similar factors than random pairs.
    v = data.item_factors / np.linalg.norm(data.item_factors, axis=1, keepdims=True)
    drama = data.item_genres[:, GENRES.index("Drama")] & (data.item_genres.sum(axis=1) == 1)
    horror = data.item_genres[:, GENRES.index("Horror")] & (data.item_genres.sum(axis=1) == 1)
    within = (v[drama] @ v[drama].T).mean()
    across = (v[drama] @ v[horror].T).mean()
    assert within > across + 0.3


def test_dense_corner_cases_fill_exactly():
    # Nearly every cell rated: the fill must still reach the exact count without duplicates.
    d = generate(950, 20, 50, seed=1)
    assert len(d.ratings) == 950 and not d.ratings.duplicated(["userId", "movieId"]).any()
    assert len(generate(5, 10, 3, seed=0).ratings) == 5  # fewer ratings than users


def test_impossible_sizes():
    with pytest.raises(ConfigError, match="do not fit"):
        generate(101, 10, 10)
    with pytest.raises(ConfigError, match="positive"):
        generate(0, 10, 10)


def test_synthetic_names():
    assert get_spec("synthetic").synthetic_shape == (100_836, 610, 9_742)
    assert get_spec("synthetic-25m").synthetic_shape == (25_000_000, 162_541, 62_423)
    assert get_spec("synthetic-20k").synthetic_shape[0] == 20_000
    assert get_spec("synthetic-1m").synthetic_shape[0] == 1_000_000
    assert get_spec("synthetic-5000").synthetic_shape == synthetic_shape(5_000)
    for bad in ("synthetic-", "synthetic-0", "synthetic-2g", "synthetic-2000m", "ml-2m"):
        with pytest.raises(ConfigError):
            get_spec(bad)


def test_million_ratings_quickly():
    n, users, movies = synthetic_shape(1_000_000)
    d = generate(n, users, movies, seed=0)
    assert len(d.ratings) == 1_000_000
