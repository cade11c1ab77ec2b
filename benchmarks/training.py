"""Training time and accuracy on one split: the original notebook's loop, mfrec, Surprise's SVD.

- :func:`notebook_benchmark`: the notebook's training loop reproduced as it was (a per-row
  ``Dataset``, ``DataLoader(batch_size=128, shuffle=True)``, ``nn.Embedding(n, 8)`` dot product
  without biases, ``MSELoss``, ``Adam(lr=1e-3)``, ``loss.item()`` per batch), timed per epoch;
  the 128-epoch time is extrapolated unless all 128 epochs are run.
- :func:`mfrec_benchmark`: ``workflow.train_and_evaluate`` with the given (default) config.
- :func:`surprise_benchmark`: Surprise's SVD on the same split, when ``surprise`` imports.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pandas as pd

NOTEBOOK_EPOCHS = 128  # the notebook's full run
# Each fit is timed this many times and compared by median: a ~0.1 s fit moves with the machine's load.
TIMING_REPEATS = 3


def _notebook_classes():
    """The notebook's Dataset and model, defined lazily so importing this module skips torch."""
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    class RatingsDataset(Dataset):
        """One (user, item, rating) per row, as the notebook's loader did."""

        def __init__(self, users, items, ratings):
            self.users = torch.tensor(users, dtype=torch.long)
            self.items = torch.tensor(items, dtype=torch.long)
            self.ratings = torch.tensor(ratings, dtype=torch.float32)

        def __len__(self):
            return len(self.ratings)

        def __getitem__(self, idx):
            return self.users[idx], self.items[idx], self.ratings[idx]

    class DotMF(nn.Module):
        """Plain dot-product MF: default-initialised embeddings, no biases."""

        def __init__(self, n_users, n_items, n_factors=8):
            super().__init__()
            self.user_factors = nn.Embedding(n_users, n_factors)
            self.item_factors = nn.Embedding(n_items, n_factors)

        def forward(self, user, item):
            return (self.user_factors(user) * self.item_factors(item)).sum(1)

    return RatingsDataset, DotMF


def notebook_benchmark(train: pd.DataFrame, test: pd.DataFrame, epochs: int = 3, seed: int = 0,
                       batch_size: int = 128, lr: float = 1e-3, n_factors: int = 8,
                       full_epochs: int = NOTEBOOK_EPOCHS) -> dict:
    """Train the notebook's model for ``epochs`` epochs on ``train``; time each, score ``test``.

    Ids are numbered over train and test together, as the notebook numbered the whole ratings
    file, so every test row has an embedding (an id seen only in test keeps its random init).
    Test RMSE is of the raw, unclipped dot products, as the notebook computed it.
    """
    import torch
    from torch.utils.data import DataLoader

    if epochs < 1:
        raise ValueError(f"notebook epochs must be >= 1, got {epochs}")
    RatingsDataset, DotMF = _notebook_classes()
    user_ids = np.unique(np.concatenate([train["userId"].to_numpy(), test["userId"].to_numpy()]))
    item_ids = np.unique(np.concatenate([train["movieId"].to_numpy(), test["movieId"].to_numpy()]))

    def encode(df):
        return (np.searchsorted(user_ids, df["userId"].to_numpy()),
                np.searchsorted(item_ids, df["movieId"].to_numpy()),
                df["rating"].to_numpy(np.float32))

    torch.manual_seed(seed)
    dataset = RatingsDataset(*encode(train))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = DotMF(len(user_ids), len(item_ids), n_factors)
    loss_fn = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    epoch_seconds, epoch_loss = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        losses = []
        for users, items, ratings in loader:
            optimizer.zero_grad()
            outputs = model(users, items)
            loss = loss_fn(outputs.squeeze(), ratings.type(torch.float32))
            losses.append(loss.item())
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
        epoch_loss.append(float(np.mean(losses)))

    model.eval()
    tu, ti, tr = encode(test)
    with torch.no_grad():
        pred = model(torch.tensor(tu, dtype=torch.long), torch.tensor(ti, dtype=torch.long)).numpy()
    test_rmse = float(np.sqrt(np.mean((pred - tr) ** 2)))
    per_epoch = float(np.mean(epoch_seconds))
    measured_full = epochs >= full_epochs
    return {
        "epochs_run": epochs,
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "batch_size": batch_size,
        "lr": lr,
        "n_factors": n_factors,
        "epoch_seconds": epoch_seconds,
        "epoch_train_loss": epoch_loss,
        "mean_epoch_seconds": per_epoch,
        "full_epochs": full_epochs,
        # Measured when all epochs ran, else mean epoch time x full_epochs.
        "full_run_seconds": (float(sum(epoch_seconds[:full_epochs])) if measured_full
                             else per_epoch * full_epochs),
        "full_run_seconds_is_extrapolated": not measured_full,
        "test_rmse": test_rmse,
        "ratings_per_second": len(train) / per_epoch,
    }


def mfrec_benchmark(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, movies: pd.DataFrame,
                    config=None, repeats: int = TIMING_REPEATS, scratch_fit: bool = True) -> tuple[dict, object]:
    """``train_and_evaluate`` (the settings search with its validation epoch choice, then
    that fit continued on train+val), run ``repeats`` times; the times are those of the run
    with the median ``train_seconds``.

    Returns the figures and the :class:`~mfrec.workflow.TrainOutcome` (its recommender is what
    the REST benchmark serves; same seed, so every run gives the same model). A sweep's time
    comes from ``fit_seconds``: one ``fit()`` from scratch on train+val with the chosen
    settings for the chosen sweep count (median of ``repeats``), what a peer's fit is
    compared with; ``scratch_fit=False`` skips it (and the figures derived from it) for
    callers that time the train step alone.
    """
    from mfrec.data.ids import IdIndex, Interactions
    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit
    from mfrec.training.parallel import threads_for
    from mfrec.workflow import train_and_evaluate

    config = config or TrainConfig(progress=False)
    runs = []
    for _ in range(max(1, repeats)):
        outcome = train_and_evaluate(train, val, test, movies, config)
        runs.append({name: float(outcome.metrics[name])
                     for name in ("train_seconds", "search_seconds", "select_seconds", "refit_seconds",
                                  "refit_fit_seconds", "evaluate_seconds")})
    median_run = sorted(runs, key=lambda r: r["train_seconds"])[(len(runs) - 1) // 2]
    m = outcome.metrics
    timed = {}
    if scratch_fit:
        frame = pd.concat([train, val], ignore_index=True)
        data = Interactions.from_frame(frame, IdIndex(frame["userId"]), IdIndex(frame["movieId"]))
        with threads_for(len(train)):
            fits = sorted(fit(data, outcome.config, epochs=max(int(m["best_epoch"]), 1)).seconds
                          for _ in range(max(1, repeats)))
        fit_seconds = fits[(len(fits) - 1) // 2]
        # A sweep's time: that fit (fixed settings and sweep count, no validation) per sweep.
        sweep = fit_seconds / max(int(m["best_epoch"]), 1)
        timed = {"median_epoch_seconds": sweep, "fit_seconds": fit_seconds,
                 "ratings_per_second": (len(train) + len(val)) / sweep}
    figures = {
        "config": config.as_params(),
        "train_rows": int(len(train)),
        "val_rows": int(len(val)),
        "refit_rows": int(len(train) + len(val)),
        "test_rows": int(len(test)),
        "epochs_run": int(m["epochs_run"]),
        "best_epoch": int(m["best_epoch"]),
        **timed,
        "refit_sweeps": int(m["refit_sweeps"]),
        "search_trials": int(m.get("search_trials", 0)),
        "repeats": len(runs),
        **median_run,
        "train_seconds_runs": [r["train_seconds"] for r in runs],
        "test_rmse": float(m["test_rmse"]),
        "test_mae": float(m["test_mae"]),
        "test_ndcg_at_10": float(m["test_ndcg_at_10"]),
        "device": outcome.device,
    }
    return figures, outcome


def compare(notebook: dict, mfrec: dict, surprise: Optional[dict] = None) -> dict:
    """The headline ratios: notebook time over mfrec's (whole training, and per epoch);
    Surprise's fit time over mfrec's (> 1: mfrec is faster), when Surprise ran."""
    out = {
        "notebook_full_over_mfrec_train": notebook["full_run_seconds"] / mfrec["train_seconds"],
        "notebook_epoch_over_mfrec_epoch": notebook["mean_epoch_seconds"] / mfrec["median_epoch_seconds"],
        "rmse_notebook_minus_mfrec": notebook["test_rmse"] - mfrec["test_rmse"],
    }
    if surprise and "fit_seconds" in surprise:
        out["surprise_fit_over_mfrec_train"] = surprise["fit_seconds"] / mfrec["train_seconds"]
        # Like for like: a fit from scratch with fixed settings on train+val, without preparing the data.
        out["surprise_fit_over_mfrec_fit"] = surprise["fit_seconds"] / mfrec["fit_seconds"]
        out["rmse_surprise_minus_mfrec"] = surprise["test_rmse"] - mfrec["test_rmse"]
    return out


def surprise_benchmark(train: pd.DataFrame, test: pd.DataFrame, seed: int = 0, n_factors: int = 8,
                       rating_scale: tuple = (0.5, 5.0), repeats: int = TIMING_REPEATS) -> dict:
    """Surprise SVD (``n_factors``, defaults otherwise) fit on ``train``, RMSE on ``test``;
    the fit runs ``repeats`` times (a fresh, equally seeded model each) and its time is the
    median, as for mfrec.

    Returns ``{"skipped": reason}`` when ``scikit-surprise`` is not importable (``pip install
    -e '.[bench]'``).
    """
    try:
        from surprise import SVD, Dataset, Reader, accuracy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a numpy ABI mismatch
        return {"skipped": f"scikit-surprise not importable ({type(exc).__name__}: {exc}); "
                           "pip install -e '.[bench]'"}
    import surprise

    cols = ["userId", "movieId", "rating"]
    reader = Reader(rating_scale=tuple(float(x) for x in rating_scale))
    started = time.perf_counter()
    trainset = Dataset.load_from_df(train[cols], reader).build_full_trainset()
    build = time.perf_counter() - started
    fit_runs = []
    for _ in range(max(1, repeats)):
        algo = SVD(n_factors=n_factors, random_state=seed)
        started = time.perf_counter()
        algo.fit(trainset)
        fit_runs.append(time.perf_counter() - started)
    testset = list(zip(test["userId"].tolist(), test["movieId"].tolist(), test["rating"].astype(float).tolist()))
    started = time.perf_counter()
    predictions = algo.test(testset)
    predict_seconds = time.perf_counter() - started
    return {
        "version": surprise.__version__,
        "n_factors": n_factors,
        "n_epochs": algo.n_epochs,
        "random_state": seed,
        "train_rows": int(len(train)),
        "test_rows": int(len(test)),
        "build_seconds": build,
        "fit_seconds": float(np.median(fit_runs)),
        "fit_seconds_runs": fit_runs,
        "predict_seconds": predict_seconds,
        "test_rmse": float(accuracy.rmse(predictions, verbose=False)),
        "test_mae": float(accuracy.mae(predictions, verbose=False)),
    }
