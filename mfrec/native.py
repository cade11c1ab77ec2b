"""The fused CPU kernels of the ALS sweep (``mfrec/_native.c``).

``pip install`` compiles them as the extension module ``mfrec._native`` (optional: without
a C compiler the install still succeeds). When that build is missing or was made from other
sources of ``_native.c`` (a ``git pull`` since; a project run from its folder, as
``mlflow run .`` does in a conda environment), the first use compiles the source into the
cache folder (``MFREC_CACHE_DIR``, see :mod:`mfrec.download`) with ``$CC`` or ``cc``, once per
version of the source (and loads from there only while no other user can write to it).
Without any build, training and fold-in use the torch steps of :mod:`mfrec.als`, which
compute the same systems. The kernels run on CPU tensors only; GPUs and torch.distributed
use the torch steps. ``MFREC_NATIVE=0`` turns them off.

ctypes releases the GIL while a kernel runs: the row kernels take a range of rows, so
a large step splits its rows over threads (:func:`run_split`), and two fits can sweep at
once (training.EpochChoice).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shlex
import shutil
import stat
import subprocess
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mfrec import _build

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

# Longest a first-use compile may take (it takes ~3 s).
COMPILE_TIMEOUT = 300


@functools.lru_cache(maxsize=None)
def library():
    """The loaded kernels, or None (no build, or turned off by ``MFREC_NATIVE=0``).

    Order: the build ``pip install`` made, if it is of these sources; else a build in the
    cache folder, compiled now if there is none yet. Its path is :func:`origin`.
    """
    if os.environ.get("MFREC_NATIVE", "1") == "0":
        return None
    digest = _build.source_digest()
    lib, why_not = _installed(digest)
    if lib is None and digest is not None:
        lib, why_not_cached = _cached(digest)
        if lib is None:
            why_not = f"{why_not}; {why_not_cached}"
    if lib is None and why_not:
        warnings.warn(f"mfrec's native kernels are unavailable ({why_not}); training and fold-in use the "
                      "slower torch steps (install a C compiler, or rebuild: pip install -e .)", RuntimeWarning,
                      stacklevel=2)
    return lib


def origin() -> str | None:
    """Path of the loaded kernels (None when there are none)."""
    lib = library()
    return None if lib is None else getattr(lib, "mfrec_path", lib._name)


def _open(path: str, digest: str | None):
    """``(lib, None)`` for a build at ``path`` of these sources, else ``(None, why)``."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return None, f"{path} does not load: {e}"
    version = getattr(lib, "mfrec_abi_version", None)
    source = getattr(lib, "mfrec_source_digest", None)
    if version is not None:
        version.restype, version.argtypes = _i64, []
    if source is not None:
        source.restype, source.argtypes = ctypes.c_char_p, []
    if (version is None or version() != ABI_VERSION
            or (digest is not None and (source is None or source().decode() != digest))):
        return None, f"{path} is a build of other mfrec sources"
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib, None


def _installed(digest: str | None):
    try:
        from mfrec import _native
    except ImportError:
        return None, "pip install built none"
    return _open(_native.__file__, digest)


# Linux: the cache folder is opened once and every later step goes through that descriptor.
_PINNED = os.path.isdir("/proc/self/fd")


def _cached(digest: str):
    """The cache folder's build of the kernels for ``digest``, compiled first when missing.

    Loading a library runs its code, so only a build no other user could have written is
    loaded: the folder is made 0700 and refused when others can write to it, and on Linux
    the compile, the rename and the load all go through the folder as opened for that check
    (``/proc/self/fd``), so whoever can rename its path meanwhile (a shared
    ``MFREC_CACHE_DIR``) changes nothing. Elsewhere no folder above it may be writable by
    others either.
    """
    from mfrec.download import default_cache_dir

    folder = default_cache_dir() / "native"
    name = f"_native-{digest}-{platform.machine()}.so"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        return None, f"cannot use {folder}: {e}"
    tmp = f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}.so"
    try:
        unsafe = _others_can_write(os.fstat(dfd), folder) or (None if _PINNED else _unsafe_above(folder))
        if unsafe:
            return None, unsafe
        lib, _ = _load(dfd, folder, name, digest)
        if lib is not None:
            return lib, None
        cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or "cc"]
        # Built under a temporary name and renamed, so a process that loads it (or a second
        # one compiling at the same time) never sees half a library.
        out = f"/proc/self/fd/{dfd}/{tmp}" if _PINNED else str(folder / tmp)
        cmd = [*cc, *_build.FLAGS, "-shared", "-fPIC", "-DMFREC_NO_PYTHON",
               f"-DMFREC_SOURCE_DIGEST={_build.digest_macro(digest)}", str(_build.SOURCE), "-o", out, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, pass_fds=(dfd,))
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"compiling them failed: {shlex.join(cmd)}: {e}"
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            return None, f"compiling them failed: {shlex.join(cmd)} exited with {done.returncode}: {tail}"
        os.chmod(tmp, 0o755, dir_fd=dfd)  # the linker's mode follows the umask, which may let the group write
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return _load(dfd, folder, name, digest)
    except OSError as e:
        return None, f"cannot use {folder}: {e}"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)


def _load(dfd: int, folder: Path, name: str, digest: str):
    """``_open`` of the build ``name`` in the opened folder ``dfd``; ``(None, None)`` if none."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dfd)
    except FileNotFoundError:
        return None, None
    try:
        unsafe = _others_can_write(os.fstat(fd), folder / name)
        if unsafe:
            return None, unsafe
        lib, why = _open(f"/proc/self/fd/{fd}" if _PINNED else str(folder / name), digest)
    finally:
        os.close(fd)
    if lib is not None:
        lib.mfrec_path = str(folder / name)
    return lib, why


def _others_can_write(st: os.stat_result, path: Path) -> str | None:
    """Why others could change what ``st`` describes (another owner, group/world-writable), or None."""
    if not hasattr(os, "getuid"):
        return None
    if st.st_uid != os.getuid():
        return f"{path} belongs to another user"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users (chmod go-w it, or set MFREC_CACHE_DIR)"
    return None


def _unsafe_above(folder: Path) -> str | None:
    """Why another user could replace ``folder`` through a folder above it, or None: each must
    belong to this user or root and be writable by no one else, unless sticky (/tmp)."""
    if not hasattr(os, "getuid"):
        return None
    for parent in folder.resolve().parents:
        st = parent.stat()
        if st.st_uid not in (os.getuid(), 0):
            return f"{parent} belongs to another user"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by other users (set MFREC_CACHE_DIR to a private folder)"
    return None


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
