"""Epoch throughput and peak memory of mfrec's training on a large (synthetic) set.

:func:`throughput_benchmark` indexes the ratings here and trains in a fresh child interpreter
that loads only the raw arrays, so its peak RSS (``VmHWM``) belongs to the training alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np


from benchmarks.machine import child_env, load_average, peak_rss_bytes, rss_bytes

if TYPE_CHECKING:  # the training child imports no pandas
    import pandas as pd


def write_rating_arrays(ratings: pd.DataFrame, folder: Path) -> dict:
    """Index ``ratings`` and save the raw arrays (int32 user/item rows, float32 rating) as .npy."""
    from mfrec.data.ids import IdIndex

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

    from mfrec.data.ids import Interactions
    from mfrec.training.config import TrainConfig
    from mfrec.training.fit import fit

    folder = Path(folder)
    rss_start = rss_bytes()
    shape = json.loads((folder / "shape.json").read_text())
    users = np.load(folder / "users.npy")
    items = np.load(folder / "items.npy")
    ratings = np.load(folder / "ratings.npy")
    raw = users.nbytes + items.nbytes + ratings.nbytes
    rss_loaded = rss_bytes()
    config = TrainConfig(progress=False, **(overrides or {})).with_prior()
    train = Interactions(users, items, ratings, shape["users"], shape["items"])
    stamps = []
    started = time.perf_counter()
    result = fit(train, config, epochs=epochs, on_epoch=lambda record: stamps.append(time.perf_counter()))
    fit_seconds = time.perf_counter() - started
    gaps = np.diff([started, *stamps])
    steady = gaps[1:] if len(gaps) > 1 else gaps
    peak = peak_rss_bytes()
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
    ``overrides`` are :class:`~mfrec.training.fit.TrainConfig` fields (default config otherwise).
    """
    from mfrec.data.prepare import load_dataset

    started = time.perf_counter()
    loaded = load_dataset(scale, data_path, progress=False)
    generate_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="mfrec-bench-", dir=workdir) as tmp:
        write_rating_arrays(loaded.ratings, Path(tmp))
        data_sha = loaded.data_sha256
        del loaded
        cmd = [sys.executable, "-m", "benchmarks.scale", "throughput-child", tmp, str(int(epochs)),
               json.dumps(overrides or {})]
        load_before = load_average()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"throughput child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({"dataset": scale, "data_sha256": data_sha, "generate_seconds": generate_seconds,
                "load_average_before": load_before, "load_average_after": load_average()})
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 3 and argv[0] == "throughput-child":
        overrides = json.loads(argv[3]) if len(argv) > 3 else {}
        print(json.dumps(throughput_child(argv[1], int(argv[2]), overrides)))
        return 0
    print("usage: python -m benchmarks.scale throughput-child FOLDER EPOCHS [OVERRIDES_JSON]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
