"""The benchmark's measuring functions and entry point on tiny inputs.

Structure and sanity only (positive, finite figures): wall-time thresholds would fail on a
busy machine and say nothing about the code.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import threading

import numpy as np
import pandas as pd
import pytest

from benchmarks import report, rest, scale, training
from mfrec.training.config import TrainConfig


def _positive(*values):
    for v in values:
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, v


@pytest.fixture(scope="module")
def tiny_split():
    from mfrec.data.synthetic import generate

    data = generate(4000, 60, 400, seed=0)
    ratings = data.ratings
    rng = np.random.default_rng(0)
    part = rng.random(len(ratings))
    train, val, test = ratings[part < 0.72], ratings[(part >= 0.72) & (part < 0.8)], ratings[part >= 0.8]
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True), data.movies


def test_notebook_loop_is_timed_and_extrapolated(tiny_split):
    train, val, test, _ = tiny_split
    out = training.notebook_benchmark(pd.concat([train, val]), test, epochs=1, seed=0)
    assert out["epochs_run"] == 1 and len(out["epoch_seconds"]) == 1
    assert out["batch_size"] == 128 and out["lr"] == 1e-3 and out["n_factors"] == 8
    assert out["full_run_seconds_is_extrapolated"] is True
    assert out["full_run_seconds"] == pytest.approx(out["mean_epoch_seconds"] * 128)
    _positive(out["mean_epoch_seconds"], out["full_run_seconds"], out["test_rmse"], out["ratings_per_second"])
    assert out["train_rows"] == len(train) + len(val) and out["test_rows"] == len(test)


def test_notebook_full_run_is_measured_when_all_epochs_run(tiny_split):
    train, _, test, _ = tiny_split
    out = training.notebook_benchmark(train.iloc[:500], test, epochs=2, full_epochs=2)
    assert out["full_run_seconds_is_extrapolated"] is False
    assert out["full_run_seconds"] == pytest.approx(sum(out["epoch_seconds"]))
    with pytest.raises(ValueError):
        training.notebook_benchmark(train, test, epochs=0)


def test_mfrec_benchmark_and_comparison(tiny_split):
    train, val, test, movies = tiny_split
    figures, outcome = training.mfrec_benchmark(train, val, test, movies, TrainConfig(epochs=3, progress=False))
    assert figures["epochs_run"] <= 3 and figures["search_trials"] == 24  # the default train step searches
    assert figures["median_epoch_seconds"] == pytest.approx(figures["fit_seconds"] / figures["best_epoch"])
    assert figures["refit_rows"] == len(train) + len(val)
    _positive(figures["median_epoch_seconds"], figures["train_seconds"], figures["test_rmse"],
              figures["ratings_per_second"])
    assert outcome.recommender is not None
    notebook = training.notebook_benchmark(train, test, epochs=1)
    cmp_ = training.compare(notebook, figures)
    _positive(cmp_["notebook_full_over_mfrec_train"], cmp_["notebook_epoch_over_mfrec_epoch"],
              figures["refit_seconds"], figures["select_seconds"])
    assert figures["search_seconds"] + figures["select_seconds"] + figures["refit_seconds"] == \
        pytest.approx(figures["train_seconds"])
    assert math.isfinite(cmp_["rmse_notebook_minus_mfrec"])
    assert "surprise_fit_over_mfrec_train" not in cmp_
    with_surprise = training.compare(notebook, figures, {"build_seconds": 0.1, "fit_seconds": 0.2, "test_rmse": 0.9})
    # Like for like with a peer's fit: a fit() from scratch with fixed settings on train+val.
    assert with_surprise["surprise_fit_over_mfrec_fit"] == pytest.approx(0.2 / figures["fit_seconds"])
    assert 0 < figures["refit_fit_seconds"] < figures["refit_seconds"] and figures["fit_seconds"] > 0
    assert 1 <= figures["refit_sweeps"] <= figures["best_epoch"]
    # Timed training.TIMING_REPEATS times; the figures are the median run's.
    runs = figures["train_seconds_runs"]
    assert figures["repeats"] == len(runs) == training.TIMING_REPEATS >= 3
    assert figures["train_seconds"] == sorted(runs)[(len(runs) - 1) // 2]


def test_surprise_runs_or_says_why_not(tiny_split):
    train, _, test, _ = tiny_split
    out = training.surprise_benchmark(train, test, seed=0)
    try:
        import surprise  # noqa: F401
    except Exception:  # noqa: BLE001
        assert "scikit-surprise" in out["skipped"]
        return
    assert out["n_factors"] == 8 and out["random_state"] == 0
    _positive(out["fit_seconds"], out["test_rmse"], out["test_mae"])
    assert len(out["fit_seconds_runs"]) == training.TIMING_REPEATS
    assert out["fit_seconds"] == pytest.approx(float(np.median(out["fit_seconds_runs"])))


def test_throughput_child_reports_rate_and_peak_rss(tmp_path):
    out = scale.throughput_benchmark("synthetic-3k", epochs=2, workdir=tmp_path,
                                     overrides={"implicit_weight": 0.0})
    assert out["dataset"] == "synthetic-3k" and out["ratings"] == 3000
    assert out["raw_bytes"] == 3000 * 12
    assert len(out["epoch_seconds"]) == 2 and out["config"]["implicit_weight"] == 0.0
    _positive(out["ratings_per_second"], out["peak_rss_bytes"], out["peak_rss_over_raw"], out["fit_seconds"])
    assert out["peak_rss_bytes"] >= out["rss_after_imports_bytes"] > 0
    assert all(math.isfinite(x) for x in out["train_loss"])
    assert not list(tmp_path.iterdir())  # the arrays' folder is removed


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        json.loads(body)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    servers = []

    def start(status=200):
        handler = type("H", (_Handler,), {"status": status})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/invocations"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_load_test_reports_latency_and_rate(echo_server, concurrency):
    bodies = rest.recommend_bodies([1, 2, 3], k=10)
    assert json.loads(bodies[0]) == {"dataframe_records": [{"userId": 1}], "params": {"task": "recommend", "k": 10}}
    out = rest.load_test(echo_server(), bodies, n_requests=10, concurrency=concurrency, warmup=2)
    assert out["requests"] == 10 and out["errors"] == 0 and out["concurrency"] == concurrency
    _positive(out["p50_ms"], out["p99_ms"], out["requests_per_second"])
    assert out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]


def test_load_test_counts_error_answers(echo_server):
    out = rest.load_test(echo_server(status=500), rest.recommend_bodies([1]), n_requests=4, warmup=0)
    assert out["errors"] == 4


def test_entry_point_logs_table_and_json(tmp_path, monkeypatch):
    """The whole entry point on tiny data with the REST part skipped."""
    import mlflow
    from benchmarks.served import mlflow_uris

    from benchmarks import run as benchmark

    monkeypatch.chdir(tmp_path)
    out_json = tmp_path / "results.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_uris(uri):
        rc = benchmark.main(["--dataset", "synthetic-3k", "--scale", "synthetic-2k", "--notebook-epochs", "1",
                             "--serve-requests", "0", "--throughput-epochs", "1", "--rating-only-variant", "false",
                             "--tune-trials", "3", "--sweep-scales", "synthetic-2k,synthetic-3k", "--sweep-factors", "4,6",
                             "--sweep-factors-small", "", "--custom-pipeline", "synthetic-3k",
                             "--custom-memory", "synthetic-3k", "--output-json", str(out_json)])
        assert rc == 0
        results = json.loads(out_json.read_text())
        run = mlflow.get_run(results["run_id"])
        client = mlflow.MlflowClient()
        table = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/benchmark/results.md")
        logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/benchmark/results.json"))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "benchmark")}
    assert artifacts == {"benchmark/results.md", "benchmark/results.json"}
    assert logged["notebook"]["epochs_run"] == 1
    assert results["serving"] == {"skipped": "serve_requests is 0"}
    assert run.data.params["scale"] == "synthetic-2k" and run.data.params["notebook_epochs"] == "1"
    m = run.data.metrics
    for key in ("notebook_full_run_seconds", "mfrec_train_seconds", "compare_notebook_full_over_mfrec_train",
                "throughput_ratings_per_second", "throughput_peak_rss_over_raw", "mfrec_test_rmse"):
        _positive(m[key])
    assert "extrapolated" in table and "| headline |" in table and "peak RSS" in table
    # Peers, tune, sweeps against implicit, quiet and beside CPU-bound processes.
    for row in ("| ranking | EASE: test NDCG@10 |", "| ranking | implicit ALS: test NDCG@10 |",
                "| ranking | -e tune's search at its default budget: test NDCG@10 |",
                "| sweep vs implicit | synthetic-2k, k=4 (exact) |",
                "| sweep vs implicit | synthetic-2k beside 2 CPU-bound processes, k=6 (exact) |",
                "| sweep vs implicit | synthetic-3k, k=6 (exact) |",
                # A larger set runs beside the CPU-bound processes at its smallest k only.
                "| sweep vs implicit | synthetic-3k beside 2 CPU-bound processes, k=4 (exact) |",
                "| busy machine | default train step (search included), quiet / beside 2 CPU-bound processes |",
                "| busy machine | one sweep over",
                "| your own data | mlflow run: dataset=custom (parquet, text ids) / synthetic-3k itself |",
                "| your own data | prepare step on synthetic-3k's ratings as parquet with text ids |"):
        assert row in table, row
    assert "| sweep vs implicit | synthetic-3k beside 2 CPU-bound processes, k=6 (exact) |" not in table
    assert results["tune"]["trials"] == 3 and results["busy_training"]["hogs"] == 2
    for key in ("ease_test_ndcg_at_10", "implicit_als_test_ndcg_at_10", "tune_test_ndcg_at_10",
                "sweep_ratio_synthetic_2k_k4", "busy_training_over_quiet", "throughput_busy_over_quiet",
                "custom_over_synthetic", "custom_prepare_peak_over_raw"):
        _positive(m[key])


def test_entry_point_rejects_bad_parameters(tmp_path, monkeypatch):
    from benchmarks import run as benchmark

    monkeypatch.chdir(tmp_path)
    assert benchmark.main(["--notebook-epochs", "0", "--scale", "none", "--serve-requests", "0"]) == 1
    assert benchmark.main(["--rating-only-variant", "maybe"]) == 1
    assert benchmark.main(["--serve-workers", "1,0", "--scale", "none"]) == 1
    assert benchmark.main(["--scale", "synthetic-0"]) == 1


def test_a_failing_section_is_reported_and_the_rest_still_logged(tmp_path, monkeypatch):
    import mlflow
    from benchmarks.served import mlflow_uris

    from benchmarks import run as benchmark

    def broken(*args, **kwargs):
        raise RuntimeError("child died")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scale, "throughput_benchmark", broken)
    out_json = tmp_path / "results.json"
    with mlflow_uris(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        rc = benchmark.main(["--dataset", "synthetic-3k", "--scale", "synthetic-2k", "--notebook-epochs", "1",
                             "--serve-requests", "0", "--peers", "false", "--tune", "false", "--busy", "false",
                             "--sweep-scales", "", "--custom-pipeline", "none", "--custom-memory", "none",
                             "--output-json", str(out_json)])
        results = json.loads(out_json.read_text())
        table = mlflow.artifacts.load_text(f"runs:/{results['run_id']}/benchmark/results.md")
        metrics = mlflow.get_run(results["run_id"]).data.metrics
    assert rc == 1
    assert results["throughput"]["failed"] == "RuntimeError: child died"
    assert "| throughput | FAILED |" in table and "| headline |" in table
    assert "mfrec_test_rmse" in metrics and not any(k.startswith("throughput_") for k in metrics)


@pytest.mark.slow
def test_rest_benchmark_serves_both_models(tiny_split, tmp_path, monkeypatch):
    """Real ``mlflow models serve`` processes, a handful of requests each, inside what looks
    like an ``mlflow run`` (whose run id must not leak into the private model stores)."""
    from benchmarks import run as benchmark

    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")

    train, val, test, movies = tiny_split
    _, outcome = training.mfrec_benchmark(train, val, test, movies, TrainConfig(epochs=2, progress=False))
    out = rest.rest_benchmark(outcome.recommender, tmp_path, n_requests=6, concurrency=(1, 2), workers=(1, 2))
    for model in ("mfrec", "identity"):
        assert [(r["workers"], r["concurrency"]) for r in out[model]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
        for run in out[model]:
            assert run["requests"] == 6 and run["errors"] == 0
            _positive(run["p50_ms"], run["p99_ms"], run["requests_per_second"])
    metrics = report.flat_metrics({"serving": out})
    assert {"serve_mfrec_c1_p50_ms", "serve_identity_c2_requests_per_second", "serve_mfrec_w2_c2_p99_ms"} <= set(metrics)
    table = report.markdown_table({"serving": out})
    assert "| REST | identity, 2 client(s) |" in table and "| REST | mfrec, 2 client(s), 2 workers |" in table
    assert os.environ["MLFLOW_RUN_ID"] == "0123456789abcdef0123456789abcdef"  # restored


def test_gpu_check_figures_on_the_cpu(tmp_path, capsys):
    """scripts/gpu_check.sh's sweep and training figures, run on the CPU on a small synthetic
    set: one line per device and k (the CG solve from 20 factors), and the train step's."""
    from benchmarks import gpu_sweeps

    out = tmp_path / "gpu.json"
    assert gpu_sweeps.main(["--dataset", "synthetic-30k", "--factors", "4,24", "--devices", "cpu", "--train", "cpu",
                            "--output-json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert [(r["n_factors"], r["als_solve"]) for r in figures["sweeps"]] == [(4, "exact"), (24, "cg")]
    for row in figures["sweeps"]:
        _positive(row["steady_sweep_seconds"], row["ratings_per_second"])
    assert figures["train"]["device"] == "cpu" and figures["train"]["test_ndcg_at_10"] > 0
    printed = capsys.readouterr().out
    assert "cpu k=24 (cg):" in printed and "cpu train step + evaluation:" in printed
