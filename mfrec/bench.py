"""Benchmark measurements (issue 7): the notebook loop vs mfrec, Surprise, scale, REST load.

Everything here returns plain JSON-able dicts and imports no MLflow; ``entrypoints.benchmark``
runs the pieces, starts the model servers, logs and prints the table. Nothing asserts timings:
these functions measure, callers judge.

- :func:`notebook_benchmark`: the original notebook's training loop reproduced as it was (a
  per-row ``Dataset``, ``DataLoader(batch_size=128, shuffle=True)``, ``nn.Embedding(n, 8)``
  dot product without biases, ``MSELoss``, ``Adam(lr=1e-3)``, ``loss.item()`` per batch),
  timed per epoch; the 128-epoch time is extrapolated unless all 128 epochs are run.
- :func:`mfrec_benchmark`: ``workflow.train_and_evaluate`` with the given (default) config.
- :func:`surprise_benchmark`: Surprise's SVD on the same split, when ``surprise`` imports.
- :func:`throughput_benchmark`: epochs of ``train.fit`` on a large (synthetic) set in a child
  process, so its peak RSS (``VmHWM``) belongs to the training alone.
- :func:`load_test`: latency percentiles and requests/s of POSTs under N concurrent clients.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:  # pandas costs ~70 MB and 0.2 s to import; training from arrays needs none
    import pandas as pd

NOTEBOOK_EPOCHS = 128  # the notebook's full run
RAW_BYTES_PER_RATING = 12  # int32 user + int32 item + float32 rating
# mfrec's training and Surprise's fit are timed this many times each and compared by median:
# one run of ~0.1 s moves 15-30 % with this machine's load.
TIMING_REPEATS = 3


# ---------------------------------------------------------------------------- machine

def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory(),
    }


def _total_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def proc_status_bytes(field: str) -> Optional[int]:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> Optional[int]:
    """Current resident set size of this process (Linux /proc; psutil elsewhere)."""
    rss = proc_status_bytes("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001 - psutil missing or unsupported
        return None


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process's own memory, in bytes.

    Linux: ``VmHWM`` from /proc/self/status. Not ``ru_maxrss``: Linux carries that across
    ``fork`` + ``exec``, so a child started by a big parent reports the parent's RSS at the fork
    (seen here: 1.9 GB reported for a child whose own peak was 0.8 GB). Elsewhere ``ru_maxrss``
    (macOS reports bytes, others KiB).
    """
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---------------------------------------------------------------------------- notebook loop

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


# ---------------------------------------------------------------------------- mfrec

def mfrec_benchmark(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, movies: pd.DataFrame,
                    config=None, repeats: int = TIMING_REPEATS) -> tuple[dict, object]:
    """``train_and_evaluate`` (validation epoch choice + refit on train+val), run ``repeats``
    times: the times are those of the run with the median ``train_seconds`` (so its parts
    still add up; ``train_seconds_runs`` lists every run, the first of which also pays
    one-off set-up such as torch's lazy initialisation), the rest comes from the last run.

    Returns the figures and the :class:`~mfrec.workflow.TrainOutcome` (its recommender is what
    the REST benchmark serves; same seed, so every run gives the same model). Per-epoch time
    is the median gap between the validation phase's epoch callbacks (it includes the cheap
    validation RMSE).
    """
    from mfrec.train import TrainConfig
    from mfrec.workflow import refit_alone, train_and_evaluate

    config = config or TrainConfig(progress=False)
    runs = []
    for _ in range(max(1, repeats)):
        stamps = []
        started = time.perf_counter()
        outcome = train_and_evaluate(train, val, test, movies, config,
                                     on_epoch=lambda record: stamps.append(time.perf_counter()))
        run = {name: float(outcome.metrics[name]) for name in ("train_seconds", "select_seconds", "refit_seconds")}
        runs.append({**run, "wall_seconds": time.perf_counter() - started})
    median_run = sorted(runs, key=lambda r: r["train_seconds"])[(len(runs) - 1) // 2]
    # Like for like with a peer's fit: the refit (fixed settings on train+val) run by itself,
    # after the timed runs (in them it may run alongside the validation phase).
    alone = [refit_alone(train, val, config, outcome.best_epoch) for _ in range(max(1, repeats))]
    median_alone = sorted(alone)[(len(alone) - 1) // 2]
    gaps = np.diff([started, *stamps])
    steady = gaps[1:] if len(gaps) > 1 else gaps  # the first gap also holds the setup
    m = outcome.metrics
    figures = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.as_params().items()},
        "train_rows": int(len(train)),
        "val_rows": int(len(val)),
        "refit_rows": int(len(train) + len(val)),
        "test_rows": int(len(test)),
        "epochs_run": int(m["epochs_run"]),
        "best_epoch": int(m["best_epoch"]),
        "epoch_seconds": [float(g) for g in gaps],
        "median_epoch_seconds": float(np.median(steady)),
        "repeats": len(runs),
        **median_run,
        "train_seconds_runs": [r["train_seconds"] for r in runs],
        "refit_alone_seconds": median_alone[0],  # id indexing + fit()
        "refit_fit_seconds": median_alone[1],  # fit() alone
        "refit_alone_runs": [list(a) for a in alone],
        "test_rmse": float(m["test_rmse"]),
        "test_mae": float(m["test_mae"]),
        "test_ndcg_at_10": float(m["test_ndcg_at_10"]),
        "ratings_per_second": len(train) / float(np.median(steady)),
        "device": outcome.device,
    }
    return figures, outcome


def compare(notebook: dict, mfrec: dict, surprise: Optional[dict] = None) -> dict:
    """The headline ratios: notebook time over mfrec time (and per epoch); Surprise's fit
    time over mfrec's (> 1: mfrec is faster), when Surprise ran."""
    out = {
        "notebook_full_over_mfrec_train": notebook["full_run_seconds"] / mfrec["train_seconds"],
        "notebook_full_over_mfrec_refit": notebook["full_run_seconds"] / mfrec["refit_alone_seconds"],
        "notebook_epoch_over_mfrec_epoch": notebook["mean_epoch_seconds"] / mfrec["median_epoch_seconds"],
        "rmse_notebook_minus_mfrec": notebook["test_rmse"] - mfrec["test_rmse"],
    }
    if surprise and "fit_seconds" in surprise:
        out["surprise_fit_over_mfrec_train"] = surprise["fit_seconds"] / mfrec["train_seconds"]
        out["surprise_fit_over_mfrec_refit"] = surprise["fit_seconds"] / mfrec["refit_alone_seconds"]
        # Like for like: fit() alone on both sides, and data preparation + fit on both sides.
        out["surprise_fit_over_mfrec_refit_fit"] = surprise["fit_seconds"] / mfrec["refit_fit_seconds"]
        out["surprise_build_fit_over_mfrec_refit"] = (
            (surprise["build_seconds"] + surprise["fit_seconds"]) / mfrec["refit_alone_seconds"])
        out["rmse_surprise_minus_mfrec"] = surprise["test_rmse"] - mfrec["test_rmse"]
    return out


# ---------------------------------------------------------------------------- Surprise

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


# ---------------------------------------------------------------------------- scale

def write_rating_arrays(ratings: pd.DataFrame, folder: Path) -> dict:
    """Index ``ratings`` and save the raw arrays (int32 user/item rows, float32 rating) as .npy."""
    from mfrec.interactions import IdIndex

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    users, items = IdIndex(ratings["userId"].to_numpy()), IdIndex(ratings["movieId"].to_numpy())
    np.save(folder / "users.npy", users.index(ratings["userId"].to_numpy()).astype(np.int32))
    np.save(folder / "items.npy", items.index(ratings["movieId"].to_numpy()).astype(np.int32))
    np.save(folder / "ratings.npy", ratings["rating"].to_numpy(np.float32))
    shape = {"ratings": int(len(ratings)), "users": len(users), "items": len(items)}
    (folder / "shape.json").write_text(json.dumps(shape))
    return shape


def throughput_child(folder: str | Path, epochs: int, overrides: Optional[dict] = None) -> dict:
    """Run inside the child: load the arrays, ``fit(..., epochs=epochs)`` without validation."""
    import torch

    from mfrec.interactions import Interactions
    from mfrec.train import TrainConfig, fit

    folder = Path(folder)
    rss_start = _rss_bytes()
    shape = json.loads((folder / "shape.json").read_text())
    users = np.load(folder / "users.npy")
    items = np.load(folder / "items.npy")
    ratings = np.load(folder / "ratings.npy")
    raw = users.nbytes + items.nbytes + ratings.nbytes
    rss_loaded = _rss_bytes()
    config = TrainConfig(progress=False, **(overrides or {}))
    train = Interactions(users, items, ratings, shape["users"], shape["items"])
    stamps = []
    started = time.perf_counter()
    result = fit(train, config, epochs=epochs, on_epoch=lambda record: stamps.append(time.perf_counter()))
    fit_seconds = time.perf_counter() - started
    gaps = np.diff([started, *stamps])
    steady = gaps[1:] if len(gaps) > 1 else gaps
    peak = _peak_rss_bytes()
    return {
        **shape,
        "epochs": epochs,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.as_params().items()},
        "torch_threads": torch.get_num_threads(),
        "epoch_seconds": [float(g) for g in gaps],
        "steady_epoch_seconds": float(np.mean(steady)),
        "ratings_per_second": shape["ratings"] / float(np.mean(steady)),
        "fit_seconds": fit_seconds,
        "train_loss": [float(r["train_loss"]) for r in result.history],
        "raw_bytes": int(raw),
        "rss_after_imports_bytes": rss_start,
        "rss_after_load_bytes": rss_loaded,
        "peak_rss_bytes": peak,
        "peak_rss_over_raw": peak / raw,
        "peak_rss_above_imports_over_raw": ((peak - rss_start) / raw) if rss_start else None,
    }


def throughput_benchmark(scale: str = "synthetic-25m", epochs: int = 2, workdir: str | Path | None = None,
                         overrides: Optional[dict] = None, timeout: Optional[float] = None,
                         data_path: str = "") -> dict:
    """Epoch throughput and peak RSS of mfrec's training on dataset ``scale`` (every rating).

    The dataset is loaded (synthetic ones generated, with mfrec's fixed synthetic seed) and
    indexed here; training runs in a fresh child interpreter that loads only the raw arrays, so
    its peak RSS is that of the training itself plus the interpreter and torch.
    ``overrides`` are :class:`~mfrec.train.TrainConfig` fields (default config otherwise).
    """
    from mfrec.prepare import load_dataset

    started = time.perf_counter()
    loaded = load_dataset(scale, data_path, progress=False)
    generate_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="mfrec-bench-", dir=workdir) as tmp:
        write_rating_arrays(loaded.ratings, Path(tmp))
        data_sha = loaded.data_sha256
        del loaded
        cmd = [sys.executable, "-m", "mfrec.bench", "throughput-child", tmp, str(int(epochs)),
               json.dumps(overrides or {})]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        load_before = load_average()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"throughput child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({"dataset": scale, "data_sha256": data_sha, "generate_seconds": generate_seconds,
                "load_average_before": load_before, "load_average_after": load_average()})
    return out


# ---------------------------------------------------------------------------- REST load

def recommend_bodies(user_ids: Sequence[int], k: int = 10) -> list[bytes]:
    """One ``recommend`` request body per user (one user each)."""
    return [json.dumps({"dataframe_records": [{"userId": int(u)}],
                        "params": {"task": "recommend", "k": int(k)}}).encode() for u in user_ids]


def load_test(url: str, bodies: Sequence[bytes], n_requests: int, concurrency: int = 1,
              warmup: int = 20, timeout: float = 60.0) -> dict:
    """POST ``bodies`` (cycled) to ``url`` from ``concurrency`` threads, each on a keep-alive
    connection; ``n_requests`` in all after ``warmup`` untimed ones.

    Latency is per request (send to full response read); requests/s is ``n_requests`` over the
    wall time of the timed phase. Non-200 answers count as errors (and are timed).
    """
    if n_requests < 1 or concurrency < 1 or not bodies:
        raise ValueError("load_test needs n_requests >= 1, concurrency >= 1 and at least one body")
    parts = urlsplit(url)
    path = parts.path or "/"
    headers = {"Content-Type": "application/json"}

    def post(conn, body):
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def connect():
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    conn = connect()
    try:
        for i in range(warmup):
            post(conn, bodies[i % len(bodies)])
    finally:
        conn.close()

    latencies = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    shares = [n_requests // concurrency + (1 if t < n_requests % concurrency else 0) for t in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    failures = []

    def worker(t):
        conn = connect()
        try:
            barrier.wait()
            for j in range(shares[t]):
                body = bodies[(t + j * concurrency) % len(bodies)]
                t0 = time.perf_counter()
                try:
                    status = post(conn, body)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = connect()
                    status = -1
                latencies[t].append(time.perf_counter() - t0)
                if status != 200:
                    errors[t] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(concurrency)]
    for th in threads:
        th.start()
    barrier.wait()
    started = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"load test client failed: {failures[0]!r}")
    lat = np.array([x for part in latencies for x in part]) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": int(len(lat)),
        "errors": int(sum(errors)),
        "wall_seconds": wall,
        "requests_per_second": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
    }


# ---------------------------------------------------------------------------- report

def _gib(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def markdown_table(results: dict) -> str:
    """The results as one markdown table (section | measurement | value | notes)."""
    rows = []

    def add(section, what, value, note=""):
        rows.append(f"| {section} | {what} | {value} | {note} |")

    for name in ("notebook", "mfrec", "surprise", "throughput", "serving"):
        if isinstance(results.get(name), dict) and "failed" in results[name]:
            add(name, "FAILED", "", results[name]["failed"].replace("|", "/").replace("\n", " ")[:300])
    ok = {name: block for name, block in results.items() if not (isinstance(block, dict) and "failed" in block)}
    nb, mf, cmp_ = ok.get("notebook"), ok.get("mfrec"), ok.get("compare")
    if nb:
        label = "extrapolated" if nb["full_run_seconds_is_extrapolated"] else "measured"
        add("notebook loop", "epoch time", f"{nb['mean_epoch_seconds']:.2f} s",
            f"mean of {nb['epochs_run']} epoch(s), {nb['train_rows']:,} rows, batch {nb['batch_size']}")
        add("notebook loop", f"{nb['full_epochs']}-epoch time ({label})", f"{nb['full_run_seconds']:.1f} s",
            f"{label}: {nb['mean_epoch_seconds']:.2f} s x {nb['full_epochs']}" if label == "extrapolated"
            else "all epochs run")
        add("notebook loop", f"test RMSE after {nb['epochs_run']} epoch(s)", f"{nb['test_rmse']:.4f}",
            "unclipped, as the notebook computed it")
        add("notebook loop", "throughput", f"{nb['ratings_per_second']:,.0f} ratings/s", "")
    if mf:
        add("mfrec default", "epoch time", f"{mf['median_epoch_seconds']:.3f} s",
            f"median, {mf['train_rows']:,} rows, solver {mf['config'].get('solver', 'adam')}")
        runs = mf.get("train_seconds_runs", [mf["train_seconds"]])
        how = "then {:.3f} s more".format(mf["refit_seconds"])
        add("mfrec default", "train_seconds", f"{mf['train_seconds']:.3f} s",
            f"median of {len(runs)} run(s) (first {runs[0]:.3f} s): {mf['epochs_run']} validation epochs "
            f"({mf['select_seconds']:.3f} s) + refit of {mf['best_epoch']} on {mf['refit_rows']:,} rows ({how}; "
            f"by itself {mf['refit_alone_seconds']:.3f} s, its fit() {mf['refit_fit_seconds']:.3f} s)")
        add("mfrec default", "test RMSE", f"{mf['test_rmse']:.4f}", f"NDCG@10 {mf['test_ndcg_at_10']:.4f}")
    if cmp_:
        add("headline", "notebook 128-epoch time / mfrec train_seconds",
            f"**{cmp_['notebook_full_over_mfrec_train']:.1f}x**",
            "notebook time " + ("extrapolated" if nb and nb["full_run_seconds_is_extrapolated"] else "measured"))
        add("headline", "notebook 128-epoch time / mfrec refit", f"{cmp_['notebook_full_over_mfrec_refit']:.1f}x",
            "the refit alone: fixed settings on train+val, like the peers' fits")
        add("headline", "notebook epoch / mfrec epoch", f"{cmp_['notebook_epoch_over_mfrec_epoch']:.1f}x", "")
        if "surprise_fit_over_mfrec_train" in cmp_:
            add("headline", "Surprise SVD fit / mfrec train_seconds", f"{cmp_['surprise_fit_over_mfrec_train']:.2f}x",
                "> 1: mfrec (validation + refit) is faster than Surprise's fit")
            add("headline", "Surprise SVD fit / mfrec refit", f"{cmp_['surprise_fit_over_mfrec_refit']:.2f}x",
                "> 1: mfrec's refit (id indexing included) is faster than Surprise's fit")
            add("headline", "Surprise SVD fit / mfrec refit fit()", f"{cmp_['surprise_fit_over_mfrec_refit_fit']:.2f}x",
                "fit() alone on both sides (neither counts indexing the ids)")
            add("headline", "Surprise trainset build + fit / mfrec refit", f"{cmp_['surprise_build_fit_over_mfrec_refit']:.2f}x",
                "data preparation + fit on both sides")
    sp = ok.get("surprise")
    if sp:
        if "skipped" in sp:
            add("Surprise SVD", "skipped", "", sp["skipped"])
        else:
            add("Surprise SVD", "fit time", f"{sp['fit_seconds']:.3f} s",
                f"median of {len(sp.get('fit_seconds_runs', [0]))} fit(s); n_factors={sp['n_factors']}, "
                f"{sp['n_epochs']} epochs, random_state={sp['random_state']}, surprise {sp['version']}")
            add("Surprise SVD", "test RMSE", f"{sp['test_rmse']:.4f}", "same split, train+val as training")
    tp = ok.get("throughput")
    if tp:
        if "skipped" in tp:
            add("scale", "skipped", "", tp["skipped"])
        else:
            cfg = tp["config"]
            label = f"default config, implicit_weight={cfg['implicit_weight']}"
            add("scale", f"dataset {tp['dataset']}",
                f"{tp['ratings']:,} ratings", f"{tp['users']:,} users x {tp['items']:,} items")
            add("scale", f"epoch throughput ({label})", f"{tp['ratings_per_second']:,.0f} ratings/s",
                "epoch times " + ", ".join(f"{s:.1f} s" for s in tp["epoch_seconds"])
                + "; first includes setup; rate from the later epoch(s)" if len(tp["epoch_seconds"]) > 1
                else "one epoch, includes setup")
            add("scale", "peak RSS (training child)", _gib(tp["peak_rss_bytes"]),
                f"{tp['peak_rss_over_raw']:.2f}x the raw arrays ({_gib(tp['raw_bytes'])}); "
                f"{tp['peak_rss_above_imports_over_raw']:.2f}x above the {_gib(tp['rss_after_imports_bytes'])} "
                "of interpreter + torch")
            for extra in tp.get("variants", []):
                add("scale", f"epoch throughput ({extra['label']})", f"{extra['ratings_per_second']:,.0f} ratings/s",
                    f"epoch times {', '.join(f'{s:.1f} s' for s in extra['epoch_seconds'])}; peak RSS "
                    f"{_gib(extra['peak_rss_bytes'])} ({extra['peak_rss_over_raw']:.2f}x raw)")
    sv = ok.get("serving")
    if sv:
        if "skipped" in sv:
            add("REST", "skipped", "", sv["skipped"])
        else:
            for model in ("mfrec", "identity"):
                for run in sv.get(model, []):
                    workers = run.get("workers", 1)
                    add("REST", f"{model}, {run['concurrency']} client(s)" + (f", {workers} workers" if workers > 1 else ""),
                        f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, {run['requests_per_second']:.0f} req/s",
                        f"{run['requests']} requests, {run['errors']} errors")
    head = ["| section | measurement | value | notes |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def flat_metrics(results: dict) -> dict:
    """Finite numeric headline figures as MLflow metric names."""
    picks = {
        "notebook": ["mean_epoch_seconds", "full_run_seconds", "test_rmse", "ratings_per_second"],
        "mfrec": ["median_epoch_seconds", "train_seconds", "refit_alone_seconds", "test_rmse", "test_ndcg_at_10",
                  "ratings_per_second"],
        "compare": ["notebook_full_over_mfrec_train", "notebook_full_over_mfrec_refit", "notebook_epoch_over_mfrec_epoch",
                    "surprise_fit_over_mfrec_train", "surprise_fit_over_mfrec_refit",
                    "surprise_fit_over_mfrec_refit_fit", "surprise_build_fit_over_mfrec_refit"],
        "surprise": ["fit_seconds", "test_rmse"],
        "throughput": ["ratings_per_second", "steady_epoch_seconds", "peak_rss_bytes", "peak_rss_over_raw",
                       "peak_rss_above_imports_over_raw", "raw_bytes"],
    }
    out = {}
    for section, keys in picks.items():
        block = results.get(section) or {}
        for key in keys:
            value = block.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[f"{section}_{key}"] = float(value)
    for variant in (results.get("throughput") or {}).get("variants", []):
        if variant.get("config", {}).get("implicit_weight") == 0:
            for key in ("ratings_per_second", "peak_rss_over_raw"):
                out[f"throughput_rating_only_{key}"] = float(variant[key])
    serving = results.get("serving") or {}
    for model in ("mfrec", "identity"):
        for run in serving.get(model, []) if isinstance(serving.get(model), list) else []:
            workers = run.get("workers", 1)
            prefix = f"serve_{model}_" + (f"w{workers}_" if workers > 1 else "")
            for key in ("p50_ms", "p99_ms", "requests_per_second"):
                out[f"{prefix}c{run['concurrency']}_{key}"] = float(run[key])
    return out


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 3 and argv[0] == "throughput-child":
        overrides = json.loads(argv[3]) if len(argv) > 3 else {}
        print(json.dumps(throughput_child(argv[1], int(argv[2]), overrides)))
        return 0
    print("usage: python -m mfrec.bench throughput-child FOLDER EPOCHS [OVERRIDES_JSON]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main())
