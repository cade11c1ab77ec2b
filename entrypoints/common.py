"""Command-line plumbing shared by the entry points: parsers and the final summary."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

if not sys.stderr.isatty():
    # Per-file download bars fill CI logs; keep them for people at a terminal.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's INFO lines (system metrics started and stopped, input example validated) say nothing
# a user acts on: the entry points print progress and a summary of their own.
logging.getLogger("mlflow").setLevel(os.environ.get("MFREC_MLFLOW_LOG_LEVEL", "WARNING"))


# Parameters whose value may be empty: ``--data-path`` with nothing after it means "none".
OPTIONAL_VALUES = ("data_path", "sweep_scales", "sweep_factors_small", "rating_column", "timestamp_column",
                   "items_path", "category_column", "users")


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


NO_RATING_METRICS = "skipped: implicit feedback (choices, no ratings) has no rating to predict"


def held_out_text(m: dict) -> str:
    """The held-out figures for a console line: test RMSE (or why there is none) and NDCG@10."""
    rmse = m.get("test_rmse", float("nan"))
    head = f"test_rmse={rmse:.4f}" if rmse == rmse else f"test_rmse {NO_RATING_METRICS};"
    return f"{head} test_ndcg_at_10={m['test_ndcg_at_10']:.4f}"


def finish(result: dict, output_json: str | None, summary: str) -> int:
    if output_json:
        Path(output_json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(summary, file=sys.stderr)
    return 0
