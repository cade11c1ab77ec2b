"""Helpers shared by test modules: the repository, the venv's tools; ports, HTTP readiness and
process stopping come from :mod:`benchmarks.served` (the benchmark uses them too)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from benchmarks.served import free_port, stop_process, wait_http  # noqa: E402,F401


def venv_env(**extra: str) -> dict[str, str]:
    """The current environment with the venv's bin first on PATH, plus ``extra``."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
