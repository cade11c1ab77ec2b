"""The ALS solvers: conjugate-gradient steps against the exact solve, frequency-scaled
penalties, column tiles and worker threads (each must give the one-block, one-thread,
exact answer it stands in for)."""

import math

import numpy as np
import pytest
import torch

import mfrec.training.csr as csr_module
from mfrec.data.ids import IdIndex, Interactions
from mfrec.errors import ConfigError
from mfrec.training import als, cg, parallel
from mfrec.training.config import TrainConfig
from mfrec.training.csr import Csr
from mfrec.training.fit import fit
from mfrec.training.model import MatrixFactorization
from mfrec.training.parallel import SERIAL, Workers


def _ratings(n_users=60, n_items=45, n=900, seed=3):
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.unique(torch.randint(0, n_users * n_items, (n,), generator=gen))
    users, items = (pairs // n_items).int(), (pairs % n_items).int()
    ratings = torch.randint(1, 11, (len(pairs),), generator=gen).float() * 0.5
    return users, items, ratings


def _model(n_users, n_items, k, mean, seed=5, dtype=torch.float64):
    m = MatrixFactorization(n_users, n_items, k, mean, init_std=0.3, generator=torch.Generator().manual_seed(seed))
    return m.to(dtype)


@pytest.mark.parametrize("implicit_weight, confidence", [(2.0, 4.0), (0.0, 4.0), (2.0, 1.0)])
@pytest.mark.parametrize("exponent", [0.0, 0.7])
def test_enough_cg_steps_solve_each_side_exactly(implicit_weight, confidence, exponent):
    """CG on a D-dimensional SPD system is exact after D steps: with that many steps, both CG
    steps give the exact steps' answers (float64), penalties per row included; also where
    the preconditioner's mean outer product is singular (a factor column at zero) or its
    choice part zero (confidence 1)."""
    users, items, ratings = _ratings()
    k = 5
    config = TrainConfig(n_factors=k, reg=1.3, reg_exponent=exponent, implicit_weight=implicit_weight,
                         confidence=confidence, bias_reg=2.0)
    by_user, by_item = Csr(users, items, ratings, 60, 45), Csr(items, users, ratings, 45, 60)
    user_reg = als.row_penalties(by_user.row_counts(), config.reg, exponent, k).double()
    item_reg = als.row_penalties(by_item.row_counts(), config.reg, exponent, k).double()
    weights = (config.implicit_weight, config.implicit_weight * config.confidence)
    m = _model(60, 45, k, float(ratings.mean()))
    with torch.no_grad():
        m.item_factors[:, 1] = 0.0  # a factor no item uses: E is singular there
        m.user_factors[:, 1] = 0.0
        exact_items = als.solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, by_item,
                                      config, row_reg=item_reg)
        start = tuple(t.clone() for t in (m.item_factors, m.item_bias, m.item_logit_bias))
        constant = als._item_constant(m.user_choice_factors, k, weights[0])
        cg_items = cg.solve_items(m.user_factors, m.user_choice_factors, m.user_bias, m.global_mean, by_item, weights,
                                  config.bias_reg, item_reg, constant, k + 3, start,
                                  counts=(by_item.row_counts().double(), by_user.row_counts().double()))
        for a, b in zip(exact_items, cg_items):
            assert torch.allclose(a, b, atol=1e-8)
        *exact_users, exact_sq = als.solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean,
                                                 by_user, config, row_reg=user_reg)
        start = tuple(t.clone() for t in (m.user_bias, m.user_factors, m.user_choice_factors))
        cg_sq = cg.solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, by_user, weights,
                               config.bias_reg, user_reg, k + 3, start,
                               counts=(by_user.row_counts().double(), by_item.row_counts().double()))
        for a, b in zip(exact_users, start):
            assert torch.allclose(a, b, atol=1e-8)
        assert math.isclose(float(exact_sq), float(cg_sq), rel_tol=1e-8)


def _objective(model, config, data) -> float:
    """The training objective (mfrec.training.als), summed densely (small problems only)."""
    u, i = torch.as_tensor(data.users, dtype=torch.long), torch.as_tensor(data.items, dtype=torch.long)
    r = torch.as_tensor(data.ratings, dtype=torch.float64)
    m = model.double()
    with torch.no_grad():
        rating = ((r - m(u, i)) ** 2).sum()
        w0, w1 = config.implicit_weight, config.implicit_weight * config.confidence
        scores = m.user_choice_factors @ m.item_factors.T + m.item_logit_bias
        chosen = torch.zeros_like(scores)
        chosen[u, i] = 1.0
        weight = torch.full_like(scores, w0)
        weight[u, i] = w1
        choice = (weight * (chosen - scores) ** 2).sum()
        reg_u = als.row_penalties(torch.bincount(u, minlength=data.n_users), config.reg, config.reg_exponent,
                                  config.n_factors)
        reg_i = als.row_penalties(torch.bincount(i, minlength=data.n_items), config.reg, config.reg_exponent,
                                  config.n_factors)
        penalty = (reg_u * (m.user_factors ** 2 + m.user_choice_factors ** 2).sum(1)).sum() + \
            (reg_i * (m.item_factors ** 2).sum(1)).sum()
        biases = config.bias_reg * (m.user_bias ** 2).sum() + config.bias_reg * (m.item_bias ** 2).sum() + \
            config.bias_reg * (m.item_logit_bias ** 2).sum()
    return float(rating + choice + penalty + biases)


@pytest.mark.parametrize("exponent", [0.0, 0.5])
def test_cg_sweeps_reach_the_exact_sweeps_objective(small_split, exponent):
    """Three CG steps a side and sweep (the default) converge to the objective the exact
    sweeps reach: within 0.1 % after 40 sweeps on 200 users of ml-latest-small at k=24."""
    train = small_split[0]
    train = train[train["userId"].isin(np.unique(train["userId"])[:200])]
    users, items = IdIndex(train["userId"]), IdIndex(train["movieId"])
    data = Interactions.from_frame(train, users, items)
    losses = {}
    for solve in ("exact", "cg"):
        config = TrainConfig(n_factors=24, als_solve=solve, reg_exponent=exponent, progress=False).with_prior()
        losses[solve] = _objective(fit(data, config, epochs=40).model, config, data)
    assert losses["cg"] == pytest.approx(losses["exact"], rel=1e-3)


def test_auto_solve_picks_by_factors():
    assert TrainConfig(n_factors=8).solve == "exact"
    assert TrainConfig(n_factors=64).solve == "cg"
    assert TrainConfig(n_factors=64, als_solve="exact").solve == "exact"
    # Decided by the config's own k, also after a replace (the sweep changes n_factors).
    from dataclasses import replace
    assert replace(TrainConfig(n_factors=8), n_factors=128).solve == "cg"
    assert TrainConfig(n_factors=64).as_params()["als_solve"] == "cg"


def test_row_penalties_scale_with_counts_and_factors():
    counts = torch.tensor([1, 4, 10, 25])  # mean 10
    flat = als.row_penalties(counts, 2.0, 0.0, 8)
    assert torch.allclose(flat, torch.full((4,), 2.0, dtype=torch.float64))
    # reg is per 8 factors: 32 factors double the penalty.
    assert torch.allclose(als.row_penalties(counts, 2.0, 0.0, 32), torch.full((4,), 4.0, dtype=torch.float64))
    scaled = als.row_penalties(counts, 2.0, 1.0, 8)
    assert torch.allclose(scaled, 2.0 * counts.double() / 10)
    # A new customer is scaled against the training users' mean, not their own.
    assert float(als.row_penalties(torch.tensor([5]), 2.0, 0.5, 8, mean_count=20.0)[0]) == pytest.approx(1.0)


def test_tiled_blocks_give_the_untiled_products():
    users, items, ratings = _ratings(n_users=40, n_items=300, n=3000)
    plain, tiled = Csr(users, items, ratings, 40, 300), Csr(users, items, ratings, 40, 300)
    plain.plan_blocks(min_blocks=1)
    tiled.plan_blocks(tile_cols=37)
    assert len(tiled.plan[0][4]) == 9  # ceil(300 / 37) tiles
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(300, 6, generator=gen)
    bias = torch.randn(300, generator=gen)
    rows = torch.randn(40, 6, generator=gen)
    (_, a), (_, b) = next(plain.blocks()), next(tiled.blocks())
    assert torch.allclose(a.pattern_product(table), b.pattern_product(table), atol=1e-5)
    product_a, sq_a = a.residual_product(3.0, bias, table)
    product_b, sq_b = b.residual_product(3.0, bias, table)
    assert torch.allclose(product_a, product_b, atol=1e-4) and torch.isclose(sq_a, sq_b)
    # Per-rating values come in each block's storage order: sums over them agree.
    dots_a, dots_b = a.dots(rows, table.T), b.dots(rows, table.T)
    assert torch.isclose(dots_a.sum(), dots_b.sum(), rtol=1e-5)
    assert torch.allclose(a.product(dots_a, table), b.product(dots_b, table), atol=1e-3)
    # A row's value spread over its ratings, in tile order: the same per-row sums, and in
    # a product it is the row's scale of that row's result.
    scale = torch.randn(40, generator=gen)
    for block in (a, b):
        spread = block.spread(scale)
        assert torch.allclose(block.product(spread, table), scale[:, None] * block.pattern_product(table), atol=1e-4)
    with pytest.raises(RuntimeError, match="plan its blocks once"):
        tiled.plan_blocks(tile_cols=37)


def test_sampled_products_refuse_more_ratings_than_cells():
    """A tile holding more ratings than it has cells (a pair rated again and again) is
    refused with a message, not written past the cells torch sizes its result to."""
    users = torch.arange(8, dtype=torch.int32).repeat_interleave(10)
    matrix = Csr(users, torch.zeros(80, dtype=torch.int32), torch.ones(80), 8, 1)
    _, block = next(matrix.blocks())
    with pytest.raises(ValueError, match="more than once"):
        block.dots(torch.randn(8, 4), torch.randn(4, 1))


def test_cg_user_step_reports_the_error_at_its_new_factors(monkeypatch):
    """The CG user step's squared rating error is followed through its steps (no pass over
    the ratings after them): it is the error of the factors it wrote, over several blocks
    of column tiles."""
    monkeypatch.setattr(csr_module, "MIN_BLOCK_RATINGS", 256)
    users, items, ratings = _ratings(n_users=40, n_items=300, n=3000)
    by_user = Csr(users, items, ratings, 40, 300)
    by_user.plan_blocks(tile_cols=37, min_blocks=4)
    assert len(by_user.plan) >= 3 and len(by_user.plan[0][4]) > 1
    k, reg = 6, als.row_penalties(by_user.row_counts(), 2.0, 0.5, 6).double()
    m = _model(40, 300, k, float(ratings.mean()))
    counts = (by_user.row_counts().double(), torch.bincount(items, minlength=300).double())
    with torch.no_grad():
        out = tuple(t.clone() for t in (m.user_bias, m.user_factors, m.user_choice_factors))
        sq = cg.solve_users(m.item_factors, m.item_bias, m.item_logit_bias, m.global_mean, by_user, (2.0, 10.0),
                            1.0, reg, 2, out, counts=counts)
        bias, factors = out[0], out[1]
        assert not torch.allclose(factors, m.user_factors)  # the step moved them
        u, i = users.long(), items.long()
        error = ratings.double() - (m.global_mean + bias[u] + m.item_bias[i] + (factors[u] * m.item_factors[i]).sum(1))
    assert math.isclose(float(sq), float((error ** 2).sum()), rel_tol=1e-9)


def test_wide_tiled_matrix_keeps_two_byte_columns(monkeypatch):
    """More than 2^16 columns, tiled: tile-local column indices in two bytes, regrouped a few
    ratings at a time, give the untiled matrix's products; the widest block takes the pattern
    product's shared ones."""
    monkeypatch.setattr(csr_module, "BLOCK_RATINGS", 500)
    monkeypatch.setattr(csr_module, "TILE_CHUNK", 97)  # chunks that split rows
    gen = torch.Generator().manual_seed(4)
    n_rows, n_cols, n = 30, 200_000, 2400
    rows = torch.randint(0, n_rows, (n,), generator=gen, dtype=torch.int32)
    cols = torch.randint(0, n_cols, (n,), generator=gen, dtype=torch.int32)
    ratings = torch.randint(1, 11, (n,), generator=gen).float() * 0.5
    plain, tiled = Csr(rows, cols, ratings, n_rows, n_cols), Csr(rows, cols, ratings, n_rows, n_cols)
    assert tiled.cols.dtype == torch.int32
    plain.plan_blocks(min_blocks=1, max_ratings=n)
    tiled.plan_blocks(tile_cols=30_000, min_blocks=1, max_ratings=n)
    assert tiled.cols.dtype == torch.uint16 and len(tiled.plan[0][4]) == 7  # ceil(200,000 / 30,000) tiles
    assert int(tiled.cols.int().max()) < 30_000 and len(tiled.ones) == n
    table = torch.randn(n_cols, 5, generator=gen)
    bias = torch.randn(n_cols, generator=gen)
    (_, a), (_, b) = next(plain.blocks()), next(tiled.blocks())
    assert torch.allclose(a.pattern_product(table), b.pattern_product(table), atol=1e-5)
    product_a, sq_a = a.residual_product(3.0, bias, table)
    product_b, sq_b = b.residual_product(3.0, bias, table)
    assert torch.allclose(product_a, product_b, atol=1e-4) and torch.isclose(sq_a, sq_b)
    # Each tile keeps its rows in order, and the ratings travel with their columns.
    for crow, start, end, first, last in tiled.plan[0][4]:
        counts = (crow[1:] - crow[:-1]).long()
        tile_rows = torch.repeat_interleave(torch.arange(n_rows), counts)
        tile_cols = tiled.cols[start:end].long() + first
        assert torch.all(tile_cols < last)
        expected = sorted(zip(rows.tolist(), cols.tolist(), (ratings * 2).long().tolist()))
        inside = [e for e in expected if first <= e[1] < last]
        got = sorted(zip(tile_rows.tolist(), tile_cols.tolist(), tiled.ratings[start:end].long().tolist()))
        assert got == inside


def test_workers_take_items_as_they_free_up():
    """Results come in order, and a long generator is not drawn ahead of the workers (each
    block holds temporaries of its own)."""
    workers = Workers(2)
    drawn, finished = [0], []

    def items():
        for i in range(40):
            drawn[0] += 1
            assert drawn[0] - len(finished) <= 2 * workers.n + 1
            yield (i,)

    def work(i):
        finished.append(i)
        return i * i

    try:
        assert workers.map(work, items()) == [i * i for i in range(40)]
    finally:
        workers.close()


def test_a_failed_block_stops_the_rest():
    """Once a block fails, blocks not yet started are not run (they would write into the model
    after the caller has the error)."""
    import threading
    import time
    workers, started, lock = Workers(2), [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.01)
        if i == 3:
            raise ValueError("block 3 failed")
        return i

    try:
        with pytest.raises(ValueError, match="block 3 failed"):
            workers.map(work, ((i,) for i in range(40)))
        seen = len(started)
        time.sleep(0.2)
        assert len(started) == seen and seen <= 3 + 2 * workers.n + 1
    finally:
        workers.close()


def test_tiled_block_without_ratings_multiplies_to_zeros():
    """A tiled block whose rows have no ratings here (a shard's rows, cut by every rank's
    counts) gives zero sums, not an error."""
    rows = torch.tensor([0, 0, 1, 5], dtype=torch.int32)
    cols = torch.tensor([1, 40, 3, 70], dtype=torch.int32)
    csr = Csr(rows, cols, torch.tensor([4.0, 3.0, 5.0, 2.0]), 6, 80)
    everyone = torch.tensor([2, 2, 3, 3, 3, 2])  # what every rank's ratings count per row
    csr.plan_blocks(everyone, tile_cols=32, max_ratings=5)
    parts = list(csr.blocks())
    table = torch.randn(80, 3, generator=torch.Generator().manual_seed(0))
    empty = [part for _, part in parts if len(part.cols) == 0]
    assert empty and all(torch.equal(part.pattern_product(table), torch.zeros(part.shape[0], 3)) for part in empty)
    total = torch.cat([part.pattern_product(table) for _, part in parts])
    dense = torch.zeros(6, 80).index_put_((rows.long(), cols.long()), torch.ones(4), accumulate=True)
    assert torch.allclose(total, dense @ table, atol=1e-6)


@pytest.mark.parametrize("solve", ["exact", "cg"])
def test_worker_threads_give_the_one_thread_sweep(solve, monkeypatch):
    """Blocks solved on two worker threads give the serial sweep's numbers, bit for bit."""
    monkeypatch.setattr(csr_module, "BLOCK_ROWS", 7)
    users, items, ratings = _ratings()
    config = TrainConfig(n_factors=6, als_solve=solve).with_prior()
    results = []
    for workers in (SERIAL, Workers(2)):
        m = _model(60, 45, 6, float(ratings.mean()), dtype=torch.float32)
        solver = als.AlsSolver(m, users, items, ratings, config, workers=workers)
        losses = [solver.epoch() for _ in range(3)]
        results.append((losses, [t.detach().clone() for t in m.parameters()]))
        workers.close()
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_threads_setting(monkeypatch):
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.available_threads() == 3
    before = torch.get_num_threads()
    with parallel.workers_for(torch.device("cpu"), 10**7) as workers:
        assert workers.n == 3 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with parallel.workers_for(torch.device("cpu"), 1000) as workers:  # a small fit: one thread
        assert workers.n == 1
    monkeypatch.setenv(parallel.ENV, "many")
    with pytest.raises(ConfigError, match="MFREC_THREADS must be a whole number >= 1, got 'many'"):
        parallel.available_threads()


def test_job_workers_take_torchs_threads_and_give_them_back(monkeypatch):
    """A ranking's workers: two jobs get two workers with torch one-threaded, then torch as it
    was; inside a fit's one-thread stretch a ranking runs in its caller."""
    monkeypatch.setenv(parallel.ENV, "2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with parallel.job_workers(2) as workers:
            assert workers.n == 2 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with parallel.job_workers(1) as workers:
            assert workers.n == 1 and torch.get_num_threads() == 2
        with parallel.one_torch_thread():
            with parallel.job_workers(4) as workers:
                assert workers.n == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("in_order", [False, True])
def test_workers_build_the_one_thread_matrix(monkeypatch, in_order):
    """Built by three workers -- each placing a part of the ratings, then tiling whole blocks --
    a matrix holds the same columns, rating codes, row pointers, tiles and input positions
    (``origin``), in the same order, as built in one thread (rows sorted or not; parts that
    split rows and chunks); each stored rating's origin is the input rating it holds."""
    monkeypatch.setattr(csr_module, "BLOCK_RATINGS", 600)
    monkeypatch.setattr(csr_module, "BUILD_CHUNK", 53)
    monkeypatch.setattr(csr_module, "TILE_CHUNK", 71)
    gen = torch.Generator().manual_seed(8)
    n_rows, n_cols, n = 90, 500, 2000
    rows = torch.randint(0, n_rows, (n,), generator=gen, dtype=torch.int32)
    rows = torch.sort(rows).values if in_order else rows
    cols = torch.randint(0, n_cols, (n,), generator=gen, dtype=torch.int32)
    ratings = torch.randint(1, 11, (n,), generator=gen).float() * 0.5
    workers = Workers(3)
    try:
        one = Csr(rows, cols, ratings, n_rows, n_cols, origin=True)
        three = Csr(rows, cols, ratings, n_rows, n_cols, workers, origin=True)
        assert torch.equal(one.cols, three.cols) and torch.equal(one.ratings, three.ratings)
        assert torch.equal(one.origin, three.origin)
        assert torch.equal(one.crow, three.crow)
        one.plan_blocks(tile_cols=64, min_blocks=4)
        three.plan_blocks(tile_cols=64, min_blocks=4, workers=workers)
    finally:
        workers.close()
    assert len(one.plan) > 3 and torch.equal(one.cols, three.cols) and torch.equal(one.ratings, three.ratings)
    assert torch.equal(one.origin, three.origin)
    assert torch.equal(torch.sort(one.origin).values, torch.arange(n, dtype=one.origin.dtype))
    for first, part in three.blocks():
        for crow, start, end, col0, _ in part.tiles:
            at = three.origin[part.slots][start:end].long()
            stored_rows = torch.repeat_interleave(torch.arange(part.shape[0]), (crow[1:] - crow[:-1]).long()) + first
            assert torch.equal(rows[at].long(), stored_rows) and torch.equal(cols[at].long(), part.cols[start:end].long() + col0)
            assert torch.equal(ratings[at], part.ratings[start:end].float() * three.scale)
    for a, b in zip(one.plan, three.plan):
        assert a[:4] == b[:4] and len(a[4]) == len(b[4]) > 1
        for tile_a, tile_b in zip(a[4], b[4]):
            assert torch.equal(tile_a[0], tile_b[0]) and tile_a[1:] == tile_b[1:]
    # ... and the ratings are each row's, in input order within a row.
    order = torch.argsort(rows, stable=True)
    plain = Csr(rows, cols, ratings, n_rows, n_cols, workers=None)
    assert torch.equal(plain.cols.long(), cols[order].long()) and torch.equal(plain.ratings.float() * plain.scale,
                                                                              ratings[order])


def test_fits_of_one_data_set_share_its_matrices():
    """The settings search's trials hand fit one dict: the first fit builds the rating matrices
    into it, later fits with the same layout reuse them (same objects) and give the models a
    fit of their own would; another layout (CG's) replaces them."""
    users, items, ratings = _ratings(n_users=80, n_items=50, n=1500)
    data = Interactions(users.numpy(), items.numpy(), ratings.numpy(), 80, 50)
    base = TrainConfig(n_factors=4, epochs=3, progress=False).with_prior()
    store = {}
    first = fit(data, base, matrices=store)
    (layout, built), = store.items()
    for reg in (base.reg, 7.0):
        config = TrainConfig(n_factors=4, epochs=3, progress=False, reg=reg).with_prior()
        shared, own = fit(data, config, matrices=store), fit(data, config)
        assert store == {layout: built} and store[layout] is built
        for name, value in own.model.state_dict().items():
            assert torch.equal(value, shared.model.state_dict()[name]), name
        assert [r["train_loss"] for r in own.history] == [r["train_loss"] for r in shared.history]
    assert torch.equal(first.model.user_factors, fit(data, base).model.user_factors)
    fit(data, TrainConfig(n_factors=4, epochs=3, progress=False, als_solve="cg").with_prior(), matrices=store)
    assert list(store) != [layout] and len(store) == 1


@pytest.mark.parametrize("implicit_weight", [2.0, 0.0])
def test_cg_sweeps_hand_on_the_predictions_they_move(monkeypatch, implicit_weight):
    """CG's steps read the per-rating residuals and choice predictions the other side's step
    moved (through the by-item to by-user link) instead of recomputing them: after several
    sweeps over blocks of column tiles, with two workers, they are the model's own, and the
    sweeps' losses are those of steps that recompute them; a write to the model between
    sweeps has them recomputed."""
    monkeypatch.setattr(csr_module, "MIN_BLOCK_RATINGS", 256)
    monkeypatch.setattr(Csr, "tile_width", staticmethod(lambda width, size=4: 37))
    users, items, ratings = _ratings(n_users=70, n_items=300, n=4000)
    config = TrainConfig(n_factors=7, als_solve="cg", reg_exponent=0.5, implicit_weight=implicit_weight,
                         progress=False).with_prior()
    losses, workers = {}, Workers(2)
    for tracked in (False, True):
        m = _model(70, 300, 7, float(ratings.mean()), dtype=torch.float32)
        solver = als.AlsSolver(m, users, items, ratings, config, workers=workers)
        assert len(solver.by_user.plan) > 2 and len(solver.by_user.plan[0][4]) > 1
        assert len(solver.by_item.plan) > 2 and len(solver.by_item.plan[0][4]) > 1
        if not tracked:
            solver.predictions = None
        losses[tracked] = [solver.epoch() for _ in range(6)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    with torch.no_grad():
        m.item_bias.add_(0.3)
        m.user_choice_factors.mul_(0.5)
    solver.epoch()
    workers.close()
    u, i = users.long(), items.long()
    with torch.no_grad():
        error = ratings - (m.global_mean + m.user_bias[u] + m.item_bias[i] + (m.user_factors[u] * m.item_factors[i]).sum(1))
        choice = m.item_logit_bias[i] + (m.user_choice_factors[u] * m.item_factors[i]).sum(1)
    # Stored in the by-user matrix's order: each rating's place there from its (user, item).
    place = {}
    for first, part in solver.by_user.blocks():
        for crow, start, end, col0, _ in part.tiles:
            rows = torch.repeat_interleave(torch.arange(part.shape[0]), crow[1:] - crow[:-1]) + first
            cols = part.cols[start:end].long() + col0
            for slot, pair in zip(range(part.slots.start + start, part.slots.start + end), zip(rows, cols)):
                place[(int(pair[0]), int(pair[1]))] = slot
    slots = torch.tensor([place[(int(a), int(b))] for a, b in zip(users, items)])
    assert torch.allclose(solver.predictions.error[slots], error, atol=1e-4)
    if implicit_weight:
        assert torch.allclose(solver.predictions.choice[slots], choice, atol=1e-4)
    else:
        assert solver.predictions.choice is None
