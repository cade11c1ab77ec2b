"""Peak memory and time of reading an ml-25m-sized ratings.csv with mfrec's parser.

    python -m benchmarks.csv_memory [--ratings 25000000] [--workdir DIR]

Writes the synthetic-25m ratings (or ``--ratings`` of them) as an ml-25m-style folder
(ratings.csv with userId,movieId,rating,timestamp and movies.csv), then reads it with
:func:`mfrec.data.parse.read_dataset` (pyarrow, explicit dtypes, validation, deduplication) in a
fresh child process and prints its time and peak RSS (VmHWM) against the raw rating arrays
(int32 user, int32 movie, float32 rating: 12 bytes per rating).
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
sys.path.insert(0, str(ROOT))


def child(folder: str) -> None:
    from benchmarks.machine import peak_against, proc_status_bytes
    from mfrec.data.parse import read_dataset

    baseline = proc_status_bytes("VmRSS")
    started = time.perf_counter()
    parsed = read_dataset(folder)
    seconds = time.perf_counter() - started
    n = len(parsed.ratings)
    print(json.dumps({"ratings": n, "seconds": seconds, **peak_against(12 * n, baseline),
                      "result_bytes": int(parsed.ratings.memory_usage(deep=True).sum())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratings", type=int, default=25_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--shuffled", action="store_true", help="keep the generator's row order (not sorted)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from mfrec.data.prepare import SYNTHETIC_SEED
    from mfrec.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="mfrec-csv-", dir=args.workdir) as tmp:
        folder = Path(tmp) / "ml-25m"
        folder.mkdir()
        scale = args.ratings / 25_000_000  # ml-25m's shape: 162,541 users, 62,423 movies
        data = generate(args.ratings, max(1, round(162_541 * scale)), max(1, round(62_423 * scale)),
                        seed=SYNTHETIC_SEED)
        ratings = data.ratings[["userId", "movieId", "rating", "timestamp"]]
        if not args.shuffled:  # MovieLens files are sorted by userId, then movieId
            ratings = ratings.sort_values(["userId", "movieId"], kind="stable")
        pacsv.write_csv(pa.Table.from_pandas(ratings, preserve_index=False), folder / "ratings.csv")
        pacsv.write_csv(pa.Table.from_pandas(data.movies[["movieId", "title", "genres"]], preserve_index=False),
                        folder / "movies.csv")
        size = (folder / "ratings.csv").stat().st_size
        del data, ratings
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["csv_bytes"] = size
        out["file_order"] = "generator order" if args.shuffled else "sorted by userId, movieId (as MovieLens)"
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
