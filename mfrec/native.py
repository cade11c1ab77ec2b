"""The fused CPU kernels of the ALS sweep (``mfrec/_native.c``), when they were built.

``pip install`` compiles them (an optional extension: without a C compiler the install still
succeeds and training uses the torch steps of :mod:`mfrec.als`, which compute the same
systems). They run on CPU tensors only; GPUs, torch.distributed and fold-in use the torch
steps. ``MFREC_NATIVE=0`` turns them off.

ctypes releases the GIL while a kernel runs: the row kernels take a range of rows, so
a large step splits its rows over threads (:func:`run_split`), and two fits can sweep at
once (training.EpochChoice).
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_int = ctypes.c_int
_f32 = ctypes.c_float

_SIGNATURES = {
    "mfrec_table_stride": (_i64, [_int, _int, _int]),
    "mfrec_csr_fill": (None, [_i64, _p, _p, _p, _p, _p, _int, _p, _int, _f32]),
    "mfrec_item_table": (None, [_i64, _int, _int, _f32, _f32, _f32, _f32, _p, _p, _p, _p]),
    "mfrec_item_rows": (_i64, [_p, _p, _int, _p, _int, _f32, _p, _p, _p, _f32, _int, _int, _f32, _p, _p, _p,
                               _p, _p, _p, _i64, _i64]),
    "mfrec_user_table": (None, [_i64, _int, _int, _f32, _f32, _f32, _f32, _p, _p, _p, _p, _p]),
    "mfrec_user_rows": (_i64, [_p, _p, _int, _p, _int, _f32, _p, _p, _p, _f32, _int, _int, _f32, _f32, _f32,
                               _p, _p, _p, _p, _p, _p, _i64, _i64]),
}


# mfrec_abi_version() of the kernels these signatures describe.
ABI_VERSION = 2


@functools.lru_cache(maxsize=None)
def library():
    """The loaded kernels, or None (not built, or turned off by ``MFREC_NATIVE=0``)."""
    if os.environ.get("MFREC_NATIVE", "1") == "0":
        return None
    try:
        from mfrec import _native
    except ImportError:
        return None
    lib = ctypes.CDLL(_native.__file__)
    version = getattr(lib, "mfrec_abi_version", None)
    if version is not None:
        version.restype, version.argtypes = _i64, []
    if version is None or version() != ABI_VERSION:
        warnings.warn(f"{_native.__file__} is a build of other mfrec sources; training uses the torch steps "
                      "(rebuild the kernels: pip install -e .)", RuntimeWarning, stacklevel=2)
        return None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def available() -> bool:
    return library() is not None


def ptr(t: torch.Tensor | None):
    """Address of a contiguous CPU tensor's data (None for a missing one). The caller keeps
    the tensor alive for as long as a kernel may use the address."""
    if t is None:
        return None
    assert t.is_contiguous() and t.device.type == "cpu", "native kernels take contiguous CPU tensors"
    return t.data_ptr()


@functools.lru_cache(maxsize=None)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="mfrec-als")


def split_rows(crow: torch.Tensor, parts: int) -> list:
    """Row boundaries cutting a CSR into ``parts`` ranges of about equal work (rows + ratings)."""
    n_rows = len(crow) - 1
    if parts <= 1 or n_rows < 2 * parts:
        return [0, n_rows]
    work = crow.to(torch.long) + torch.arange(n_rows + 1)
    targets = torch.arange(1, parts) * (int(work[-1]) / parts)
    cuts = torch.searchsorted(work, targets.to(torch.long)).tolist()
    return [0] + cuts + [n_rows]


def run_split(fn, bounds: list) -> list:
    """``fn(part, lo, hi)`` for each consecutive pair ``lo, hi`` of ``bounds`` (``part`` its
    number), on threads when there are several; their results in order."""
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if len(ranges) == 1:
        return [fn(0, *ranges[0])]
    futures = [_pool(len(ranges)).submit(fn, part, lo, hi) for part, (lo, hi) in enumerate(ranges) if part]
    first = fn(0, *ranges[0])
    return [first] + [f.result() for f in futures]
