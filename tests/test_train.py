"""Training and evaluation on real data: accuracy targets, determinism, failure modes."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mfrec.training import device
from mfrec.training.device import resolve_device
from mfrec.errors import ConfigError, TrainingError
from mfrec.data.ids import IdIndex, Interactions
from mfrec.training.model import MatrixFactorization
import mfrec.training.csr as csr_module
from mfrec.serving.bundle import RankingConfig
from mfrec.serving.fold_in import fold_in, objective_for
from mfrec.training import als
from mfrec.training.config import TrainConfig
from mfrec.training.csr import Csr
from mfrec.training.linalg import solve_spd
from mfrec.training.fit import fit
from mfrec.evaluation.evaluate import evaluate
from mfrec.workflow import served_model, train_and_evaluate


def test_default_model_beats_baselines_and_peers_on_ml_latest_small(trained_small):
    m = trained_small.metrics
    # Issue 3 targets (seeded 80/20 split, k=8): RMSE <= 0.850; Surprise SVD reaches 0.866.
    assert m["test_rmse"] < m["baseline_bias_rmse"] - 0.01
    assert m["test_rmse"] <= 0.850
    assert m["test_mae"] < 0.67
    # Issue 22's target at k=8: NDCG@10 >= 0.280 with RMSE <= 0.820 (0.3115 / 0.8193 measured,
    # with the genre taste and the neighbour term chosen on validation; EASE: 0.2947).
    assert m["test_ndcg_at_10"] >= 0.280 and m["test_rmse"] <= 0.820
    assert m["test_ndcg_at_10"] >= 1.2 * m["baseline_popularity_ndcg_at_10"]
    assert 0 < m["test_precision_at_10"] < 1 and 0 < m["test_recall_at_10"] < 1
    assert m["baseline_global_mean_rmse"] > m["baseline_bias_rmse"]


def test_early_stopping_keeps_the_best_epoch(trained_small):
    history = trained_small.history
    best = min(history, key=lambda r: r["val_rmse"])
    assert trained_small.best_epoch == best["epoch"]
    assert len(history) <= TrainConfig().epochs
    assert all(math.isfinite(r["train_loss"]) for r in history)


def test_same_seed_same_numbers(small_split):
    train, val, test, movies = small_split
    cfg = dict(epochs=3, progress=False, seed=7)
    a = train_and_evaluate(train, val, test, movies, TrainConfig(**cfg)).metrics
    b = train_and_evaluate(train, val, test, movies, TrainConfig(**cfg)).metrics
    c = train_and_evaluate(train, val, test, movies, TrainConfig(**{**cfg, "seed": 8})).metrics
    keys = [k for k in a if k.startswith("test_")]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["test_rmse"] != c["test_rmse"]


def _planted(n_users=300, n_items=200, rank=3, density=0.3, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 0.6, (n_users, rank))
    q = rng.normal(0, 0.6, (n_items, rank))
    truth = 3.0 + p @ q.T
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    r = truth[u, i] + rng.normal(0, noise, len(u))
    return pd.DataFrame({"userId": u, "movieId": i, "rating": r.astype(np.float32)}), truth


@pytest.mark.parametrize("solver,settings", [
    ("als", dict(epochs=30, reg=0.1, bias_reg=0.0)),
    ("adam", dict(epochs=300, batch_size=4096, lr=0.02, reg=0.1, bias_reg=0.0, init_std=0.1)),
])
def test_recovers_planted_low_rank_ratings(solver, settings):
    ratings, truth = _planted()
    users, items = IdIndex(ratings.userId), IdIndex(ratings.movieId)
    data = Interactions.from_frame(ratings, users, items)
    cfg = TrainConfig(n_factors=3, solver=solver, implicit_weight=0.0, rating_range=(-10, 20), progress=False,
                      **settings).with_prior()
    model = fit(data, cfg).model
    with torch.no_grad():
        full = (model.global_mean + model.user_bias[:, None] + model.item_bias[None, :]
                + model.user_factors @ model.item_factors.T).numpy()
    # Every cell, including the 70% never observed, is recovered far below the truth's spread.
    err = np.sqrt(np.mean((full - truth[np.ix_(users.ids, items.ids)]) ** 2))
    assert err < 0.1 * truth.std()


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("n", [3, 500])  # a few systems (factorised one by one) and many (eliminated together)
def test_batched_spd_solver_matches_lapack(n, device):
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(n, 10, 10, generator=gen, dtype=torch.float64)
    a = (m @ m.transpose(1, 2) + 0.1 * torch.eye(10, dtype=torch.float64)).to(device)
    b = torch.randn(n, 10, generator=gen, dtype=torch.float64).to(device)
    batch_last = a.permute(1, 2, 0).contiguous()
    x = solve_spd(batch_last.clone(), b.T.contiguous()).T
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    # Only the upper triangles are read: junk below the diagonal changes nothing.
    lower = torch.tril(torch.ones(10, 10, dtype=torch.bool), -1)
    junk = torch.randn(int(lower.sum()), n, generator=gen, dtype=torch.float64) * 1e6
    batch_last[lower.to(device)] = junk.to(device)
    # In place: the right-hand side comes back holding the solution.
    rhs = b.T.contiguous()
    assert solve_spd(batch_last.clone(), rhs) is rhs
    assert torch.allclose(rhs.T, torch.linalg.solve(a, b), atol=1e-8)
    # A system that is not positive definite gives NaN (training then stops with an error),
    # never a finite wrong answer; the others are unaffected.
    indefinite = batch_last.clone()
    indefinite[1, 1, 0] = -1e3
    x = solve_spd(indefinite.clone(), b.T.contiguous()).T
    assert torch.isnan(x[0]).all()
    assert torch.allclose(x[1:], torch.linalg.solve(a, b)[1:], atol=1e-8)
    # Also when another system's pivot is already NaN (a NaN minimum must not hide it).
    indefinite[0, 0, 2] = float("nan")
    x = solve_spd(indefinite.clone(), b.T.contiguous()).T
    assert torch.isnan(x[0]).all() and torch.isnan(x[2]).all()


def test_als_sweep_ends_in_the_fold_in_solution(trained_small, small_split):
    """Folding a training user back in reproduces their trained parameters: serving's fold-in
    is the training's user step, one code path."""
    rec = trained_small.recommender
    row = 17
    seen = rec.bundle.seen_indices[rec.bundle.seen_indptr[row]:rec.bundle.seen_indptr[row + 1]]
    fitted_on = pd.concat(small_split[:2])  # the refit saw train + val
    frame = fitted_on[fitted_on["userId"] == rec.user_index.ids[row]]
    folded = fold_in(rec.model, np.zeros(len(frame), np.int64), rec.item_index.index(frame["movieId"]),
                     frame["rating"].to_numpy(np.float32), 1, objective_for(rec.bundle.objective, 1.0),
                     rec.ranker.catalogue)
    assert len(frame) == len(seen)
    assert torch.allclose(folded.bias, rec.model.user_bias[row:row + 1], atol=1e-4)
    assert torch.allclose(folded.factors, rec.model.user_factors[row:row + 1], atol=1e-4)
    assert torch.allclose(folded.choice, rec.model.user_choice_factors[row:row + 1], atol=1e-4)


def test_fits_on_more_ratings_continue_and_score_like_a_fit_from_scratch(trained_small, small_split,
                                                                         served_recommender):
    """The train step's fit on train + validation continues the validation fit, and the served
    refit the evaluated model, each for a few sweeps; a model continued that way scores on
    test like one fitted from scratch on the same ratings for the chosen sweep count."""
    from mfrec.serving.bundle import Bundle
    from mfrec.serving.recommender import Recommender

    fit_on = served_recommender.meta["fit_on"]
    assert fit_on["continued"] and 2 <= fit_on["sweeps"] < trained_small.best_epoch
    assert 2 <= trained_small.metrics["refit_sweeps"] < trained_small.best_epoch
    train, val, test, movies = small_split
    seen = pd.concat([train, val], ignore_index=True)
    held = train_and_evaluate(train, val, test, movies, TrainConfig(progress=False), refit=False)
    continued, _ = served_model(held, train, val, test.iloc[:0], movies)  # every rating but test's
    assert len(continued.item_index) > len(held.recommender.item_index)  # films only validation rated: new rows
    users, items = IdIndex(seen["userId"]), IdIndex(seen["movieId"])
    scratch = fit(Interactions.from_frame(seen, users, items), trained_small.config, epochs=trained_small.best_epoch)
    assert len(scratch.history) == trained_small.best_epoch
    bundle = Bundle.build(scratch.model, users, items, seen, movies, trained_small.config, trained_small.ranking)
    expected = evaluate(Recommender(bundle), seen, test, progress=False)
    for got in (trained_small.metrics, evaluate(continued, seen, test, progress=False)):
        assert got["test_rmse"] == pytest.approx(expected["test_rmse"], abs=0.005)
        assert got["test_ndcg_at_10"] == pytest.approx(expected["test_ndcg_at_10"], abs=0.005)


def test_a_fit_continues_only_from_a_model_of_its_tables(small_split):
    train = small_split[0]
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    data = Interactions.from_frame(train, users, items)
    config = TrainConfig(progress=False).with_prior()
    wrong = MatrixFactorization(len(users) - 1, len(items), config.n_factors)
    with pytest.raises(ConfigError, match="continues from a model with the data's tables"):
        fit(data, config, epochs=1, start=wrong)


def test_device_selection():
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="cuda:x"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert device.sparse_products_work(torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks CUDA first")
def test_als_passes_over_an_mps_device_without_sparse_products(monkeypatch):
    """torch's MPS backend cannot multiply CSR matrices (pytorch/pytorch#196192, open in
    2026-09), and no Mac runs these tests: the two probes are replaced to act one out."""
    monkeypatch.setattr(device, "_mps_available", lambda: True)
    monkeypatch.setattr(device, "sparse_products_work", lambda dev: dev.type != "mps")
    assert resolve_device("auto").type == "mps"  # the Adam solver has no sparse products
    assert resolve_device("auto", needs_sparse=True).type == "cpu"
    with pytest.raises(ConfigError, match="sparse CSR matrix products.*MPS; use device=cpu"):
        resolve_device("mps", needs_sparse=True)
    with pytest.raises(ConfigError, match="does not support on MPS"):
        fit(Interactions(np.zeros(3, np.int64), np.arange(3), np.ones(3, np.float32), 1, 3),
            TrainConfig(device="mps", progress=False, epochs=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", ["als", "adam"])
def test_gpu_matches_cpu_quality(small_split, solver):
    train, val, test, movies = small_split
    cpu = train_and_evaluate(train, val, test, movies, TrainConfig(solver=solver, device="cpu", progress=False)).metrics
    gpu = train_and_evaluate(train, val, test, movies, TrainConfig(solver=solver, device="cuda", progress=False))
    assert gpu.device.startswith("cuda")
    assert abs(gpu.metrics["test_rmse"] - cpu["test_rmse"]) < 0.01


def test_divergence_is_reported_with_epoch_and_advice():
    ratings, _ = _planted(n_users=50, n_items=40)
    users, items = IdIndex(ratings.userId), IdIndex(ratings.movieId)
    data = Interactions.from_frame(ratings, users, items)
    data.ratings[5] = np.nan  # a poisoned value makes the loss NaN in epoch 1
    with pytest.raises(TrainingError, match=r"epoch 1.*larger reg"):
        fit(data, TrainConfig(epochs=2, progress=False).with_prior())
    with pytest.raises(TrainingError, match=r"epoch 1.*smaller lr"):
        fit(data, TrainConfig(solver="adam", epochs=2, progress=False).with_prior())
    data.ratings[5] = 3.0
    with pytest.raises(TrainingError, match=r"became (nan|inf).*smaller lr \(now 1e\+30\)"):
        fit(data, TrainConfig(solver="adam", epochs=5, lr=1e30, progress=False).with_prior())


@pytest.mark.parametrize("field,value,message", [
    ("n_factors", 0, "n_factors must be >= 1"),
    ("lr", -1.0, "lr must be a positive number"),
    ("lr", float("nan"), "lr must be a positive number"),
    ("batch_size", 0, "batch_size must be >= 1"),
    ("reg", -0.1, "reg must be 'auto' or a number >= 0, got -0.1"),
    ("reg", "tiny", "reg must be 'auto' or a number >= 0, got 'tiny'"),
    ("reg_exponent", 3.0, "reg_exponent must be 'auto' or a number between 0 and 2"),
    ("als_solve", "lu", "als_solve must be one of auto, exact, cg, got 'lu'"),
    ("cg_steps", 0, "cg_steps must be >= 1"),
    ("epochs", 0, "epochs must be >= 1"),
    ("solver", "sgd", "solver must be one of als, adam, got 'sgd'"),
    ("reg", 0.0, "reg must be > 0 with solver 'als'"),
    ("confidence", 0.5, "confidence must be 'auto' or a number >= 1"),
    ("min_delta", -1.0, "min_delta must be >= 0"),
])
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("chunk", [7, 40])
@pytest.mark.parametrize("half_stars", [True, False])
def test_sparse_ratings_match_a_dense_reference(half_stars, chunk, monkeypatch):
    """The chunked counting sort (small chunks force several; 40 = all ratings in one) gives
    the stable row order, and pattern / residual products equal their dense definitions,
    block by block too."""
    monkeypatch.setattr(csr_module, "BUILD_CHUNK", chunk)
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 6, (40,), generator=gen, dtype=torch.int32)
    cols = torch.randint(0, 5, (40,), generator=gen, dtype=torch.int32)
    ratings = torch.randint(1, 11, (40,), generator=gen).float() * 0.5
    if not half_stars:
        ratings += 0.01
    csr = Csr(rows, cols, ratings, 6, 5)
    order = torch.argsort(rows, stable=True)
    assert csr.scale == (0.5 if half_stars else 1.0)
    assert torch.equal(csr.cols.long(), cols[order].long())
    assert torch.allclose(csr.ratings.float() * csr.scale, ratings[order])
    dense_count = torch.zeros(6, 5).index_put_((rows.long(), cols.long()), torch.ones(40), accumulate=True)
    table = torch.randn(5, 3, generator=gen)
    col_bias = torch.randn(5, generator=gen)
    resid = torch.zeros(6, 5).index_put_((rows.long(), cols.long()), ratings - 1.0 - col_bias[cols.long()],
                                         accumulate=True)
    assert torch.allclose(csr.pattern_product(table), dense_count @ table, atol=1e-5)
    product, sq = csr.residual_product(1.0, col_bias, table)
    assert torch.allclose(product, resid @ table, atol=1e-5)
    assert torch.allclose(sq, ((ratings - 1.0 - col_bias[cols.long()]) ** 2).sum(), atol=1e-4)
    # Blocks of at most 4 rows and, beyond one row, 9 ratings: the products are the same.
    monkeypatch.setattr(csr_module, "BLOCK_ROWS", 4)
    monkeypatch.setattr(csr_module, "BLOCK_RATINGS", 9)
    csr = Csr(rows, cols, ratings, 6, 5)
    parts = list(csr.blocks())
    sizes = [(part.shape[0], len(part.cols)) for _, part in parts]
    assert len(parts) > 6 // 4 + 1 and all(rows <= 4 and (rows == 1 or n <= 9) for rows, n in sizes)
    assert [first for first, _ in parts] == [0] + list(itertools.accumulate(rows for rows, _ in sizes))[:-1]
    assert torch.allclose(torch.cat([part.pattern_product(table) for _, part in parts]), dense_count @ table,
                          atol=1e-5)
    # More ratings than one block and at most 65,536 columns: two-byte column indices, widened
    # per block for the products (pattern and residual interleaved across blocks).
    assert csr.cols.dtype == torch.uint16 and torch.equal(csr.cols.long(), cols[order].long())
    for first, part in parts:
        rows_here = slice(first, first + part.shape[0])
        assert torch.allclose(part.pattern_product(table), (dense_count @ table)[rows_here], atol=1e-5)
        assert torch.allclose(part.residual_product(1.0, col_bias, table)[0], (resid @ table)[rows_here], atol=1e-5)
    assert Csr(rows, cols, ratings, 6, 2**16 + 1).cols.dtype == torch.int32  # too many columns


def test_ranking_settings_are_checked():
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="fold_in_unrated_weight must be in"):
            RankingConfig(fold_in_unrated_weight=bad)
    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError, match="fold_in_genre_weight must be >= 0"):
            RankingConfig(fold_in_genre_weight=bad)
    for bad in (0.0, float("nan")):
        with pytest.raises(ConfigError, match="genre_prior must be > 0"):
            RankingConfig(genre_prior=bad)


@pytest.mark.parametrize("implicit_weight", [2.0, 0.0])
def test_blocks_of_rows_give_the_one_block_solution(implicit_weight, monkeypatch):
    """Both steps solved in blocks of 16 rows equal the same steps in one block."""
    gen = torch.Generator().manual_seed(4)
    users = torch.randint(0, 50, (600,), generator=gen, dtype=torch.int32)
    items = torch.randint(0, 40, (600,), generator=gen, dtype=torch.int32)
    ratings = torch.randint(1, 11, (600,), generator=gen).float() * 0.5
    config = TrainConfig(n_factors=4, implicit_weight=implicit_weight).with_prior()
    m = MatrixFactorization(50, 40, 4, float(ratings.mean()), init_std=0.5, generator=gen)
    solved = []
    for block_rows in (10**6, 16):
        monkeypatch.setattr(csr_module, "BLOCK_ROWS", block_rows)
        by_item, by_user = Csr(items, users, ratings, 40, 50), Csr(users, items, ratings, 50, 40)
        with torch.no_grad():
            item_side = als.solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, by_item,
                                        config)
            user_side = als.solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, by_user,
                                        config)
        assert len(by_user.plan) == (1 if block_rows > 50 else 4)
        solved.append(item_side + user_side)
    for one_block, blocks in zip(*solved):
        assert torch.allclose(one_block, blocks, atol=1e-5)


def test_sampled_choice_normaliser_is_importance_corrected():
    """With a sample of the catalogue the softmax normaliser is scaled by n_items / sample:
    when every film has the same logit the estimate is exact, whatever the sample."""
    from mfrec.training.adam import _choice_loss

    model = MatrixFactorization(5, 40, 3)
    with torch.no_grad():
        model.item_factors.zero_()
        model.item_logit_bias.fill_(0.7)
    users, items = torch.tensor([0, 1, 1, 4]), torch.tensor([3, 7, 9, 39])
    gen = torch.Generator().manual_seed(0)
    exact = _choice_loss(model, users, items, TrainConfig(implicit_items=0).with_prior(), gen)
    sampled = _choice_loss(model, users, items, TrainConfig(implicit_items=6).with_prior(), gen)
    assert torch.allclose(exact, torch.tensor(math.log(40.0))) and torch.allclose(sampled, exact)
    # With distinct logits a 6-film sample is only an estimate; the full catalogue is exact.
    torch.nn.init.normal_(model.item_factors, generator=gen)
    torch.nn.init.normal_(model.user_choice_factors, generator=gen)
    full = _choice_loss(model, users, items, TrainConfig(implicit_items=40).with_prior(), gen)
    reference = torch.mean(torch.logsumexp(model.choice_logits(users), 1)
                           - model.choice_logits(users).gather(1, items[:, None])[:, 0])
    assert torch.allclose(full, reference, atol=1e-6)


@pytest.mark.parametrize("implicit_weight, confidence", [(2.0, 5.0), (1.0, 1.0), (0.0, 5.0)])
def test_item_step_solves_the_normal_equations_written_out(implicit_weight, confidence, monkeypatch):
    """The item step's compact table (distinct entries only) gives the systems of the
    objective written out densely: sum over raters of f f^T + (w1 - w0) g g^T, plus w0 g g^T
    over every user and the prior, with f = (p, 1, 0) and g = (c, 0, 1)."""
    monkeypatch.setattr(csr_module, "BLOCK_ROWS", 6)
    gen = torch.Generator().manual_seed(7)
    n_users, n_items, k = 30, 20, 3
    users = torch.randint(0, n_users, (200,), generator=gen, dtype=torch.int32)
    items = torch.randint(0, n_items, (200,), generator=gen, dtype=torch.int32)
    pairs = torch.unique(users.long() * n_items + items.long())  # one rating per pair
    users, items = (pairs // n_items).int(), (pairs % n_items).int()
    ratings = torch.randint(1, 11, (len(pairs),), generator=gen).float() * 0.5
    p = torch.randn(n_users, k, generator=gen, dtype=torch.float64)
    c = torch.randn(n_users, k, generator=gen, dtype=torch.float64)
    b_u = torch.randn(n_users, generator=gen, dtype=torch.float64)
    config = TrainConfig(n_factors=k, implicit_weight=implicit_weight, confidence=confidence, reg=1.5, bias_reg=4.0)
    w0, w1 = implicit_weight, implicit_weight * confidence
    implicit = w0 > 0
    D = k + 2 if implicit else k + 1
    ones, zeros = torch.ones(n_users, 1, dtype=torch.float64), torch.zeros(n_users, 1, dtype=torch.float64)
    f = torch.cat([p, ones, zeros] if implicit else [p, ones], 1)
    g = torch.cat([c, zeros, ones], 1)
    # reg is per 8 factors: a k-factor row's penalty is reg * sqrt(k / 8).
    prior = torch.diag(torch.tensor([1.5 * math.sqrt(k / 8)] * k + [4.0] * (D - k), dtype=torch.float64))
    expected = []
    for i in range(n_items):
        raters = users[items == i].long()
        resid = ratings[items == i].double() - 3.0 - b_u[raters]
        A = prior + f[raters].T @ f[raters]
        b = f[raters].T @ resid
        if implicit:
            A = A + (w1 - w0) * g[raters].T @ g[raters] + w0 * g.T @ g
            b = b + w1 * g[raters].sum(0)
        expected.append(torch.linalg.solve(A, b))
    expected = torch.stack(expected)
    csr = Csr(items, users, ratings, n_items, n_users)
    factors, bias, choice_bias = als.solve_items(p.float(), c.float(), b_u.float(), 3.0, csr, config)
    assert torch.allclose(factors.double(), expected[:, :k], atol=1e-4)
    assert torch.allclose(bias.double(), expected[:, k], atol=1e-4)
    expected_choice = expected[:, k + 1] if implicit else torch.zeros(n_items, dtype=torch.float64)
    assert torch.allclose(choice_bias.double(), expected_choice, atol=1e-4)
