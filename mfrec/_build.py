"""How mfrec/_native.c is compiled: shared by setup.py (the extension module ``pip install``
builds) and mfrec/native.py (a build at first use when that one is missing or stale).
Imports nothing from mfrec, so setup.py can load it before anything is installed."""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE = Path(__file__).with_name("_native.c")

# -ffp-contract=off: no fused multiply-adds, so the AVX-512, AVX2 and baseline builds of the
# kernels (mfrec/_native.c picks one at load time) give the same numbers bit for bit.
FLAGS = ["-O3", "-ffp-contract=off"]


def source_digest(source: Path = SOURCE) -> str | None:
    """The sha256 prefix that a build of ``source`` reports (``mfrec_source_digest``), or None
    when the source is not there (an installed wheel ships only its build)."""
    try:
        return hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return None


def digest_macro(digest: str) -> str:
    """The C string literal that ``-DMFREC_SOURCE_DIGEST=`` takes."""
    return f'"{digest}"'
