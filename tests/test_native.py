"""The native ALS kernels (mfrec/_native.c) against the torch steps they replace on a CPU,
and the refit that runs alongside the validation phase (training.EpochChoice)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mfrec import _build, als, native, scoring, workflow
from mfrec import train as training
from mfrec.interactions import IdIndex, Interactions
from mfrec.model import MatrixFactorization
from mfrec.train import EpochChoice, TrainConfig, fit

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels not built or MFREC_NATIVE=0")


def test_the_kernels_are_built():
    """`pip install -e .` compiles them (setup.py); CI must not fall back to torch silently."""
    if os.environ.get("MFREC_NATIVE") == "0":
        pytest.skip("turned off by MFREC_NATIVE=0")
    assert native.available()


def test_a_build_of_other_sources_is_refused(monkeypatch, tmp_path):
    """A kernel build whose arguments differ (stale after a `git pull`) would misread them."""
    if not native.available():
        pytest.skip("native kernels not built or MFREC_NATIVE=0")
    monkeypatch.setenv("MFREC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="is a build of other mfrec sources; .* is a build of other"):
            assert native.library() is None
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert native.available()


_SWEEP_IN_CHILD = """
import hashlib, warnings
import torch
from mfrec import als, native
from mfrec.model import MatrixFactorization
from mfrec.train import TrainConfig
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("origin:", native.origin())
for w in caught:
    print("warning:", w.message)
gen = torch.Generator().manual_seed(3)
users = torch.randint(0, 70, (900,), generator=gen, dtype=torch.int32)
items = torch.randint(0, 50, (900,), generator=gen, dtype=torch.int32)
ratings = torch.randint(1, 11, (900,), generator=gen).float() * 0.5
model = MatrixFactorization(70, 50, 5, float(ratings.mean()), generator=torch.Generator().manual_seed(0))
solver = als.AlsSolver(model, users, items, ratings, TrainConfig(n_factors=5))
losses = [solver.epoch() for _ in range(3)]
print("kernels:", "native" if solver.kernels is not None else "torch")
print("numbers:", hashlib.sha256(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().tobytes()
                                 + repr(losses).encode()).hexdigest())
"""


def _sweep_in_child(package_parent, cache, **env):
    """Three sweeps in a fresh process that imports mfrec from ``package_parent``: which
    kernels it found, any warning, and a digest of the resulting numbers."""
    done = subprocess.run([sys.executable, "-c", _SWEEP_IN_CHILD], cwd=package_parent, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "MFREC_CACHE_DIR": str(cache), "MFREC_NATIVE": "1", **env})
    assert done.returncode == 0, done.stderr
    return dict(line.split(": ", 1) for line in done.stdout.splitlines())


def _package_copy(tmp_path, source_change=""):
    """The mfrec package without its installed kernels, its C source changed by a comment
    (what a `git pull` does to an editable install: the installed build is now stale)."""
    copy = tmp_path / "project"
    shutil.copytree(Path(native.__file__).parent, copy / "mfrec", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    source = copy / "mfrec" / "_native.c"
    source.write_text(source.read_text() + source_change)
    return copy, _build.source_digest(source)


@needs_native
def test_first_use_compiles_kernels_for_changed_sources(tmp_path):
    """A stale or missing installed build (a `git pull`; `mlflow run .` from the project folder
    in a conda environment) is replaced by a build of the current source in the cache folder:
    compiled once (over a corrupt file left there), reused after, same numbers to the bit."""
    copy, digest = _package_copy(tmp_path, "/* changed after the install */\n")
    cache = tmp_path / "cache"
    built = cache / "native" / f"_native-{digest}-{platform.machine()}.so"
    built.parent.mkdir(parents=True, mode=0o700)
    built.write_bytes(b"half a library")
    first = _sweep_in_child(copy, cache)
    assert first["origin"] == str(built) and "warning" not in first and first["kernels"] == "native"
    stamp = built.stat().st_mtime_ns
    assert built.stat().st_mode & 0o777 == 0o755  # whatever the umask
    again = _sweep_in_child(copy, cache)
    assert again["origin"] == str(built) and built.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name]  # no temporary file left
    installed = _sweep_in_child(Path(native.__file__).parents[1], cache)
    assert installed["origin"] == native.origin() and installed["numbers"] == first["numbers"] == again["numbers"]


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_folder_others_can_write_to_is_not_loaded_from(tmp_path):
    """Loading a library runs its code: not from a folder another user could put one in."""
    copy, digest = _package_copy(tmp_path, "/* changed */\n")
    shared = tmp_path / "shared" / "native"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    out = _sweep_in_child(copy, shared.parent)
    assert out["origin"] == "None" and out["kernels"] == "torch"
    assert f"{shared} is writable by other users" in out["warning"]
    assert list(shared.iterdir()) == []  # nothing compiled into it either


@pytest.mark.skipif(not native._PINNED or not hasattr(os, "getuid"), reason="Linux: /proc/self/fd")
def test_a_shared_folder_above_the_cache_cannot_swap_the_build(tmp_path, monkeypatch):
    """Under a folder others can write to (a shared MFREC_CACHE_DIR), another user could rename
    the private native/ folder and put their own in its place mid-compile: every step goes
    through the folder as opened and checked, so the build is compiled and loaded from it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MFREC_CACHE_DIR", str(shared))
    digest = _build.source_digest()
    lib, why = native._cached(digest)
    built = shared / "native" / f"_native-{digest}-{platform.machine()}.so"
    assert why is None and lib.mfrec_path == str(built) and lib.mfrec_table_stride(1, 8, 1) > 0
    assert (shared / "native").stat().st_mode & 0o777 == 0o700
    # Without a descriptor to go through (not Linux), only paths: then no folder above may be shared.
    monkeypatch.setattr(native, "_PINNED", False)
    lib, why = native._cached(digest)
    assert lib is None and why == f"{shared} is writable by other users (set MFREC_CACHE_DIR to a private folder)"


def test_without_a_compiler_training_takes_the_torch_steps_and_says_why(tmp_path):
    copy, _ = _package_copy(tmp_path, "/* changed */\n")
    out = _sweep_in_child(copy, tmp_path / "cache", CC="/nonexistent/cc")
    assert out["origin"] == "None" and out["kernels"] == "torch"
    assert "compiling them failed" in out["warning"] and "/nonexistent/cc" in out["warning"] and "slower torch" in out["warning"]


def _ratings(n_users=70, n_items=50, n=900, half_stars=True, seed=3):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n,), generator=gen, dtype=torch.int32)
    items = torch.randint(0, n_items, (n,), generator=gen, dtype=torch.int32)
    stars = torch.randint(1, 11, (n,), generator=gen).float()
    ratings = stars * 0.5 if half_stars else stars * 0.37
    return users, items, ratings


def _sweeps(users, items, ratings, config, n_users, n_items, sweeps=3, **solver_args):
    model = MatrixFactorization(n_users, n_items, config.n_factors, float(ratings.mean()),
                                generator=torch.Generator().manual_seed(0))
    solver = als.AlsSolver(model, users, items, ratings, config, **solver_args)
    losses = [solver.epoch() for _ in range(sweeps)]
    return model, losses, solver


@needs_native
@pytest.mark.parametrize("implicit_weight", [2.0, 0.0])
@pytest.mark.parametrize("half_stars", [True, False])
@pytest.mark.parametrize("compact", [False, True])
def test_native_sweeps_match_the_torch_steps(implicit_weight, half_stars, compact, monkeypatch):
    """Same systems, same solutions: rating-only and joint objectives, one-byte and float
    ratings, int32 and two-byte column indices (several blocks for the torch steps)."""
    if compact:
        monkeypatch.setattr(als, "BLOCK_RATINGS", 200)
    users, items, ratings = _ratings(half_stars=half_stars)
    config = TrainConfig(n_factors=5, implicit_weight=implicit_weight, reg=1.5, bias_reg=3.0)
    fast, fast_losses, solver = _sweeps(users, items, ratings, config, 70, 50)
    assert solver.kernels is not None
    assert (solver.by_user.cols.dtype == torch.uint16) == compact
    slow, slow_losses, solver = _sweeps(users, items, ratings, config, 70, 50, native_kernels=False)
    assert solver.kernels is None
    assert np.allclose(fast_losses, slow_losses, rtol=1e-5)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    if implicit_weight == 0:
        assert not fast.user_choice_factors.any() and not fast.item_logit_bias.any()


@needs_native
@pytest.mark.parametrize("implicit_weight", [2.0, 0.0])
def test_fold_in_through_the_kernels_matches_the_torch_step(implicit_weight, monkeypatch):
    """Serving's fold-in solves its customers' user step through the kernels: the same
    answers as the torch step, for customers of 1 to 40 ratings of most of the catalogue."""
    users, items, ratings = _ratings()
    config = TrainConfig(n_factors=5, implicit_weight=implicit_weight, reg=1.5, bias_reg=3.0)
    model, _, _ = _sweeps(users, items, ratings, config, 70, 50)
    rng = np.random.default_rng(4)
    counts = [1, 3, 40, 7, 2]
    customers = np.repeat(np.arange(len(counts)), counts)
    rated = np.concatenate([rng.choice(45, c, replace=False) for c in counts])
    stars = rng.integers(1, 11, len(rated)) * 0.5
    fast = scoring.fold_in(model, customers, rated, stars, len(counts), config)
    monkeypatch.setattr(native, "library", lambda: None)
    slow = scoring.fold_in(model, customers, rated, stars, len(counts), config)
    for name in ("bias", "factors", "choice"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name), atol=1e-5, rtol=1e-5), name
    assert torch.equal(fast.choice, slow.choice) if implicit_weight == 0 else fast.choice.abs().max() > 0.01
    monkeypatch.undo()
    csr = als.Csr(torch.zeros(3, dtype=torch.int32), torch.arange(3, dtype=torch.int32), torch.tensor([4.0, 3.5, 1.0]), 1, 3)
    q = model.item_factors[:3]
    assert als._native_users(q, model.item_bias[:3], model.item_logit_bias[:3], model.global_mean, csr, config,
                             als.catalogue_terms(model.item_factors, model.item_logit_bias)) is not None


@needs_native
def test_threads_do_not_change_the_numbers():
    """Rows split over threads are computed exactly as on one thread."""
    users, items, ratings = _ratings(n=3000)
    config = TrainConfig(n_factors=4)
    one, one_losses, _ = _sweeps(users, items, ratings, config, 70, 50, threads=1)
    three, three_losses, solver = _sweeps(users, items, ratings, config, 70, 50, threads=3)
    assert len(solver.kernels.user_bounds) == 4 and len(solver.kernels.item_bounds) == 4
    for a, b in zip(one.parameters(), three.parameters()):
        assert torch.equal(a, b)
    assert np.allclose(one_losses, three_losses, rtol=1e-12)


@needs_native
def test_a_non_finite_rating_fails_the_sweep_loudly():
    users, items, ratings = _ratings()
    ratings[7] = float("nan")
    _, losses, _ = _sweeps(users, items, ratings, TrainConfig(n_factors=3), 70, 50, sweeps=1)
    assert not np.isfinite(losses[0])


@pytest.mark.parametrize("half_stars", [True, False])
def test_the_counting_sort_builds_the_same_matrix(half_stars, monkeypatch):
    users, items, ratings = _ratings(half_stars=half_stars)
    built = als.Csr(users, items, ratings, 70, 50)
    monkeypatch.setattr(native, "library", lambda: None)
    reference = als.Csr(users, items, ratings, 70, 50)
    assert torch.equal(built.crow, reference.crow)
    assert torch.equal(built.cols, reference.cols) and torch.equal(built.ratings, reference.ratings)
    assert built.scale == reference.scale == (0.5 if half_stars else 1.0)


@pytest.mark.parametrize("ids", [[5, 3, 3, 9, 0], [10**12, 4, 7, 7], [-2, 4, 4], []])
def test_id_index_lookup_table_and_binary_search_agree(ids):
    ids = np.array(ids, dtype=np.int64)
    index = IdIndex(ids)
    assert np.array_equal(index.ids, np.unique(ids))
    queries = np.concatenate([ids, [-5, 10**13, 7, 0, 2**40, 1]]).astype(np.int64)
    pos = np.searchsorted(index.ids, queries)
    expected = np.where((pos < len(index.ids)) & (index.ids[np.minimum(pos, max(len(index.ids) - 1, 0))] == queries)
                        if len(index.ids) else np.zeros(len(queries), bool), pos, -1)
    assert np.array_equal(index.index(queries), expected)


# ---------------------------------------------------------------- refit alongside validation

def _split(seed=0, n=4000, n_users=120, n_items=90):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    stars = np.clip(np.round((3.0 + (p[users] * q[items]).sum(1) + rng.normal(0, 0.5, n)) * 2) / 2, 0.5, 5)
    frame = pd.DataFrame({"userId": users + 1, "movieId": items + 1, "rating": stars, "timestamp": 0})
    frame = frame.drop_duplicates(["userId", "movieId"]).reset_index(drop=True)
    cut1, cut2 = int(len(frame) * 0.7), int(len(frame) * 0.85)
    movies = pd.DataFrame({"movieId": np.arange(1, n_items + 1), "title": [f"m{i}" for i in range(n_items)],
                           "genres": "Drama"})
    return frame.iloc[:cut1], frame.iloc[cut1:cut2], frame.iloc[cut2:], movies


@needs_native
@pytest.mark.parametrize("settings", [{}, {"n_factors": 24, "reg": 0.02, "patience": 2}])
def test_the_refit_alongside_is_the_refit_afterwards(settings, monkeypatch):
    """Same model, bit for bit, whether the refit ran alongside the validation phase or after
    it; the second setting overfits, so validation chooses an epoch before its last and the
    refit alongside has to go back to it."""
    train, val, test, movies = _split()
    config = TrainConfig(progress=False, epochs=25, **settings)
    threads = torch.get_num_threads()  # a served model in an earlier test may have set 1
    torch.set_num_threads(2)
    try:
        alongside = workflow.train_and_evaluate(train, val, test, movies, config)
    finally:
        torch.set_num_threads(threads)
    assert alongside.metrics["refit_alongside"] == 1.0
    if settings:
        assert alongside.best_epoch < alongside.metrics["epochs_run"]
    monkeypatch.setattr(training, "refit_alongside", lambda *args: False)
    with training.one_torch_thread():  # the same torch thread count as alongside
        after = workflow.train_and_evaluate(train, val, test, movies, config)
    assert after.metrics["refit_alongside"] == 0.0
    assert after.best_epoch == alongside.best_epoch
    for name, value in alongside.recommender.model.state_dict().items():
        assert torch.equal(value, after.recommender.model.state_dict()[name]), name
    for name in ("test_rmse", "test_ndcg_at_10", "best_val_rmse"):
        assert alongside.metrics[name] == after.metrics[name]


def _interactions(frame):
    users, items = IdIndex(frame["userId"]), IdIndex(frame["movieId"])
    return Interactions.from_frame(frame, users, items)


def test_a_follower_goes_back_to_the_chosen_epoch():
    """Driven by hand: the follower runs at most one epoch past what validation reported,
    keeps its recent states, and ends at the chosen epoch."""
    train, val, _, _ = _split()
    data = _interactions(pd.concat([train, val]))
    config = TrainConfig(progress=False, epochs=20, patience=3)
    choice, done, results = EpochChoice(), [], {}
    ran = threading.Semaphore(0)

    def follower():
        results["fit"] = fit(data, config, follow=choice, on_epoch=lambda record: (done.append(record["epoch"]),
                                                                                   ran.release()))

    thread = threading.Thread(target=follower)
    thread.start()
    for epoch in range(5):  # validation finished epochs 1..5: the follower may run 6
        choice.report(epoch)
        assert ran.acquire(timeout=30)
    choice.report(5)
    assert ran.acquire(timeout=30)
    assert not ran.acquire(timeout=0.2) and done == [1, 2, 3, 4, 5, 6]  # waits for epoch 6's report
    choice.choose(3)
    thread.join(timeout=30)
    got, reference = results["fit"], fit(data, config, epochs=3)
    assert got.best_epoch == 3 and len(got.history) == 3
    for name, value in got.model.state_dict().items():
        assert torch.equal(value, reference.model.state_dict()[name]), name


def _in_child(body: str) -> str:
    """Run ``body`` (with _split, training and workflow imported, and the refit forced to run
    alongside) in a child process; its stdout. A hang fails the test instead of the suite."""
    script = textwrap.dedent("""
        import sys, threading
        sys.path[:0] = [sys.argv[1], sys.argv[2]]
        import torch
        from test_native import _split
        from mfrec import train as training, workflow
        training.refit_alongside = lambda *args: True
        train, val, test, movies = _split()
    """) + textwrap.dedent(body)
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", script, here, os.path.dirname(here)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_failed_validation_phase_stops_the_refit():
    """No hang and no half-made model: the validation phase's error is what the caller sees,
    no refit thread is left, and torch's thread count is put back."""
    out = _in_child("""
        threads = torch.get_num_threads()
        def boom(record):
            if record["epoch"] == 2:
                raise RuntimeError("logging failed")
        try:
            workflow.train_and_evaluate(train, val, test, movies, training.TrainConfig(progress=False), on_epoch=boom)
        except RuntimeError as exc:
            print("raised:", exc)
        print("refit threads left:", [t.name for t in threading.enumerate() if t.name.startswith("mfrec-refit")])
        print("threads restored:", torch.get_num_threads() == threads)
    """)
    assert "raised: logging failed" in out
    assert "refit threads left: []" in out and "threads restored: True" in out


def test_a_validation_phase_refused_at_the_start_stops_the_refit():
    """Checks that fail before the first epoch (here: an empty training set) also release the
    refit waiting for it (it hung in the pool's shutdown before)."""
    out = _in_child("""
        try:
            workflow.train_and_evaluate(train.iloc[:0], val, test, movies, training.TrainConfig(progress=False))
        except training.TrainingError as exc:
            print("refused:", exc)
    """)
    assert "refused: the training set is empty" in out


def test_indices_past_the_tables_are_refused_before_any_kernel_runs():
    users, items, ratings = _ratings()
    with pytest.raises(ValueError, match="differ in length: 2, 900, 900"):
        als.Csr(users[:2], items, ratings, 70, 50)  # the native fill would read past the rows
    with pytest.raises(ValueError, match="row index is 69, past the matrix's 60 rows"):
        als.Csr(users, items, ratings, 60, 50)
    with pytest.raises(ValueError, match=r"column indices span 0\.\.49, outside the matrix's 40 columns"):
        als.Csr(users, items, ratings, 70, 40)
    data = Interactions(users.numpy(), items.numpy(), ratings.numpy(), 70, 30)
    with pytest.raises(training.TrainingError, match="index past their tables"):
        fit(data, TrainConfig(progress=False))


def test_refit_alongside_needs_two_torch_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not training.refit_alongside(TrainConfig(), 10_000)
        torch.set_num_threads(2)
        assert training.refit_alongside(TrainConfig(), 10_000) == native.available()
        assert not training.refit_alongside(TrainConfig(), als.SPLIT_RATINGS)  # phases split their rows instead
        assert not training.refit_alongside(TrainConfig(solver="adam"), 10_000)
    finally:
        torch.set_num_threads(threads)
