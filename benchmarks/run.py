"""MLflow entry point ``benchmark``: notebook loop vs mfrec, peers, solvers, scale, REST.

    python -m benchmarks.run --data-path path/to/ml-latest-small.zip \\
        --scale synthetic-25m --notebook-epochs 3 --serve-requests 2000 --seed 0

Measures, in one run on this machine: the original notebook's training loop (per-row
DataLoader, batch 128) against mfrec's default train step (settings search included) on the
seeded split of ``--dataset`` (train+val = 80 %, test = 20 %); Surprise SVD on the same split
when ``scikit-surprise`` is installed; the default train step quiet and beside two CPU-bound
processes (``--busy false`` skips these); EASE and implicit's ALS, each tuned on validation,
on the same split (``--peers false``); ``-e tune``'s search at its default budget
(``--tune false``); seconds per ALS sweep against implicit's CG ALS at the same k on each of
``--sweep-scales`` (child processes); epoch throughput and peak RSS of mfrec's training on
the ``--scale`` dataset (``--scale none`` skips it), quiet and beside the CPU-bound
processes; and REST latency/throughput of ``recommend`` (1 user, k=10) against ``mlflow
models serve --env-manager local``, next to a trivial pyfunc that returns its input
(``--serve-requests 0`` skips it); ``mlflow run`` on ``--custom-pipeline``'s ratings as a
parquet table with text ids (``dataset=custom``) against the synthetic set itself, and the
prepare step's peak RSS on ``--custom-memory``'s (:mod:`benchmarks.custom_data`; ``none``
skips either). ``--notebook-epochs 128`` runs the whole notebook instead
of extrapolating from a few epochs. Peers need ``pip install -e '.[bench]'``.

Logs params, headline metrics and ``benchmark/results.md`` + ``benchmark/results.json``, and
prints the markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import mlflow
import pandas as pd

from benchmarks import custom_data, peers, ranking, report, scale as scaling, training
from benchmarks.contention import cpu_hogs
from benchmarks.machine import load_average, machine_info
from benchmarks.rest import rest_benchmark
from entrypoints.common import parser_for
from entrypoints.params import parse_bool, parse_number
from mfrec import tracking
from mfrec.errors import ConfigError, MfrecError

DEFAULTS = {
    "data_path": "", "scale": "synthetic-25m", "notebook_epochs": "3", "serve_requests": "2000",
    "seed": "0", "dataset": "ml-latest-small", "throughput_epochs": "2", "rating_only_variant": "true",
    "serve_workers": "1", "peers": "true", "tune": "true", "tune_trials": "60", "busy": "true",
    "sweep_scales": "synthetic-1m,synthetic-25m", "sweep_factors": "8,32,64,128", "sweep_factors_small": "256",
    "custom_pipeline": "synthetic-1m", "custom_memory": "synthetic-25m",
}
NUMBERS = {"notebook_epochs": int, "serve_requests": int, "seed": int, "throughput_epochs": int, "tune_trials": int}

def build_parser() -> argparse.ArgumentParser:
    return parser_for("python -m benchmarks.run", __doc__.split("\n\n")[0], DEFAULTS,
                      output_help="also write results.json here")


def _section(results: dict, name: str, fn, progress_json: Path | None = None):
    """Run one measurement, stamping the load average around it (timings depend on it).

    A failing section is recorded as ``{"failed": message}`` and the others still run, so one
    broken part (say, a model server that will not start) does not throw away an hour of
    measurements. With ``progress_json``, the results so far are written there after each one.
    """
    before = load_average()
    print(f"[benchmark] {name}: start (load {before})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - recorded, reported, and main() exits 1
        traceback.print_exc()
        out = {"failed": f"{type(exc).__name__}: {exc}"}
    if isinstance(out, dict):
        out.setdefault("load_average_before", before)
        out.setdefault("load_average_after", load_average())
        out.setdefault("section_seconds", time.perf_counter() - started)
    results[name] = out
    print(f"[benchmark] {name}: done in {time.perf_counter() - started:.1f} s: "
          f"{json.dumps(_summary(out), default=str)}", file=sys.stderr, flush=True)
    if progress_json is not None:
        progress_json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return out


def _summary(out) -> dict:
    """The scalar figures of a section, for the progress line."""
    if not isinstance(out, dict):
        return {}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
            if isinstance(v, (int, float, str)) and not k.startswith("load_average")}


def failed_sections(results: dict) -> list[str]:
    return [name for name, out in results.items() if isinstance(out, dict) and "failed" in out]


def run_benchmark(values: dict, workdir: Path, progress_json: Path | None = None) -> dict:
    """Every measurement; ``values`` are the string parameters (see DEFAULTS)."""
    from mfrec.data.prepare import PrepareConfig, load_prepared, prepare
    from mfrec.data.split import SplitConfig
    from mfrec.training.config import TrainConfig

    numbers = {k: parse_number(k, values[k], kind) for k, kind in NUMBERS.items()}
    for name, low in {"notebook_epochs": 1, "throughput_epochs": 1, "serve_requests": 0, "tune_trials": 1}.items():
        if numbers[name] < low:
            raise ConfigError(f"{name} must be >= {low}, got {numbers[name]}")
    rating_only = parse_bool("rating_only_variant", values["rating_only_variant"])
    workers = _worker_counts(values["serve_workers"])
    scale = values["scale"].strip()
    if scale.lower() not in ("", "none", "skip"):
        from mfrec.data.datasets import get_spec

        get_spec(scale)  # an unknown name fails now, not after the other measurements
    seed = numbers["seed"]
    results = {"params": dict(values), "machine": machine_info(),
               "load_average_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    prepare(PrepareConfig(values["dataset"], values["data_path"], SplitConfig(seed=seed)), workdir / "prepared",
            progress=False)
    p = load_prepared(workdir / "prepared")
    rating_range = tuple(p.manifest.get("rating_scale", (0.5, 5.0)))
    train_val = pd.concat([p.train, p.val], ignore_index=True)
    results["split"] = {"dataset": values["dataset"], "data_sha256": p.manifest["data_sha256"],
                        "train": len(p.train), "val": len(p.val), "test": len(p.test), "seed": seed}

    section = functools.partial(_section, results, progress_json=progress_json)
    section("notebook", lambda: training.notebook_benchmark(train_val, p.test, epochs=numbers["notebook_epochs"],
                                                         seed=seed))
    outcome = {}

    def run_mfrec():
        config = TrainConfig(seed=seed, rating_range=rating_range, progress=False)
        figures, outcome["value"] = training.mfrec_benchmark(p.train, p.val, p.test, p.movies, config)
        return figures

    section("mfrec", run_mfrec)
    section("surprise", lambda: training.surprise_benchmark(train_val, p.test, seed=seed, rating_scale=rating_range))
    if parse_bool("busy", values["busy"]):
        section("busy_training", lambda: ranking.busy_training(p, seed, rating_range))
    if parse_bool("peers", values["peers"]):
        section("peers", lambda: ranking.peers_section(p, seed))
    if parse_bool("tune", values["tune"]):
        section("tune", lambda: ranking.tune_section(p, seed, rating_range, numbers["tune_trials"]))
    factors = _factor_list("sweep_factors", values["sweep_factors"])
    extra = _factor_list("sweep_factors_small", values["sweep_factors_small"])
    for index, name in enumerate(s.strip() for s in values["sweep_scales"].split(",") if s.strip()):
        # The first (smallest) set also gets the larger k; every set a run beside CPU-bound
        # processes (the larger ones at their smallest k: minutes a sweep otherwise).
        ks = factors + (extra if index == 0 else [])
        section(f"sweeps_{name}", functools.partial(peers.sweep_comparison, name, ks, workdir))
        if parse_bool("busy", values["busy"]):
            busy_ks = factors if index == 0 else [min(factors)]
            section(f"sweeps_{name}_busy", functools.partial(peers.sweep_comparison, name, busy_ks, workdir, True))
    custom = {"pipeline": values["custom_pipeline"].strip(), "memory": values["custom_memory"].strip()}
    if custom["pipeline"].lower() not in ("", "none"):
        section("custom_pipeline", lambda: custom_data.pipeline_comparison(custom["pipeline"], workdir / "custom-run"))
    if custom["memory"].lower() not in ("", "none"):
        section("custom_memory", lambda: custom_data.prepare_memory(custom["memory"], workdir / "custom-memory"))
    failed = failed_sections(results)
    if "notebook" not in failed and "mfrec" not in failed:
        results["compare"] = training.compare(results["notebook"], results["mfrec"],
                                           None if "surprise" in failed else results.get("surprise"))

    if scale.lower() in ("", "none", "skip"):
        results["throughput"] = {"skipped": "scale is none"}
    else:
        def run_scale():
            out = scaling.throughput_benchmark(scale, epochs=numbers["throughput_epochs"], workdir=workdir,
                                             overrides={"seed": seed})
            if rating_only:
                variant = scaling.throughput_benchmark(scale, epochs=numbers["throughput_epochs"], workdir=workdir,
                                                     overrides={"seed": seed, "implicit_weight": 0.0})
                variant["label"] = "implicit_weight=0, rating loss only (not the default)"
                out["variants"] = [variant]
            if parse_bool("busy", values["busy"]):
                with cpu_hogs():
                    busy = scaling.throughput_benchmark(scale, epochs=numbers["throughput_epochs"], workdir=workdir,
                                                        overrides={"seed": seed})
                out["busy"] = {"steady_epoch_seconds": busy["steady_epoch_seconds"], "hogs": 2,
                               "busy_over_quiet": busy["steady_epoch_seconds"] / out["steady_epoch_seconds"]}
            return out

        section("throughput", run_scale)

    if numbers["serve_requests"] == 0:
        results["serving"] = {"skipped": "serve_requests is 0"}
    elif "value" not in outcome:
        results["serving"] = {"skipped": "no trained model (the mfrec section failed)"}
    else:
        section("serving", lambda: rest_benchmark(
            outcome["value"].recommender, workdir / "serving", numbers["serve_requests"], seed=seed,
            workers=workers))
    results["load_average_end"] = load_average()
    return results


def _factor_list(name: str, text: str) -> list[int]:
    values = [parse_number(name, part.strip(), int) for part in str(text).split(",") if part.strip()]
    if any(v < 1 for v in values):
        raise ConfigError(f"{name} must be comma-separated integers >= 1, got {text!r}")
    return values


def _worker_counts(text: str) -> tuple[int, ...]:
    """``serve_workers``: comma-separated uvicorn worker counts, each 1-16."""
    counts = []
    for part in str(text).split(","):
        count = parse_number("serve_workers", part.strip(), int)
        if not 1 <= count <= 16:
            raise ConfigError(f"serve_workers must be comma-separated counts from 1 to 16, got {text!r}")
        counts.append(count)
    return tuple(dict.fromkeys(counts))


def log_results(results: dict, values: dict, table: str) -> None:
    """Params, headline metrics and the two artifacts, in the active run."""
    tracking.log_new_params(values)
    mlflow.log_metrics(report.flat_metrics(results))
    for step, seconds in enumerate(results.get("notebook", {}).get("epoch_seconds", []), start=1):
        mlflow.log_metric("notebook_epoch_seconds", seconds, step=step)
    mlflow.set_tags({"mfrec.benchmark_dataset": values["dataset"], "mfrec.benchmark_scale": values["scale"]})
    mlflow.log_text(table, "benchmark/results.md")
    mlflow.log_text(json.dumps(results, indent=2, default=str) + "\n", "benchmark/results.json")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    values = {k: str(getattr(args, k) if getattr(args, k) is not None else "") for k in DEFAULTS}
    try:
        # Measure first, log after: the REST part opens runs in its own stores, which must not
        # nest under this process's run.
        progress = Path(args.output_json) if args.output_json else None
        with tempfile.TemporaryDirectory(prefix="mfrec-benchmark-") as tmp:
            results = run_benchmark(values, Path(tmp), progress)
        table = report.markdown_table(results)
        with tracking.top_level_run() as run:
            log_results(results, values, table)
            results["run_id"] = run.info.run_id
    except MfrecError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table)
    print(f"run_id={results['run_id']}", file=sys.stderr)
    failed = failed_sections(results)
    if failed:
        print(f"benchmark: section(s) failed: {', '.join(failed)} (see results.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
