"""Helpers shared by the entry points: argument parsing and run handling."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import mlflow

if not sys.stderr.isatty():
    # Per-file download bars fill CI logs; keep them for people at a terminal.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def fail_on_termination() -> None:
    """Make SIGTERM unwind the stack, so every open run ends FAILED instead of staying RUNNING.

    Not from the middle of a tracking-database call, though: SQLAlchemy is not safe against
    an exception raised between its statements. A SIGTERM that landed in a query left
    sqlite locked, so the runs could not be marked FAILED and stayed RUNNING (seen in CI,
    about one kill in 25, once training had got fast enough that kills met the train step's
    logging). There the exit waits, looked at again every 50 ms, until the call has
    returned; at most ``TERMINATION_GRACE`` seconds.
    """
    deadline = []

    def _raise(signum, frame):
        if not deadline:
            deadline.append(time.monotonic() + TERMINATION_GRACE)
        if _in_database_call(frame) and time.monotonic() < deadline[0] and hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, _raise)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)  # no later alarm during the unwinding
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, _raise)


# Longest a SIGTERM waits for a tracking-database call to return.
TERMINATION_GRACE = 30.0


def _in_database_call(frame) -> bool:
    """Whether ``frame`` or a caller runs SQLAlchemy or MLflow's database store."""
    while frame is not None:
        name = frame.f_code.co_filename.replace(os.sep, "/")
        if "/sqlalchemy/" in name or "/mlflow/store/db/" in name or name.endswith("/sqlalchemy_store.py"):
            return True
        frame = frame.f_back
    return False


def system_metrics_available() -> bool:
    """MLflow's system metrics (CPU, memory, GPU) need psutil, an optional dependency."""
    return importlib.util.find_spec("psutil") is not None


# Parameters whose value may be empty: ``--data-path`` with nothing after it means "none".
OPTIONAL_VALUES = ("data_path",)


def parser_for(prog: str, description: str, defaults: dict,
               output_help: str = "also write the step's result here as JSON") -> argparse.ArgumentParser:
    """An argparse parser taking ``--some-key`` and ``--some_key`` for each default, plus
    ``--output-json``. Values stay strings, exactly as received, so logged params match what
    mlflow logged."""
    # No abbreviations: `-P n_factor=16` must be refused, not read as n_factors.
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    for key, default in defaults.items():
        flags = [f"--{key.replace('_', '-')}"] + ([f"--{key}"] if "_" in key else [])
        extra = {"nargs": "?", "const": ""} if key in OPTIONAL_VALUES else {}
        parser.add_argument(*flags, dest=key, default=default, **extra)
    parser.add_argument("--output-json", "--output_json", dest="output_json", default=None, help=output_help)
    return parser


@contextlib.contextmanager
def top_level_run(**kwargs):
    """``mlflow.start_run(**kwargs)`` for an entry point's own run; if the block ends early
    (an error, SIGTERM), every run of its tree still RUNNING afterwards ends FAILED.

    MLflow's own unwinding is not enough: ``end_run`` pops a run off the active stack before
    it marks it terminated, so a SIGTERM landing in between leaves that run RUNNING while its
    parent ends FAILED (seen here with fast training: the signal met the ``train`` step's end).
    """
    run = mlflow.start_run(**kwargs)
    root = run.info.run_id
    try:
        with run:
            yield run
    except BaseException:
        # The run is failing already: finish its bookkeeping, briefly and uninterrupted (a
        # tracking server that is down gets one short try, not MLflow's minutes of retries).
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with restored_environ(_QUICK_HTTP):
                os.environ.update(_QUICK_HTTP)
                _fail_running_tree(root)
        finally:
            signal.signal(signal.SIGTERM, previous)
        raise


_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def restored_environ(keys):
    """Put environment variables ``keys`` back as they were (set or unset) after the block."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fail_running_tree(root: str) -> None:
    """Mark ``root`` and its descendants FAILED where they are still RUNNING (best effort:
    the original error is what the caller reports). Children are looked for in every
    experiment: a nested run goes to the current experiment, which need not be its parent's."""
    try:
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        pending = [root]
        while pending:
            run_id = pending.pop()
            token = None
            while True:
                page = client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                          page_token=token)
                pending += [child.info.run_id for child in page]
                token = page.token
                if not token:
                    break
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - never mask the error being raised
        print(f"warning: could not mark unfinished runs of {root} FAILED: {exc}", file=sys.stderr)


@contextlib.contextmanager
def active_or_new_run(**kwargs):
    """The active run (``mlflow run`` made one, or a pipeline opened a nested one), else a new one."""
    active = mlflow.active_run()
    if active is not None:
        yield active
    else:
        with mlflow.start_run(**kwargs) as run:
            yield run


def finish(result: dict, output_json: str | None, summary: str) -> int:
    if output_json:
        Path(output_json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(summary, file=sys.stderr)
    return 0


def parse_number(name: str, value, kind):
    """``kind(value)`` or a clear error naming the parameter."""
    from mfrec.errors import ConfigError

    try:
        if kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"parameter {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def at_least(values: dict, bounds: dict) -> None:
    """ConfigError naming the first of ``bounds`` ({parameter: lowest allowed value}) that
    ``values`` has below its bound."""
    from mfrec.errors import ConfigError

    for name, low in bounds.items():
        if values[name] < low:
            raise ConfigError(f"{name} must be >= {low}, got {values[name]}")


def parse_bool(name: str, value) -> bool:
    """``True``/``False`` from a bool or the strings MLproject passes (true/false, 1/0, yes/no,
    y/n, on/off), or a clear error naming the parameter."""
    from mfrec.errors import ConfigError

    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ConfigError(f"parameter {name} must be true or false, got {value!r}")
