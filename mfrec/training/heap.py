"""Handing freed memory back to the operating system.

glibc's allocator keeps what a process frees for reuse. Building a 25M-rating matrix frees
hundreds of MB of temporaries between allocations that stay, and without this they would
count in the process's resident memory until it ends; ``malloc_trim`` returns them
(milliseconds; callers use it at 25M-rating scale, not per small block). Elsewhere (another
C library, another system) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_free_memory() -> None:
    """Return the allocator's free memory to the operating system, where the C library can."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
