"""What the benchmark records about the machine and a process's memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Optional


def child_env() -> dict:
    """This process's environment with the repository first on ``PYTHONPATH``, for a child
    interpreter that runs ``python -m benchmarks....``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory(),
    }


def _total_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def proc_status_bytes(field: str) -> Optional[int]:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> Optional[int]:
    """Current resident set size of this process (Linux /proc; psutil elsewhere)."""
    rss = proc_status_bytes("VmRSS")
    if rss is not None:
        return rss
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001 - psutil missing or unsupported
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's own memory, in bytes.

    Linux: ``VmHWM`` from /proc/self/status. Not ``ru_maxrss``: Linux carries that across
    ``fork`` + ``exec``, so a child started by a big parent would report the parent's RSS at the
    fork. Elsewhere ``ru_maxrss`` (macOS reports bytes, others KiB).
    """
    peak = proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_against(raw_bytes: int, rss_after_imports: int) -> dict:
    """This process's peak RSS against ``raw_bytes`` (the data's own size), also counting only
    what came after the imports: what the memory benchmarks report."""
    peak = peak_rss_bytes()
    return {"rss_after_imports": rss_after_imports, "peak_rss": peak, "raw_bytes": raw_bytes,
            "peak_over_raw": peak / raw_bytes, "peak_above_imports_over_raw": (peak - rss_after_imports) / raw_bytes}
