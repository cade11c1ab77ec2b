"""The genre taste of new customers (mfrec/genres.py), checked by hand."""

import numpy as np
import pytest

from mfrec import genres


def test_genre_matrix_skips_the_no_genre_marker():
    names, matrix = genres.genre_matrix(["Animation|Children", "Drama", "(no genres listed)"])
    assert names == ["Animation", "Children", "Drama"]
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 0, 1], [0, 0, 0]])


def test_taste_is_the_bernoulli_log_likelihood_ratio():
    _, matrix = genres.genre_matrix(["Animation", "Drama", "Drama"])
    rates = genres.base_rates(matrix, np.array([10, 20, 10]))  # 25% of ratings on Animation
    np.testing.assert_allclose(rates, [0.25, 0.75])
    # One customer: a 5-star animation film (a whole vote) and a 0.5-star drama (none).
    counts, total = genres.votes(matrix, np.array([0, 0]), np.array([0, 1]), np.array([5.0, 0.5]), 1, (0.5, 5.0))
    np.testing.assert_allclose(counts, [[1.0, 0.0]])
    np.testing.assert_allclose(total, [1.0])
    taste = genres.taste(counts, total, rates, prior=2.0)
    rate = (np.array([1.0, 0.0]) + 2.0 * rates) / 3.0
    expected = np.log(rate / rates) - np.log((1 - rate) / (1 - rates))
    np.testing.assert_allclose(taste[0], expected, rtol=1e-6)
    assert taste[0, 0] > 0 > taste[0, 1]


def test_taste_shrinks_to_nothing_without_votes():
    _, matrix = genres.genre_matrix(["Animation", "Drama"])
    rates = genres.base_rates(matrix, np.array([1, 3]))
    counts, total = genres.votes(matrix, np.array([0, 1]), np.array([0, 0]), np.array([0.5, 5.0]), 3, (0.5, 5.0))
    taste = genres.taste(counts, total, rates, prior=5.0)
    assert np.abs(taste[0]).max() == pytest.approx(0) and np.abs(taste[2]).max() == pytest.approx(0)
    assert taste[1, 0] > 0
