"""The genre taste of new customers (mfrec/serving/genres.py), checked by hand."""

import numpy as np
import pytest

from mfrec.serving import genres


def test_genre_matrix_skips_the_no_genre_marker():
    names, matrix = genres.genre_matrix(["Animation|Children", "Drama", "(no genres listed)"])
    assert names == ["Animation", "Children", "Drama"]
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 0, 1], [0, 0, 0]])


def test_taste_is_the_bernoulli_log_likelihood_ratio():
    _, matrix = genres.genre_matrix(["Animation", "Drama", "Drama"])
    # Everyone: three whole votes, one of them for Animation.
    everyone, everyone_total = genres.votes(matrix, np.array([0, 1, 2]), np.array([0, 1, 2]),
                                            np.array([5.0, 5.0, 5.0]), 3, (0.5, 5.0))
    rates = genres.base_rates(everyone, everyone_total)
    np.testing.assert_allclose(rates, [1 / 3, 2 / 3])
    # One customer: a 5-star animation film (a whole vote) and a 0.5-star drama (none).
    counts, total = genres.votes(matrix, np.array([0, 0]), np.array([0, 1]), np.array([5.0, 0.5]), 1, (0.5, 5.0))
    np.testing.assert_allclose(counts, [[1.0, 0.0]])
    np.testing.assert_allclose(total, [1.0])
    taste = genres.taste(counts, total, rates, prior=2.0)
    rate = (np.array([1.0, 0.0]) + 2.0 * rates) / 3.0
    expected = np.log(rate / rates) - np.log((1 - rate) / (1 - rates))
    np.testing.assert_allclose(taste[0], expected, rtol=1e-5)
    assert taste[0, 0] > 0 > taste[0, 1]


def test_a_user_who_mixes_genres_like_everyone_has_no_taste():
    _, matrix = genres.genre_matrix(["Animation", "Drama", "Drama|Crime"])
    users, items = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2])
    ratings = np.array([5.0, 3.0, 4.0, 2.0, 5.0])
    counts, total = genres.votes(matrix, users, items, ratings, 2, (0.5, 5.0))
    everyone = genres.base_rates(counts, total)
    mean_user = genres.taste(counts.sum(0, keepdims=True), total.sum(keepdims=True), everyone, prior=3.0)
    np.testing.assert_allclose(mean_user, 0.0, atol=1e-6)


def test_taste_shrinks_to_nothing_without_votes():
    _, matrix = genres.genre_matrix(["Animation", "Drama"])
    rates = np.array([0.25, 0.75])
    counts, total = genres.votes(matrix, np.array([0, 1]), np.array([0, 0]), np.array([0.5, 5.0]), 3, (0.5, 5.0))
    taste = genres.taste(counts, total, rates, prior=5.0)
    assert np.abs(taste[0]).max() == pytest.approx(0) and np.abs(taste[2]).max() == pytest.approx(0)
    assert taste[1, 0] > 0


def test_votes_summed_in_chunks_match_one_scatter_add(monkeypatch):
    monkeypatch.setattr(genres, "_CHUNK", 1000)  # ten chunks
    rng = np.random.default_rng(0)
    _, matrix = genres.genre_matrix(rng.choice(["A", "B|C", "A|C", "(no genres listed)"], 50))
    users, items = rng.integers(0, 30, 10_000), rng.integers(0, 50, 10_000)
    ratings = rng.integers(1, 11, 10_000) / 2
    counts, total = genres.votes(matrix, users, items, ratings, 30, (0.5, 5.0))
    weight = (ratings - 0.5) / 4.5
    expected = np.zeros((30, matrix.shape[1]))
    np.add.at(expected, users, weight[:, None] * matrix[items])
    np.testing.assert_allclose(counts, expected, rtol=1e-5)
    np.testing.assert_allclose(total, np.bincount(users, weights=weight, minlength=30), rtol=1e-5)
