"""Random and temporal splits: sizes, determinism, ordering and validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfrec.data.datasets import get_spec
from mfrec.errors import ConfigError
from mfrec.data.parse import read_dataset
from mfrec.data.split import SplitConfig, split_ratings, unseen_report


@pytest.fixture(scope="module")
def ratings(shared_zip):
    return read_dataset(shared_zip, get_spec("ml-latest-small")).ratings


def pairs(df):
    return set(zip(df["userId"].tolist(), df["movieId"].tolist()))


def test_random_sizes_and_partition(ratings):
    train, val, test = split_ratings(ratings, SplitConfig("random", 0.2, 0.1, seed=0))
    n = len(ratings)
    assert len(test) == round(0.2 * n) == 20_167
    assert len(val) == round(0.1 * (n - len(test))) == 8_067
    assert len(train) == n - len(test) - len(val) == 72_602
    assert not (pairs(train) & pairs(test)) and not (pairs(train) & pairs(val))
    assert pairs(train) | pairs(val) | pairs(test) == pairs(ratings)
    for df in (train, val, test):
        assert df.dtypes.equals(ratings.dtypes)
        assert df.index.equals(pd.RangeIndex(len(df)))
        keys = df["userId"].to_numpy().astype(np.int64) * 2**32 + df["movieId"].to_numpy()
        assert np.all(np.diff(keys) > 0)  # sorted by (userId, movieId)


def test_random_is_deterministic_per_seed(ratings):
    a = split_ratings(ratings, SplitConfig("random", seed=3))
    b = split_ratings(ratings, SplitConfig("random", seed=3))
    c = split_ratings(ratings, SplitConfig("random", seed=4))
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)
    assert not a[2].equals(c[2])


def test_temporal_every_users_test_is_latest(ratings):
    train, val, test = split_ratings(ratings, SplitConfig("temporal", 0.2, 0.1))
    assert len(train) + len(val) + len(test) == len(ratings)
    last_train = train.groupby("userId")["timestamp"].max()
    first_val = val.groupby("userId")["timestamp"].min()
    last_val = val.groupby("userId")["timestamp"].max()
    first_test = test.groupby("userId")["timestamp"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    assert (first_val >= last_train.reindex(first_val.index)).all()
    common = first_test.index.intersection(last_val.index)
    assert (first_test[common] >= last_val[common]).all()
    assert set(train["userId"]) == set(ratings["userId"])  # every user keeps training data
    assert abs(len(test) / len(ratings) - 0.2) < 0.01


def test_temporal_same_for_any_row_order(ratings):
    # Sorted input takes a fast path; shuffled input the general one. Both must agree.
    shuffled = ratings.sample(frac=1.0, random_state=1)
    for a, b in zip(split_ratings(ratings, SplitConfig("temporal")), split_ratings(shuffled, SplitConfig("temporal"))):
        pd.testing.assert_frame_equal(a, b)


def test_temporal_ties_broken_by_movie_and_small_users_keep_train():
    df = pd.DataFrame({
        "userId": np.array([1, 1, 1, 1, 1, 2, 3, 3], dtype=np.int32),
        "movieId": np.array([5, 4, 3, 2, 1, 1, 1, 2], dtype=np.int32),
        "rating": np.full(8, 4.0, dtype=np.float32),
        "timestamp": np.array([10, 10, 10, 10, 10, 7, 1, 2], dtype=np.int64),
    })
    train, val, test = split_ratings(df, SplitConfig("temporal", test_fraction=0.4, val_fraction=0.34))
    # User 1: 5 tied ratings -> 2 test (largest movieIds), 1 val, 2 train.
    assert test[test.userId == 1]["movieId"].tolist() == [4, 5]
    assert val[val.userId == 1]["movieId"].tolist() == [3]
    # Users with one or two ratings keep at least one in train.
    assert 2 in set(train.userId) and 3 in set(train.userId)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(1, 30), st.integers(0, 50)),
             min_size=1, max_size=120, unique_by=lambda t: (t[0], t[1])),
    st.floats(0, 0.9), st.floats(0, 0.9),
)
def test_temporal_ordering_property(rows, test_f, val_f):
    df = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"]).astype(
        {"userId": "int32", "movieId": "int32", "timestamp": "int64"})
    df["rating"] = np.float32(3.0)
    train, val, test = split_ratings(df, SplitConfig("temporal", test_f, val_f))
    assert len(train) + len(val) + len(test) == len(df)
    assert set(train["userId"]) == set(df["userId"])
    for user, group in test.groupby("userId"):
        assert group["timestamp"].min() >= train.loc[train.userId == user, "timestamp"].max()


@pytest.mark.parametrize("test_f, val_f", [(-0.1, 0.1), (1.0, 0.1), (0.2, 1.0), (0.2, -1),
                                            ("abc", 0.1), (float("nan"), 0.1), (None, 0.1)])
def test_bad_fractions(ratings, test_f, val_f):
    with pytest.raises(ConfigError, match="fraction"):
        split_ratings(ratings.head(10), SplitConfig("random", test_f, val_f))


def test_unknown_method_and_no_training_left(ratings):
    with pytest.raises(ConfigError, match="random, temporal"):
        split_ratings(ratings.head(10), SplitConfig("by-genre"))
    with pytest.raises(ConfigError, match="no training ratings"):
        split_ratings(ratings.head(1), SplitConfig("random", test_fraction=0.6))


def test_zero_fractions_keep_everything_in_train(ratings):
    train, val, test = split_ratings(ratings.head(100), SplitConfig("random", 0.0, 0.0))
    assert len(train) == 100 and len(val) == len(test) == 0


def test_unseen_report():
    def frame(pairs_):
        u, m = zip(*pairs_)
        return pd.DataFrame({"userId": u, "movieId": m})

    train = frame([(1, 10), (2, 20)])
    val = frame([(1, 20), (3, 10)])
    test = frame([(1, 30), (4, 40), (2, 10)])
    assert unseen_report(train, val, test) == {
        "val_unseen_users": 1, "val_unseen_movies": 0, "val_unseen_any": 1,
        "test_unseen_users": 1, "test_unseen_movies": 2, "test_unseen_any": 2,
    }
