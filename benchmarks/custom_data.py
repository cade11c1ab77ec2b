"""Your own data at scale: ``dataset=custom`` against the synthetic set it was made from.

    python -m benchmarks.custom_data [--pipeline synthetic-1m] [--memory synthetic-25m] [--workdir DIR]

``--pipeline``: the synthetic set is written as a parquet table with text ids (``user-0000042``,
``sku-000017``) and an items table with categories; then ``mlflow run . -P dataset=custom`` on
it and ``mlflow run . -P dataset=<the synthetic set>`` run back to back, each into a fresh
sqlite store, and their wall-clock seconds are compared (the same ratings, the same pipeline:
prepare, settings search, training, evaluation, served refit, clusters, registration).
``--memory``: the prepare step alone (read, check, code the ids, split, write) on such a table
in a fresh child process: its seconds and peak RSS (VmHWM) against the raw arrays it ends with
(int32 user and item codes, float32 rating, int64 timestamp: 20 bytes a row). "none" skips
either.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COLUMNS = ["-P", "user_column=customer", "-P", "item_column=sku", "-P", "rating_column=stars", "-P",
           "timestamp_column=time", "-P", "title_column=name", "-P", "category_column=category"]


def write_tables(dataset: str, folder: Path) -> dict:
    """``folder/events.parquet`` (customer, sku, stars, time) and ``folder/items.parquet`` (sku,
    name, category) holding the synthetic ``dataset``'s ratings with text ids."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mfrec.data.datasets import SYNTHETIC_SEED, get_spec
    from mfrec.data.synthetic import generate

    n_ratings, n_users, n_movies = get_spec(dataset).synthetic_shape
    data = generate(n_ratings, n_users, n_movies, seed=SYNTHETIC_SEED)
    folder.mkdir(parents=True, exist_ok=True)

    def text(prefix: str, values, width: int):
        return pc.binary_join_element_wise(prefix, pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0"), "")

    r = data.ratings
    events = pa.table({"customer": text("user-", r["userId"].to_numpy(), 7), "sku": text("sku-", r["movieId"].to_numpy(), 6),
                       "stars": pa.array(r["rating"].to_numpy()), "time": pa.array(r["timestamp"].to_numpy())})
    del data.ratings, r
    pq.write_table(events, folder / "events.parquet")
    m = data.movies
    items = pa.table({"sku": text("sku-", m["movieId"].to_numpy(), 6), "name": pa.array(m["title"].astype(str)),
                      "category": pa.array(m["genres"].astype(str))})
    pq.write_table(items, folder / "items.parquet")
    return {"ratings": n_ratings, "events_bytes": (folder / "events.parquet").stat().st_size}


def pipeline_comparison(dataset: str, workdir: Path) -> dict:
    """Seconds of ``mlflow run`` on the custom table and on ``dataset`` itself, and their ratio."""
    from benchmarks.machine import child_env, load_average

    tables = write_tables(dataset, workdir / "custom")
    runs = {"custom": ["-P", "dataset=custom", "-P", f"data_path={workdir / 'custom' / 'events.parquet'}",
                       "-P", f"items_path={workdir / 'custom' / 'items.parquet'}", *COLUMNS],
            "synthetic": ["-P", f"dataset={dataset}"]}
    out = {"dataset": dataset, **tables}
    mlflow = str(Path(sys.executable).parent / "mlflow")
    for label, params in runs.items():
        store = workdir / f"store-{label}"
        store.mkdir()
        env = {**child_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
               "PATH": f"{Path(sys.executable).parent}:{child_env().get('PATH', '')}"}
        before = load_average()
        started = time.perf_counter()
        done = subprocess.run([mlflow, "run", str(ROOT), "--env-manager", "local", *params, "-P", "model_name=bench"],
                              cwd=store, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"mlflow run ({label}) failed: {done.stderr[-3000:]}")
        out[f"{label}_seconds"] = seconds
        out[f"{label}_load_average_before"] = before
        out[f"{label}_summary"] = [line for line in done.stderr.splitlines() if "test_" in line][-1:]
    out["custom_over_synthetic"] = out["custom_seconds"] / out["synthetic_seconds"]
    return out


def prepare_memory(dataset: str, workdir: Path) -> dict:
    """The prepare step on the custom table of ``dataset`` in a child process: seconds, peak RSS."""
    from benchmarks.machine import child_env

    tables = write_tables(dataset, workdir / "memory")
    done = subprocess.run([sys.executable, __file__, "--child", str(workdir / "memory")], capture_output=True,
                          text=True, env=child_env())
    if done.returncode:
        raise RuntimeError(f"prepare child failed: {done.stderr[-3000:]}")
    return {"dataset": dataset, **tables, **json.loads(done.stdout.strip().splitlines()[-1])}


def child(folder: str) -> None:
    from benchmarks.machine import peak_against, proc_status_bytes
    from mfrec.data.custom import Columns
    from mfrec.data.prepare import load_dataset, prepare_loaded
    from mfrec.data.split import SplitConfig

    baseline = proc_status_bytes("VmRSS")
    columns = Columns(user="customer", item="sku", rating="stars", timestamp="time",
                      items_path=str(Path(folder) / "items.parquet"), title="name", category="category")
    started = time.perf_counter()
    loaded = load_dataset("custom", Path(folder) / "events.parquet", columns=columns)
    read = time.perf_counter() - started
    prepare_loaded(loaded, SplitConfig(), Path(folder) / "prepared")
    seconds = time.perf_counter() - started
    n = len(loaded.ratings)
    print(json.dumps({"rows": n, "read_seconds": read, "prepare_seconds": seconds, **peak_against(20 * n, baseline)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="synthetic-1m")
    ap.add_argument("--memory", default="synthetic-25m")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="mfrec-custom-", dir=args.workdir) as tmp:
        out = {}
        if args.pipeline.lower() != "none":
            out["pipeline"] = pipeline_comparison(args.pipeline, Path(tmp) / "pipeline")
        if args.memory.lower() != "none":
            out["memory"] = prepare_memory(args.memory, Path(tmp) / "memory")
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
