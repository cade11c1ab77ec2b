"""Scoring behaviour of the fitted recommender on real data (the code the REST API runs)."""

import numpy as np
import pandas as pd
import pytest

from mfrec.errors import DataError
from mfrec.evaluation.evaluate import fold_in_ndcg
from mfrec.evaluation.metrics import ranking_metrics, relevant_sets
from mfrec.serving import ranker as ranker_module
from mfrec.serving.ranker import LIST_LENGTH
from mfrec.serving.recommender import Recommender

PIXAR = [1, 2355, 3114, 4886, 6377]  # Toy Story, A Bug's Life, Toy Story 2, Monsters Inc., Finding Nemo


def test_recommend_excludes_seen_and_is_batched(trained_small, small_split):
    rec = trained_small.recommender
    train = pd.concat(small_split[:2])
    users = [1, 2, 3, 414]
    out = rec.recommend(users, k=20).to_frame()
    assert list(out["userId"].unique()) == users
    assert (out.groupby("userId").size() == 20).all()
    assert (out["source"] == "personal").all()
    for user in users:
        seen = set(train.loc[train.userId == user, "movieId"])
        assert not seen & set(out.loc[out.userId == user, "movieId"])
    with_seen = rec.recommend([1], k=50, exclude_seen=False).to_frame()
    assert set(with_seen["movieId"]) & set(train.loc[train.userId == 1, "movieId"])


def test_known_users_lists_are_the_ranking_computed_on_request(trained_small, monkeypatch):
    """Known users' lists, ranked once for everyone, answer what ranking on request answers
    (both exclude_seen settings, k up to the list length; equal up to rounding and the order
    of tied films); a longer k, or a model over either size limit, ranks on request."""
    ranker = Recommender(trained_small.recommender.bundle).ranker  # lists of its own
    rows = np.arange(len(ranker.bundle.user_index))
    computed = []
    real_rank = ranker._rank
    monkeypatch.setattr(ranker, "_rank", lambda *a, **kw: computed.append(a[1]) or real_rank(*a, **kw))
    for exclude_seen in (True, False):
        lists = ranker.known_lists(exclude_seen)
        assert lists is not None and lists[0].shape == (len(rows), LIST_LENGTH)
        for k in (1, 10, LIST_LENGTH, LIST_LENGTH + 1):
            computed.clear()
            idx, val = ranker.top_items(rows, k, exclude_seen)
            assert computed == ([k] if k > LIST_LENGTH else [])  # the lists answered up to their length
            ref_idx, ref_val = real_rank(rows, k, exclude_seen)
            assert idx.shape == (len(rows), k)
            _same_ranking(idx, val, ref_idx, ref_val)
    bundle = ranker.bundle
    seen = set(bundle.seen_indices[bundle.seen_indptr[0]:bundle.seen_indptr[1]])
    assert not seen & set(ranker.top_items(rows[:1], 50, True)[0][0])
    assert seen & set(ranker.top_items(rows[:1], 100, False)[0][0])
    ranker = Recommender(bundle).ranker
    monkeypatch.setattr(ranker, "_rank", lambda *a, **kw: computed.append(a[1]) or real_rank(*a, **kw))
    monkeypatch.setattr(ranker_module, "LIST_SCORES", len(rows) * ranker.n_items - 1)
    assert ranker.known_lists(True) is None
    computed.clear()
    ranker.top_items(rows[:3], 10)
    assert computed == [10]
    monkeypatch.setattr(ranker_module, "LIST_SCORES", 10**12)
    monkeypatch.setattr(ranker_module, "LIST_ENTRIES", len(rows) * LIST_LENGTH - 1)
    assert ranker.known_lists(False) is None


def test_ranking_on_worker_threads_is_the_ranking_on_one(trained_small, monkeypatch):
    """Evaluation and batch rank spans of users on worker threads (torch one-threaded): the
    same top-k as ranking on the caller's thread, for known users (the neighbour term's
    scores a span at a time) and for new customers with their own rated films, over many
    spans, answered in the order asked."""
    import threading

    import torch

    from mfrec.data.ids import csr_from_pairs

    monkeypatch.setenv("MFREC_THREADS", "2")
    monkeypatch.setattr(ranker_module, "NEIGHBOUR_ROWS", 250)  # spans of two blocks (214 users)
    ranker = Recommender(trained_small.recommender.bundle).ranker
    assert ranker.bundle.neighbours is not None and ranker.ranking.neighbour_weight > 0
    names = []
    real_span = ranker._rank_span
    monkeypatch.setattr(ranker, "_rank_span", lambda *a: names.append(threading.current_thread().name) or real_span(*a))
    rows = np.arange(len(ranker.bundle.user_index))[::-1].copy()
    rng = np.random.default_rng(0)
    n_customers = 300
    customers = np.repeat(np.arange(n_customers), 5)
    films = rng.integers(0, ranker.n_items, len(customers))
    folded = ranker.fold_in(customers, films, rng.choice([1.0, 3.0, 5.0], len(customers)), n_customers)
    seen = csr_from_pairs(customers, films, n_customers)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = [ranker._rank(rows[i:i + 1], 10, True) for i in range(len(rows))]  # one user a call
        indptr, indices = seen
        alone_folded = [ranker._rank(np.zeros(1, np.int64), 10, True, folded[i:i + 1],
                                     (np.array([0, indptr[i + 1] - indptr[i]]), indices[indptr[i]:indptr[i + 1]]))
                        for i in range(n_customers)]
        for args, each in (((rows, 10, True), alone),
                           ((np.zeros(n_customers, np.int64), 10, True, folded, seen), alone_folded)):
            names.clear()
            one = ranker._rank(*args)
            assert names and set(names) == {threading.current_thread().name}
            names.clear()
            many = ranker._rank(*args, parallel=True)
            assert len(names) >= 2 and all(name.startswith("mfrec-block") for name in names)
            assert torch.get_num_threads() == 2  # restored
            _same_ranking(*many, *one)
            _same_ranking(*many, np.concatenate([i for i, _ in each]), np.concatenate([v for _, v in each]))
    finally:
        torch.set_num_threads(before)


def _same_ranking(idx, val, ref_idx, ref_val, tol=1e-6):
    """Equal scores (to ``tol``: matrix products of different batch shapes may round
    differently); items may swap places only where their scores tie to within ``tol``."""
    assert idx.shape == ref_idx.shape
    np.testing.assert_allclose(val, ref_val, rtol=0, atol=tol)
    tied = (np.abs(ref_val[:, :, None] - ref_val[:, None, :]) <= tol).sum(2) > 1
    assert ((idx == ref_idx) | tied).all()


def test_similar_lists_are_the_similarity_computed_on_request(trained_small, monkeypatch):
    """Every film's most similar films, found once, are what comparing on request finds;
    a longer k, or a catalogue over the size limit, compares on request."""
    rec = Recommender(trained_small.recommender.bundle)  # lists of its own
    ranker = rec.ranker
    lists = ranker.similar_lists()
    n_items = len(rec.item_index)
    assert lists is not None and lists[0].shape == (n_items, LIST_LENGTH) and not lists[0].flags.writeable
    rows = np.arange(0, n_items, 7)
    ref_idx, ref_val = ranker._similar(rows, LIST_LENGTH)
    _same_ranking(lists[0][rows], lists[1][rows], ref_idx, ref_val)
    assert not (lists[0] == np.arange(n_items)[:, None]).any()  # a film is never its own neighbour
    computed = []
    real_similar = ranker._similar
    monkeypatch.setattr(ranker, "_similar", lambda rows, k: computed.append(k) or real_similar(rows, k))
    ids = rec.item_index.ids[rows[:5]]
    for k in (5, LIST_LENGTH, LIST_LENGTH + 1):
        computed.clear()
        out = rec.similar(ids, k=k).to_frame()
        assert computed == ([k] if k > LIST_LENGTH else [])
        assert (out.groupby("movieId").size() == k).all()
        top = real_similar(rows[:5], k)
        got = out["similar_movieId"].to_numpy().reshape(5, k)
        _same_ranking(rec.item_index.index(got), out["score"].to_numpy().reshape(5, k).astype(np.float32), *top)
    with pytest.raises(RuntimeError):  # a negative k is refused (by torch), never sliced
        rec.similar(ids[:1], k=-1).to_frame()
    rec = Recommender(rec.bundle)
    ranker = rec.ranker
    monkeypatch.setattr(ranker, "_similar", lambda rows, k: computed.append(k) or real_similar(rows, k))
    monkeypatch.setattr(ranker_module, "LIST_SCORES", n_items * n_items - 1)
    assert ranker.similar_lists() is None
    computed.clear()
    rec.similar(ids[:1], k=3).to_frame()
    assert computed == [3]


def test_unknown_user_gets_popular(trained_small):
    out = trained_small.recommender.recommend([10**9, 1], k=5).to_frame()
    unknown = out[out.userId == 10**9]
    assert len(unknown) == 5 and (unknown["source"] == "popular").all()
    assert "Forrest Gump (1994)" in set(unknown["title"])  # the most-rated film


def test_predict_marks_unknown_and_clips(trained_small):
    out = trained_small.recommender.predict([1, 1, 10**9], [1, 10**9, 1]).to_frame()
    assert out["known"].tolist() == [True, False, False]
    assert out["prediction"].between(0.5, 5.0).all()


def test_predictions_are_mean_biases_and_dot_product_by_hand(trained_small):
    """A known pair gets mean + both biases + the dot product; an unknown side drops its
    bias and the dot product (served predictions go through precomputed tables)."""
    rec = trained_small.recommender
    m = rec.model
    user, item = rec.user_index.ids[3], rec.item_index.ids[5]
    out = rec.predict([user, user, 10**9, 10**9], [item, 10**9, item, 10**9]).to_frame()
    mu, bu, bi = float(m.global_mean), float(m.user_bias[3]), float(m.item_bias[5])
    dot = float(m.user_factors[3] @ m.item_factors[5])
    expected = np.clip([mu + bu + bi + dot, mu + bu, mu + bi, mu], *rec.rating_range)
    np.testing.assert_allclose(out["prediction"], expected, rtol=0, atol=1e-5)
    assert out["known"].tolist() == [True, False, False, False]


def test_similar_excludes_itself_and_finds_the_sequel(trained_small):
    out = trained_small.recommender.similar([1, 10**9], k=20).to_frame()  # Toy Story; unknown id is skipped
    assert set(out["movieId"]) == {1}
    assert 1 not in set(out["similar_movieId"])
    assert out["score"].is_monotonic_decreasing and out["score"].max() <= 1.0 + 1e-6


def test_fold_in_fits_a_new_customer(trained_small):
    rec = trained_small.recommender
    out = rec.fold_in(np.zeros(5, int), PIXAR, np.full(5, 5.0), k=10).to_frame()
    assert len(out) == 10 and (out["source"] == "personal").all()
    assert not set(out["movieId"]) & set(PIXAR)  # the customer's own films are excluded
    assert list(out["movieId"]) != list(rec.recommend([10**9], k=10).to_frame()["movieId"])  # not the popular list
    # Two customers in one request are fitted separately; unknown movies are ignored.
    two = rec.fold_in([7, 7, 8], [1, 10**9, 296], [5.0, 1.0, 5.0], k=3).to_frame()
    assert list(two["userId"].unique()) == [7, 8]
    nobody = rec.fold_in([9], [10**9], [4.0], k=3).to_frame()
    assert (nobody["source"] == "popular").all()


def test_fold_in_of_five_films_ranks_well(trained_small, small_split):
    """A customer who tells us five films gets recommendations well above popularity; the
    validated weight of their unmentioned films (fold_in_unrated_weight) beats the training
    user step's weight (1.0)."""
    rec, metrics = trained_small.recommender, trained_small.metrics
    train = pd.concat(small_split[:2])
    default = fold_in_ndcg(rec, train, small_split[2], 5)
    plain = fold_in_ndcg(rec, train, small_split[2], 5, unrated_weight=1.0)
    print(f"fold-in NDCG@10, 5 films told: {default:.4f} (unrated weight 1.0: {plain:.4f}); "
          f"popularity {metrics['baseline_popularity_ndcg_at_10']:.4f}")
    assert default >= 1.2 * metrics["baseline_popularity_ndcg_at_10"]
    assert default > plain + 0.01


def test_fold_in_pixar_fan_gets_animation(trained_small):
    """Five 5-star Pixar films: the genre taste turns a list of popular live-action films
    (1 of 10 Animation/Children without it) into an animation-heavy one."""
    rec = trained_small.recommender
    out = rec.fold_in(np.zeros(5, int), PIXAR, np.full(5, 5.0), k=10).to_frame()
    share = out["genres"].str.contains("Animation|Children").mean()
    folded = rec.ranker.fold_in(np.zeros(5, int), rec.item_index.index(PIXAR), np.full(5, 5.0, np.float32), 1,
                                genre_weight=0.0)
    ranked, _ = rec.ranker.top_items(np.zeros(1, np.int64), 10 + 5, False, folded)
    plain = [j for j in ranked[0] if rec.item_index.ids[j] not in PIXAR][:10]
    plain_share = np.mean(["Animation" in g or "Children" in g for g in rec.column("genres")[plain]])
    print(f"Pixar fan, Animation|Children share of 10: {share:.1f} (without genre taste {plain_share:.1f})")
    print(out[["title", "genres"]].to_string())
    assert share >= 0.6
    assert plain_share <= 0.3


def test_genre_taste_lifts_known_users_ranking(trained_small, small_split):
    """Known users' genre taste (weight chosen on validation) raises test NDCG@10, beside the
    neighbour term too."""
    rec = trained_small.recommender
    test = small_split[2]
    users, relevant = relevant_sets(test, rec.user_index.index(test["userId"].to_numpy()),
                                    rec.item_index.index(test["movieId"].to_numpy()))
    plain = rec.with_ranking(genre_weight=0.0)
    without = ranking_metrics(lambda rows, k: plain.ranker.top_items(rows, k)[0], users, relevant, 10)["ndcg_at_10"]
    with_taste = trained_small.metrics["test_ndcg_at_10"]
    print(f"test NDCG@10: {with_taste:.4f} with genre taste, {without:.4f} without")
    assert with_taste >= without + 0.005


def test_genre_taste_keeps_fold_in_accuracy(trained_small, small_split):
    """The genre taste was chosen on validation; on test it must not cost fold-in NDCG."""
    rec = trained_small.recommender
    told = pd.concat(small_split[:2])
    with_taste = np.mean([fold_in_ndcg(rec, told, small_split[2], 5, seed=s) for s in range(2)])
    without = np.mean([fold_in_ndcg(rec, told, small_split[2], 5, seed=s, genre_weight=0.0) for s in range(2)])
    print(f"fold-in NDCG@10, 5 films told: {with_taste:.4f} with genre taste, {without:.4f} without")
    assert with_taste >= without - 0.003


def test_save_load_roundtrip_and_tamper_detection(trained_small, tmp_path):
    rec = trained_small.recommender
    rec.save(tmp_path / "m")
    again = Recommender.load(tmp_path / "m")
    pd.testing.assert_frame_equal(rec.recommend([1, 5], k=7).to_frame(), again.recommend([1, 5], k=7).to_frame())
    weights = tmp_path / "m" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="weights.pt was altered"):
        Recommender.load(tmp_path / "m")
    (tmp_path / "m" / "users.npz").unlink()
    with pytest.raises(DataError, match="missing users.npz"):
        Recommender.load(tmp_path / "m")


def test_ranking_metrics_by_hand():
    # user 0: hits at ranks 1 and 3 of 3 relevant; user 1: no hit.
    ranked = {0: [10, 11, 12], 1: [20, 21, 22]}
    rel = [np.array([10, 12, 99]), np.array([5])]
    out = ranking_metrics(lambda rows, k: np.array([ranked[r][:k] for r in rows]), np.array([0, 1]), rel, k=3)
    ndcg0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3) + 1 / np.log2(4))
    assert out["ndcg_at_3"] == pytest.approx(ndcg0 / 2)
    assert out["precision_at_3"] == pytest.approx((2 / 3) / 2)
    assert out["recall_at_3"] == pytest.approx((2 / 3) / 2)


def test_a_model_folder_of_another_format_version_is_refused(trained_small, tmp_path):
    import json

    trained_small.recommender.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 3  # a model saved before the ranking settings were in meta.json
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format version 3; this mfrec reads version 6: retrain"):
        Recommender.load(tmp_path / "m")


def test_fold_in_counts_a_repeated_film_once_with_its_last_rating(trained_small):
    rec = trained_small.recommender
    once = rec.fold_in([3, 3], [1, 296], [2.0, 5.0], k=10).to_frame()
    repeated = rec.fold_in([3] * 6, [1, 296, 1, 1, 296, 1], [5.0, 1.0, 4.0, 5.0, 5.0, 2.0], k=10).to_frame()
    pd.testing.assert_frame_equal(once, repeated)


def test_a_fold_in_fit_that_is_not_finite_names_the_customer(trained_small):
    import copy

    import torch

    from mfrec.errors import RequestError

    bundle = copy.deepcopy(trained_small.recommender.bundle)
    with torch.no_grad():
        bundle.model.item_factors[bundle.item_index.index([296])[0]] = float("nan")
    rec = Recommender(bundle)  # a damaged model: every fit against its catalogue is NaN
    with pytest.raises(RequestError, match="fold_in for customer 42 gives no finite fit"):
        rec.fold_in([42, 42], [1, 296], [5.0, 4.0], k=3)
    assert len(rec.fold_in([7], [10**9], [5.0], k=3).to_frame()) == 3  # no known film: the popular list


@pytest.mark.parametrize("k", [1, 12, 400])
def test_popularity_baseline_ranks_each_users_unseen_films_by_count(small_split, k):
    """The popularity baseline (no loop over users) against the plain rule, user by user: the
    most-rated films the user has not rated, ties by movieId, -1 past the last unseen one."""
    from mfrec.data.ids import IdIndex
    from mfrec.evaluation.baselines import PopularityRanker

    train = small_split[0]
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    ranker = PopularityRanker(train, users, items)
    counts = train["movieId"].value_counts()
    order = sorted(items.ids, key=lambda m: (-counts[m], m))
    rows = np.array([0, 5, 17, len(users) - 1, 5])
    top = ranker.top_items(rows, k)
    for row, got in zip(rows, top):
        seen = set(train.loc[train["userId"] == users.ids[row], "movieId"])
        assert [items.ids[i] for i in got] == [m for m in order if m not in seen][:k]
    tiny = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [4.0, 3.0, 5.0]})
    tiny_ranker = PopularityRanker(tiny, IdIndex(tiny["userId"]), IdIndex(tiny["movieId"]))
    assert tiny_ranker.top_items(np.array([0, 1]), 2).tolist() == [[-1, -1], [1, -1]]


def test_popularity_baseline_with_a_film_seen_twice_and_unknown_rows():
    """A film listed twice among a user's ratings counts once; an unknown user row is refused."""
    from mfrec.data.ids import IdIndex
    from mfrec.evaluation.baselines import PopularityRanker

    train = pd.DataFrame({"userId": [1, 1, 1, 2, 2, 3], "movieId": [10, 10, 20, 30, 40, 40],
                          "rating": [4.0, 4.0, 3.0, 5.0, 2.0, 1.0]})
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    ranker = PopularityRanker(train, users, items)
    # Counts: 10 and 40 twice, 20 and 30 once; ties by movieId.
    assert [items.ids[i] for i in ranker.top_items(np.array([0]), 2)[0]] == [40, 30]
    with pytest.raises(ValueError, match="known users"):
        ranker.top_items(np.array([-1]), 2)
    # Users who rated exactly the most popular films (one of them one film twice): the next ones.
    crowd = pd.DataFrame({"userId": [9] * 10 + [8] * 4 + [7] * 3,
                          "movieId": [10, 20, 30, 40, 50, 10, 20, 30, 10, 20] + [10, 10, 20, 30] + [10, 20, 30],
                          "rating": 3.0})
    users, items = IdIndex(crowd["userId"]), IdIndex(crowd["movieId"])
    popular = PopularityRanker(crowd, users, items)
    for k in (1, 2, 3):
        for fan in popular.top_items(users.index(np.array([7, 8])), k):
            assert [items.ids[i] for i in fan if i >= 0] == [40, 50][:k]


@pytest.mark.parametrize("values", [np.array([], np.int64), np.array([7], np.int32),
                                    np.random.default_rng(3).integers(-2**40, 2**40, 5000),
                                    np.random.default_rng(4).integers(0, 50, 5000).astype(np.int32)])
def test_distinct_is_numpy_unique_by_a_sort(values):
    """What the popularity baseline, id indexes and the split's report use instead of
    np.unique (whose hashing is 20x slower on tens of millions of ids)."""
    from mfrec.data.ids import distinct

    got = distinct(values)
    assert got.dtype == values.dtype and np.array_equal(got, np.unique(values))


@pytest.mark.parametrize("kind", ["normal", "ties", "mostly_masked"])
@pytest.mark.parametrize("n_items,k", [(9742, 10), (61132, 100), (5000, 10), (700, 10), (64 * 80 + 13, 10), (50, 60)])
def test_top_k_by_chunk_maxima_is_torch_topk(kind, n_items, k):
    """Ranking's top-k (chunk maxima first, on the CPU) gives torch.topk's values, descending,
    at distinct columns holding those values: ties, seen films (-inf) and a tail past the
    last whole chunk included; small catalogues and large k take torch.topk itself."""
    import torch

    from mfrec.serving.scoring import CHUNK, top_k

    g = torch.Generator().manual_seed(n_items + k)
    rows = 17
    if kind == "ties":
        scores = torch.randint(0, 4, (rows, n_items), generator=g).float()
    else:
        scores = torch.randn(rows, n_items, generator=g)
    if kind == "mostly_masked":
        scores[torch.rand(rows, n_items, generator=g) < 0.999] = -torch.inf
    values, columns = top_k(scores, k)
    expected = torch.topk(scores, min(k, n_items), dim=1).values
    assert torch.equal(values, expected)
    assert torch.equal(scores.gather(1, columns), values)
    assert all(len(set(row.tolist())) == len(row) for row in columns)
    assert columns.dtype == torch.int64 and int(columns.max()) < n_items
    if n_items // CHUNK >= 8 * k:  # the chunked path ran: a block's view of a larger buffer too
        buffer = torch.full((rows + 3, n_items), -1.0)
        buffer[:rows] = scores
        assert torch.equal(top_k(buffer[:rows], k)[0], expected)
