"""Download, verify and cache MovieLens zips; resolve where a dataset's files come from.

The cache holds ``<name>.zip`` plus a ``<name>.zip.verified`` marker. Downloads stream into a
temporary file in the cache folder and are renamed into place only after verification, so the
final name never holds a partial or unverified file. Environment:

- ``MFREC_CACHE_DIR``: cache folder (default ``$XDG_CACHE_HOME/mfrec`` or ``~/.cache/mfrec``).
- ``MFREC_BASE_URL``: where zips are fetched from (default GroupLens), e.g. a mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mfrec.data.datasets import FORMAT_FILES, DatasetSpec, get_spec
from mfrec.errors import ChecksumError, ConfigError, DataError, DownloadError
from mfrec.data.files import DataFiles, detect_format

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from.

    Attributes:
        dataset: registry name.
        kind: ``download`` (cached zip), ``zip`` or ``dir`` (user's ``data_path``), ``synthetic``.
        path: the zip or folder to read (``None`` for synthetic).
        url: the download URL (``download`` only).
        verified: files matched the known checksums (``None``: nothing known to check against).
        verification: what was checked, or why it did not match.
    """

    dataset: str
    kind: str
    path: Path | None = None
    url: str | None = None
    verified: bool | None = None
    verification: str = ""

    def describe(self) -> dict:
        """JSON-ready description for manifests."""
        return {
            "dataset": self.dataset, "kind": self.kind,
            "path": str(self.path) if self.path else None, "url": self.url,
            "verified": self.verified, "verification": self.verification,
        }


def default_cache_dir() -> Path:
    """``$MFREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mfrec``, else ``~/.cache/mfrec``."""
    if os.environ.get("MFREC_CACHE_DIR"):
        return Path(os.environ["MFREC_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mfrec"


def default_base_url() -> str | None:
    """``$MFREC_BASE_URL`` or ``None`` (GroupLens)."""
    return os.environ.get("MFREC_BASE_URL") or None


def fetch(name: str, cache_dir: str | Path | None = None, base_url: str | None = None,
          progress: bool = True) -> Path:
    """Return the path of the verified zip of dataset ``name`` in the cache, downloading it once.

    Args:
        name: a MovieLens registry name (not synthetic).
        cache_dir: cache folder; default :func:`default_cache_dir`.
        base_url: folder URL holding ``<name>.zip``; default ``$MFREC_BASE_URL`` or GroupLens.
        progress: show a progress bar (only when stderr is a terminal).

    Raises:
        DownloadError: unreachable server, HTTP error or truncated transfer (names the URL and
            suggests ``data_path``).
        ChecksumError: the download does not match its checksum; it is deleted.
    """
    spec = get_spec(name)
    if spec.is_synthetic:
        raise ConfigError(f"dataset {name!r} is generated locally; there is nothing to fetch")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    url = spec.url(base_url or default_base_url())
    final = cache / spec.zip_name
    if final.exists():
        if _marker_matches(final):
            return final
        try:
            _write_marker(final, verify_zip(final, spec, url))
            return final
        except ChecksumError:
            final.unlink()  # stale or damaged cache entry: fetch a fresh copy below
    tmp = download(url, cache, progress=progress)
    try:
        detail = verify_zip(tmp, spec, url)
        os.replace(tmp, final)
    except ChecksumError as exc:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"download of {url} failed verification: {exc} The bad download was deleted. "
            "Retry, or pass data_path (a local zip or extracted folder) instead."
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_marker(final, detail)
    return final


def download(url: str, dest_dir: Path, progress: bool = True) -> Path:
    """Stream ``url`` into a new temporary file in ``dest_dir`` and return its path.

    The file is removed again on any failure, including a transfer shorter than its
    Content-Length.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{Path(url).name}.", suffix=".part")
    tmp = Path(tmp_name)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=Path(url).name, leave=False,
                      disable=not (progress and sys.stderr.isatty())) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(
                f"download of {url} was cut short: got {received:,} of {total:,} bytes "
                f"(connection closed early). Retry, or pass data_path (a local zip or extracted "
                "folder) instead."
            )
    except (OSError, http.client.HTTPException) as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(_unreachable_message(url, exc, received)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def verify_zip(path: Path, spec: DatasetSpec, url: str | None = None) -> str:
    """Check a zip against ``spec``'s checksums and return a description of what was checked.

    Per-file content hashes are preferred where known (they survive GroupLens repacking the
    zip); otherwise the zip's published hash; otherwise the ``.md5`` file served next to ``url``.

    Raises:
        ChecksumError: names the file, the expected and the actual value.
    """
    if spec.file_sha256:
        return _verify_members(path, spec)
    if spec.zip_checksum:
        algo, expected = spec.zip_checksum
    elif spec.md5_sidecar:
        if url is None:
            raise ChecksumError(f"{path}: {spec.name} can only be verified against {spec.name}"
                                ".zip.md5 from its download URL")
        algo, expected = "md5", fetch_md5_sidecar(url + ".md5")
    else:
        return "no checksum known"
    actual = file_digest(path, algo)
    if actual != expected:
        raise ChecksumError(f"{spec.zip_name}: expected {algo} {expected}, actual {algo} {actual}.")
    return f"zip {algo} {actual}"


def fetch_md5_sidecar(url: str) -> str:
    """Download a ``.md5`` file and return the 32-hex digest in it."""
    try:
        with _open_url(url) as resp:
            text = resp.read(4096).decode("ascii", errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(_unreachable_message(url, exc, 0)) from exc
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not match:
        raise DownloadError(f"{url} holds no md5 digest (got {text[:80]!r})")
    return match.group(0).lower()


def file_digest(path: Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, streamed."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def resolve_source(dataset: str, data_path: str | Path | None = "",
                   cache_dir: str | Path | None = None, base_url: str | None = None,
                   progress: bool = True) -> Source:
    """Decide where ``dataset``'s files come from: ``data_path`` if given, else the cache.

    ``data_path`` may be a zip, a folder holding the files, a folder with one subfolder holding
    them, or the ratings file itself. Its files are checked against known checksums where the
    registry has them, and the outcome recorded (not enforced: a local path may be the user's own
    edited copy).

    Raises:
        DataError: ``data_path`` does not exist, or holds no dataset of the expected layout.
        ConfigError: ``data_path`` given for a synthetic dataset.
    """
    spec = get_spec(dataset)
    if spec.is_synthetic:
        if data_path:
            raise ConfigError(f"dataset {dataset!r} is generated; data_path must be empty")
        return Source(dataset, "synthetic")
    if not data_path:
        path = fetch(dataset, cache_dir=cache_dir, base_url=base_url, progress=progress)
        marker = _read_marker(path)
        return Source(dataset, "download", path, spec.url(base_url or default_base_url()),
                      True, marker.get("verified", ""))
    path = Path(data_path).expanduser()
    if not path.exists():
        raise DataError(
            f"data_path {str(data_path)!r} does not exist (resolved to {path.resolve()}); pass "
            "a MovieLens zip or its extracted folder, or leave data_path empty to download"
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        if path.name in {r for r, _ in FORMAT_FILES.values()}:
            path = path.parent
        else:
            raise DataError(f"data_path {str(data_path)!r} is a file but not a zip archive")
    kind = "zip" if path.is_file() else "dir"
    if kind == "dir":
        path = _dataset_folder(path)
    files = DataFiles(path)
    fmt = detect_format(files)
    if fmt != spec.format:
        raise DataError(
            f"data_path {str(data_path)!r} looks like the {fmt!r} MovieLens layout "
            f"({FORMAT_FILES[fmt][0]}), but dataset {dataset!r} expects "
            f"{FORMAT_FILES[spec.format][0]}; set dataset to match the files"
        )
    verified, detail = _check_local(path, files, spec)
    return Source(dataset, kind, path.resolve(), None, verified, detail)


def _dataset_folder(path: Path) -> Path:
    ratings_files = {r for r, _ in FORMAT_FILES.values()}

    def has_ratings(p: Path) -> bool:
        return any((p / r).is_file() for r in ratings_files)

    if has_ratings(path):
        return path
    candidates = [p for p in sorted(path.iterdir())
                  if p.is_dir() and not p.name.startswith(".") and has_ratings(p)]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise DataError(f"data_path {path} holds several datasets "
                        f"({', '.join(p.name for p in candidates)}); point at one of them")
    raise DataError(f"data_path {path} holds no MovieLens ratings file "
                    f"({', '.join(sorted(ratings_files))}) directly or in one subfolder")


def _check_local(path: Path, files: DataFiles, spec: DatasetSpec) -> tuple[bool | None, str]:
    if spec.file_sha256:
        try:
            return True, _verify_members(path, spec, files)
        except ChecksumError as exc:
            return False, str(exc)
    if spec.zip_checksum and path.is_file():
        algo, expected = spec.zip_checksum
        actual = file_digest(path, algo)
        if actual == expected:
            return True, f"zip {algo} {actual}"
        return False, f"zip {algo} {actual} differs from the published {expected}"
    return None, "no offline checksum for this source"


def _verify_members(path: Path, spec: DatasetSpec, files: DataFiles | None = None) -> str:
    try:
        files = files or DataFiles(path)
    except DataError as exc:
        raise ChecksumError(
            f"{path.name} is not a valid zip archive (truncated or corrupt?): {exc}."
        ) from exc
    for name, expected in spec.file_sha256.items():
        if name not in files.names():
            raise ChecksumError(f"{files.path}: {name} is missing (expected sha256 {expected}).")
        actual = _member_sha256(files, name)
        if actual != expected:
            raise ChecksumError(
                f"{files.label(name)}: expected sha256 {expected}, actual {actual}."
            )
    return "sha256 of " + ", ".join(spec.file_sha256)


def _member_sha256(files: DataFiles, name: str) -> str:
    h = hashlib.sha256()
    try:
        with files.open(name) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        # The zip's own CRC or deflate stream broke before the hash was complete.
        return f"unreadable ({type(exc).__name__}: {exc})"
    return h.hexdigest()


def _open_url(url: str):
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mfrec"})
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except ValueError as exc:  # malformed URL
        raise DownloadError(f"invalid download URL {url!r}: {exc}") from exc


def _unreachable_message(url: str, exc: BaseException, received: int) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"{exc.reason}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    after = f" after {received:,} bytes" if received else ""
    return (
        f"could not download {url}{after}: {why}. If you are offline or the server is "
        "unreachable, pass data_path (a local zip or extracted folder of the dataset) instead."
    )


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_marker(path: Path, detail: str) -> None:
    st = path.stat()
    marker = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "verified": detail}
    _marker_path(path).write_text(json.dumps(marker))


def _read_marker(path: Path) -> dict:
    try:
        return json.loads(_marker_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _marker_matches(path: Path) -> bool:
    # Size and mtime unchanged since verification: skip re-hashing a multi-GB zip on every run.
    marker, st = _read_marker(path), path.stat()
    return marker.get("size") == st.st_size and marker.get("mtime_ns") == st.st_mtime_ns
