"""Timing beside other work: CPU-bound processes started for the length of a measurement.

Users' machines and CI are rarely idle; the benchmark times its training figures quiet and
beside ``HOGS`` processes that each keep a core busy (a pure-Python loop), so that a solver
whose threads wait on each other shows it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

HOGS = 2


@contextlib.contextmanager
def cpu_hogs(n: int = HOGS):
    """``n`` CPU-bound processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)  # let the scheduler see them
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def quiet_and_busy(measure, n: int = HOGS) -> dict:
    """``measure()`` (returning seconds, or a dict with ``seconds``) run quiet, then beside ``n``
    CPU-bound processes; returns both and their ratio."""
    quiet = measure()
    with cpu_hogs(n):
        busy = measure()
    q = quiet["seconds"] if isinstance(quiet, dict) else quiet
    b = busy["seconds"] if isinstance(busy, dict) else busy
    return {"quiet": quiet, "busy": busy, "quiet_seconds": q, "busy_seconds": b, "busy_over_quiet": b / q,
            "hogs": n}
