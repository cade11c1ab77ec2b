#!/usr/bin/env python
"""Bounded, loopback-only load test of a served mfrec model (``POST /invocations``).

Either point it at a running server on this machine::

    python -m benchmarks.load_test --url http://127.0.0.1:5001 [--pid SERVER_PID]

or let it start ``mlflow models serve --env-manager local`` itself on a free loopback port (and
stop it afterwards, by PID)::

    MLFLOW_TRACKING_URI=sqlite:////path/mlflow.db python -m benchmarks.load_test --model-uri models:/mfrec@champion

It sends ``--requests`` (default 10,000) mixed requests — ``predict``, ``recommend``,
``similar``, ``fold_in`` in the three JSON formats, with ids that exist in the model, learned from
``recommend`` calls to the server itself unless given — from ``--clients`` (default 4) threads,
each on its own keep-alive connection. It reports errors by status, latency percentiles,
throughput and the server's resident memory (its process tree) at start, middle and end, as a
markdown table and optionally as JSON (``--json``).

It refuses any host other than 127.0.0.1 / localhost / ::1 and caps requests and clients: it
is a measuring tool, not a traffic generator for other people's servers.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 1_000_000
MAX_CLIENTS = 64
MIX = (("predict", 0.4), ("recommend", 0.3), ("similar", 0.2), ("fold_in", 0.1))
FORMATS = ("dataframe_split", "dataframe_records", "inputs")
HEADERS = {"Content-Type": "application/json", "Connection": "keep-alive"}


# ------------------------------------------------------------------------------------ server

def loopback_url(url: str) -> urllib.parse.SplitResult:
    """Parse ``url``; refuse anything that is not plain HTTP to this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.port is None:
        raise SystemExit(f"refusing {url!r}: only http://127.0.0.1:PORT, http://localhost:PORT or "
                         "http://[::1]:PORT (this machine) may be load-tested")
    return parts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(url: str, proc=None, timeout: float = 180.0) -> None:
    parts = loopback_url(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"mlflow models serve exited with code {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{url}/ping not ready after {timeout:.0f} s")


def start_server(model_uri: str, workers: int | None, log_dir: Path):
    """``mlflow models serve`` (this interpreter's venv) on a free loopback port."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "models", "serve", "-m", model_uri, "--env-manager", "local", "-p", str(port),
           "--host", "127.0.0.1"]
    if workers:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ)
    env["PATH"] = f"{mlflow_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    log = open(log_dir / "serve.log", "wb")
    proc = subprocess.Popen(cmd, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ping(url, proc)
    except SystemExit:
        stop_server(proc)
        sys.stderr.write((log_dir / "serve.log").read_text(errors="replace")[-3000:])
        raise
    return proc, url


def stop_server(proc) -> None:
    """Terminate the server we started, by PID (its uvicorn child follows via PDEATHSIG)."""
    children = []
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or process gone
        pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    for child in children:
        try:
            child.wait(timeout=10)
        except Exception:  # noqa: BLE001
            try:
                child.kill()
            except Exception:  # noqa: BLE001
                pass


def pid_listening_on(port: int) -> int | None:
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except Exception:  # noqa: BLE001 - needs privileges on some systems
        return None
    return None


def tree_rss(pid: int | None) -> int | None:
    """Resident bytes of ``pid`` and all its descendants (uvicorn runs as a child of the CLI)."""
    if pid is None:
        return None
    try:
        import psutil

        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------ payloads

def post(conn: http.client.HTTPConnection, body: dict) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=json.dumps(body), headers=HEADERS)
    resp = conn.getresponse()
    return resp.status, resp.read()


def discover_ids(url: str, probe_users: int = 700) -> tuple[list[int], list[int]]:
    """Known user ids (``source == personal``) and movie ids, from the server's own answers."""
    parts = loopback_url(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    status, raw = post(conn, {"inputs": {"userId": list(range(1, probe_users + 1))},
                              "params": {"task": "recommend", "k": 5}})
    if status != 200:
        raise SystemExit(f"discovery recommend call failed: {status} {raw[:300]!r}")
    rows = json.loads(raw)["predictions"]
    users = sorted({r["userId"] for r in rows if r["source"] == "personal"})
    movies = {r["movieId"] for r in rows}
    status, raw = post(conn, {"inputs": {"userId": [10**12]}, "params": {"task": "recommend", "k": 500}})
    if status == 200:
        movies |= {r["movieId"] for r in json.loads(raw)["predictions"]}
    conn.close()
    if not users or not movies:
        raise SystemExit("the server knows no users/movies in the probed range: pass --users and --movies")
    return users, sorted(movies)


def table(fmt: str, columns: dict) -> dict:
    names = list(columns)
    rows = [list(r) for r in zip(*columns.values())]
    if fmt == "dataframe_split":
        return {"dataframe_split": {"columns": names, "data": rows}}
    if fmt == "dataframe_records":
        return {"dataframe_records": [dict(zip(names, r)) for r in rows]}
    return {"inputs": columns}


def make_request(rng: random.Random, users: list[int], movies: list[int]) -> tuple[str, dict]:
    task = rng.choices([t for t, _ in MIX], [w for _, w in MIX])[0]
    fmt = rng.choice(FORMATS)
    if task == "predict":
        n = rng.randint(1, 20)
        body = table(fmt, {"userId": [rng.choice(users) for _ in range(n)],
                           "movieId": [rng.choice(movies) for _ in range(n)]})
    elif task == "recommend":
        body = table(fmt, {"userId": rng.sample(users, rng.randint(1, 3))})
    elif task == "similar":
        body = table(fmt, {"movieId": rng.sample(movies, rng.randint(1, 2))})
    else:
        n = rng.randint(3, 10)
        body = table(fmt, {"movieId": rng.sample(movies, n),
                           "rating": [rng.choice([2.5, 3.0, 3.5, 4.0, 4.5, 5.0]) for _ in range(n)]})
    if task != "predict" or rng.random() < 0.5:
        body["params"] = {"task": task, "k": 10}
    return task, body


# ------------------------------------------------------------------------------------ load

def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


def run_load(url: str, n: int, clients: int, users, movies, seed: int, timeout: float, pid: int | None) -> dict:
    parts = loopback_url(url)
    counter = itertools.count()
    lock = threading.Lock()
    results: list[tuple[str, int | str, float]] = []
    done = [0]
    rss = {"start": tree_rss(pid), "middle": None, "end": None, "peak": tree_rss(pid)}
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.wait(0.5):
            value = tree_rss(pid)
            if value is not None:
                rss["peak"] = max(rss["peak"] or 0, value)
            if rss["middle"] is None and done[0] >= n // 2:
                rss["middle"] = value

    def client(idx: int):
        rng = random.Random(seed * 1000 + idx)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        local = []
        while True:
            i = next(counter)
            if i >= n:
                break
            task, body = make_request(rng, users, movies)
            started = time.perf_counter()
            try:
                status, _ = post(conn, body)
            except (OSError, http.client.HTTPException) as exc:
                status = f"exception:{type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            local.append((task, status, time.perf_counter() - started))
            with lock:
                done[0] += 1
        conn.close()
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    sampling = threading.Thread(target=sampler, daemon=True)
    started = time.perf_counter()
    sampling.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    stop_sampling.set()
    sampling.join()
    rss["end"] = tree_rss(pid)
    if rss["end"] is not None:
        rss["peak"] = max(rss["peak"] or 0, rss["end"])

    statuses = Counter(str(s) for _, s, _ in results)
    latencies = sorted(lat for _, _, lat in results)
    by_task = {}
    for task, _ in MIX:
        lat = sorted(lt for t, _, lt in results if t == task)
        by_task[task] = {"requests": len(lat), "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
                         "errors": sum(1 for t, s, _ in results if t == task and s != 200)}
    return {
        "url": url, "requests": len(results), "clients": clients, "seconds": wall,
        "throughput_rps": len(results) / wall if wall else float("nan"),
        "statuses": dict(statuses), "errors": sum(v for k, v in statuses.items() if k != "200"),
        "p50_ms": percentile(latencies, 50) * 1e3, "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3, "max_ms": (latencies[-1] * 1e3) if latencies else float("nan"),
        "by_task": by_task, "server_pid": pid,
        "rss_mib": {k: (None if v is None else v / 2**20) for k, v in rss.items()},
        "known_users": len(users), "known_movies": len(movies),
    }


def markdown(report: dict) -> str:
    def mib(v):
        return "n/a" if v is None else f"{v:.0f} MiB"

    rss = report["rss_mib"]
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(report["statuses"].items()) if k != "200") or "none"
    lines = [
        "| metric | value |", "|---|---|",
        f"| requests / clients | {report['requests']:,} / {report['clients']} |",
        f"| wall time | {report['seconds']:.1f} s |",
        f"| throughput | {report['throughput_rps']:.0f} req/s |",
        f"| errors (non-200) | {report['errors']} ({errors}) |",
        f"| latency p50 / p90 / p99 / max | {report['p50_ms']:.1f} / {report['p90_ms']:.1f} / "
        f"{report['p99_ms']:.1f} / {report['max_ms']:.0f} ms |",
        f"| server RSS start / middle / end / peak | {mib(rss['start'])} / {mib(rss['middle'])} / "
        f"{mib(rss['end'])} / {mib(rss['peak'])} |",
        "", "| task | requests | errors | p50 ms | p99 ms |", "|---|---|---|---|---|",
    ]
    for task, row in report["by_task"].items():
        lines.append(f"| {task} | {row['requests']:,} | {row['errors']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:5001")
    where.add_argument("--model-uri", help="start `mlflow models serve -m URI --env-manager local` on a free port")
    parser.add_argument("--pid", type=int, help="server PID for RSS (with --url; default: whoever listens on the port)")
    parser.add_argument("--workers", type=int, help="--workers for the server this script starts")
    parser.add_argument("--requests", "-n", type=int, default=10_000)
    parser.add_argument("--clients", "-c", type=int, default=4)
    parser.add_argument("--users", help="comma-separated known user ids (default: discovered)")
    parser.add_argument("--movies", help="comma-separated movie ids (default: discovered)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be 1..{MAX_REQUESTS:,}")
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS}")

    proc = None
    tmp = None
    try:
        if args.model_uri:
            tmp = tempfile.TemporaryDirectory(prefix="mfrec-load-")
            print(f"starting mlflow models serve -m {args.model_uri} ...", file=sys.stderr)
            proc, url = start_server(args.model_uri, args.workers, Path(tmp.name))
            pid = proc.pid
        else:
            url = args.url.rstrip("/")
            parts = loopback_url(url)
            wait_ping(url, timeout=10)
            pid = args.pid or pid_listening_on(parts.port)
        if args.users and args.movies:
            users = [int(x) for x in args.users.split(",")]
            movies = [int(x) for x in args.movies.split(",")]
        else:
            users, movies = discover_ids(url)
            users = [int(x) for x in args.users.split(",")] if args.users else users
            movies = [int(x) for x in args.movies.split(",")] if args.movies else movies
        print(f"{len(users)} users, {len(movies)} movies; {args.requests:,} requests from {args.clients} clients "
              f"against {url} (server pid {pid})", file=sys.stderr)
        report = run_load(url, args.requests, args.clients, users, movies, args.seed, args.timeout, pid)
    finally:
        if proc is not None:
            stop_server(proc)
        if tmp is not None:
            tmp.cleanup()
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
