"""Helpers shared by test modules: free ports, waiting for HTTP services, the venv's tools."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc=None) -> None:
    """Poll ``url`` until it answers 200, ``proc`` exits, or ``timeout`` seconds pass.

    Raises:
        RuntimeError: the process died or the service never answered.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s (last error: {last})")


def venv_env(**extra: str) -> dict[str, str]:
    """The current environment with the venv's bin first on PATH, plus ``extra``."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def stop_process(proc, timeout: float = 10.0) -> None:
    """Terminate ``proc`` by its PID, killing it if it does not exit within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        proc.kill()
        proc.wait(timeout=timeout)
