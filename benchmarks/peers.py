"""Peers on mfrec's own prepared split, each tuned on validation, scored by mfrec's metrics.

- :func:`ease`: EASE (Steck 2019), the closed-form item-item model ``B = I - P / diag(P)``
  with ``P = (X^T X + lambda I)^-1``; lambda chosen by validation NDCG@10, then refit on
  train+val and scored on test.
- :func:`implicit_als`: implicit's conjugate-gradient ALS (``pip install -e '.[bench]'``),
  its factors, regularization and alpha chosen on a grid by validation NDCG@10, refit on
  train+val, scored on test.
- :func:`sweep_times`: seconds per sweep of mfrec's ALS and implicit's CG ALS at the same k
  on the same ratings, interleaved in one process (ours fits two user vectors and biases,
  theirs one vector).

Ranking follows mfrec's protocol (:mod:`mfrec.evaluation.metrics`): every film of the
training side that the user has not rated is a candidate; relevant = held-out ratings >= 4.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mfrec.data.ids import IdIndex
from mfrec.evaluation import metrics

EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
IMPLICIT_GRID = {"factors": (64, 128), "regularization": (0.01, 0.1, 1.0), "alpha": (1.0, 5.0, 20.0)}
K = 10


class _Split:
    """Interactions of ``seen`` (what a model learns from) and the users/films to rank for ``heldout``."""

    def __init__(self, seen: pd.DataFrame, heldout: pd.DataFrame):
        import scipy.sparse as sp

        self.users, self.items = IdIndex(seen["userId"]), IdIndex(seen["movieId"])
        u, i = self.users.index(seen["userId"].to_numpy()), self.items.index(seen["movieId"].to_numpy())
        self.matrix = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(self.users), len(self.items)))
        self.matrix.sum_duplicates()
        self.matrix.data[:] = 1.0
        self.ranked, self.relevant = metrics.relevant_sets(heldout, self.users.index(heldout["userId"].to_numpy()),
                                                           self.items.index(heldout["movieId"].to_numpy()))

    def ndcg(self, top_items) -> float:
        return metrics.ranking_metrics(top_items, self.ranked, self.relevant, K)[f"ndcg_at_{K}"]


def _top_unseen(scores: np.ndarray, seen_rows, k: int) -> np.ndarray:
    """Top-k columns per row of ``scores`` with each row's seen columns (a CSR row set) excluded."""
    scores = scores.copy()
    rows = np.repeat(np.arange(seen_rows.shape[0]), np.diff(seen_rows.indptr))
    scores[rows, seen_rows.indices] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def _ease_scores(split: _Split, lam: float, users: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(split.matrix.toarray())
    gram = x.T @ x
    gram.diagonal().add_(lam)
    p = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    b = -p / p.diagonal()[None, :]
    b.diagonal().zero_()
    return (x[torch.from_numpy(users)] @ b).numpy()


def ease(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, lambdas=EASE_LAMBDAS) -> dict:
    """EASE with lambda chosen on ``val``, refit on train+val, NDCG@10 on ``test``."""
    started = time.perf_counter()
    fit = _Split(train, val)
    table = {}
    for lam in lambdas:
        scores = _ease_scores(fit, lam, fit.ranked)
        table[lam] = fit.ndcg(lambda rows, k: _top_unseen(scores, fit.matrix[rows], k))
    best = max(table, key=lambda lam: (table[lam], -lam))
    final = _Split(pd.concat([train, val], ignore_index=True), test)
    scores = _ease_scores(final, best, final.ranked)
    return {"lambda": best, "val_ndcg_at_10": table, "test_ndcg_at_10": final.ndcg(
        lambda rows, k: _top_unseen(scores, final.matrix[rows], k)), "items": len(final.items),
        "seconds": time.perf_counter() - started}


def _implicit_model(params: dict, seed: int, iterations: int = 15):
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(factors=params["factors"], regularization=params["regularization"],
                                   alpha=params["alpha"], iterations=iterations, use_cg=True,
                                   calculate_training_loss=False, random_state=seed)


def _implicit_ndcg(split: _Split, params: dict, seed: int) -> float:
    model = _implicit_model(params, seed)
    model.fit(split.matrix, show_progress=False)
    ids, _ = model.recommend(split.ranked, split.matrix[split.ranked], N=K, filter_already_liked_items=True)
    return split.ndcg(lambda rows, k: ids)


def implicit_als(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, grid: dict = IMPLICIT_GRID,
                 seed: int = 0) -> dict:
    """implicit's CG ALS with its settings chosen on ``val`` over ``grid``, refit on train+val,
    NDCG@10 on ``test``; ``{"skipped": reason}`` without implicit."""
    try:
        import implicit  # noqa: F401
        import threadpoolctl
    except ImportError as exc:
        return {"skipped": f"implicit not importable ({exc}); pip install -e '.[bench]'"}
    started = time.perf_counter()
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not BLAS's
        fit = _Split(train, val)
        trials = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        scored = [(_implicit_ndcg(fit, params, seed), params) for params in trials]
        best_val, best = max(scored, key=lambda t: t[0])
        test_ndcg = _implicit_ndcg(_Split(pd.concat([train, val], ignore_index=True), test), best, seed)
    return {"params": best, "val_ndcg_at_10": best_val, "test_ndcg_at_10": test_ndcg, "trials": len(trials),
            "seconds": time.perf_counter() - started}


def sweep_times(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int,
                factors: int, repeats: int = 3, seed: int = 0) -> dict:
    """Median seconds per sweep of mfrec's ALS (settings of the search's starting point) and
    of implicit's CG ALS at ``factors``, interleaved ``repeats`` times on the same ratings
    (the first sweep of each, which also builds matrices, not counted)."""
    import scipy.sparse as sp
    import threadpoolctl
    import torch

    from mfrec.data.ids import Interactions
    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit

    data = Interactions(users, items, ratings, n_users, n_items)
    config = TrainConfig(n_factors=factors, progress=False, seed=seed).with_prior()
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(n_users, n_items))
    try:
        import implicit  # noqa: F401
    except ImportError:
        implicit = None  # mfrec's sweeps alone (pip install -e '.[bench]' for the comparison)
    ours, theirs = [], []
    for _ in range(repeats):
        stamps = []
        fit(data, config, epochs=3, on_epoch=lambda record: stamps.append(time.perf_counter()))
        ours.append(float(np.median(np.diff(stamps))))
        if implicit is None:
            continue
        stamps = []
        with threadpoolctl.threadpool_limits(1, "blas"):
            _implicit_model({"factors": factors, "regularization": 0.1, "alpha": 1.0}, seed, iterations=3).fit(
                matrix, show_progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
        theirs.append(float(np.median(np.diff(stamps))))
    mfrec_sweep = float(np.median(ours))
    implicit_sweep = float(np.median(theirs)) if theirs else None
    return {"factors": factors, "als_solve": config.solve, "mfrec_sweep_seconds": mfrec_sweep,
            "implicit_sweep_seconds": implicit_sweep, "ratio": mfrec_sweep / implicit_sweep if theirs else None,
            "mfrec_runs": ours, "implicit_runs": theirs, "torch_threads": torch.get_num_threads()}


def sweep_comparison(scale: str, factors: list[int], workdir: Path, busy: bool = False, repeats: int = 2,
                     timeout: float | None = None) -> dict:
    """:func:`sweep_times` at each of ``factors`` on dataset ``scale``, in a fresh child process
    that loads only the raw arrays (and implicit's matrix), quiet or beside CPU-bound processes."""
    from benchmarks.contention import cpu_hogs
    from benchmarks.machine import child_env
    from benchmarks.scale import write_rating_arrays
    from mfrec.data.prepare import load_dataset

    loaded = load_dataset(scale, "", progress=False)
    with tempfile.TemporaryDirectory(prefix="mfrec-sweeps-", dir=workdir) as tmp:
        shape = write_rating_arrays(loaded.ratings, Path(tmp))
        del loaded
        cmd = [sys.executable, "-m", "benchmarks.peers", "sweep-child", tmp, ",".join(map(str, factors)), str(repeats)]
        with cpu_hogs() if busy else contextlib.nullcontext():
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"sweep child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"dataset": scale, **shape, "busy": busy, "by_factors": json.loads(proc.stdout.strip().splitlines()[-1])}


def _sweep_child(folder: str, factors: str, repeats: str) -> list:
    folder = Path(folder)
    shape = json.loads((folder / "shape.json").read_text())
    arrays = [np.load(folder / f"{name}.npy") for name in ("users", "items", "ratings")]
    return [sweep_times(*arrays, shape["users"], shape["items"], int(k), repeats=int(repeats))
            for k in factors.split(",")]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "sweep-child":
        print(json.dumps(_sweep_child(*sys.argv[2:])))
    else:
        print("usage: python -m benchmarks.peers sweep-child FOLDER K[,K...] REPEATS", file=sys.stderr)
        sys.exit(2)
