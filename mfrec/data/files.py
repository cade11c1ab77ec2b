"""Read-only access to a dataset's files, in a zip or a folder, and which MovieLens layout they are."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import IO

from mfrec.data.datasets import FORMAT_FILES
from mfrec.errors import DataError


class DataFiles:
    """Read-only access to dataset files in a zip or a folder.

    Files may sit at the top level or one folder down (MovieLens zips hold ``ml-1m/…``).

    Args:
        path: a ``.zip`` file or a directory.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip_members: dict[str, str] | None = None
        if self.path.is_file():
            try:
                with zipfile.ZipFile(self.path) as zf:
                    infos = zf.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{self.path} is not a readable zip archive: {exc}") from exc
            self._zip_members = _index_by_basename(
                (i.filename for i in infos if not i.is_dir()), str(self.path)
            )
        elif not self.path.is_dir():
            raise DataError(f"{self.path} does not exist or is neither a zip nor a folder")

    @property
    def is_zip(self) -> bool:
        return self._zip_members is not None

    def names(self) -> set[str]:
        """Base names of the files available (top level or one folder down)."""
        if self._zip_members is not None:
            return set(self._zip_members)
        return {p.name for p in self._dir_files()}

    def label(self, name: str) -> str:
        """Human-readable location of ``name`` for messages."""
        if self._zip_members is not None:
            return f"{self.path}:{self._zip_members.get(name, name)}"
        return str(self._dir_path(name))

    def member(self, name: str) -> str:
        """Path of ``name`` inside the zip."""
        if self._zip_members is None or name not in self._zip_members:
            raise DataError(f"{name} not found in {self.path}")
        return self._zip_members[name]

    def open(self, name: str) -> IO[bytes]:
        """Open ``name`` for binary reading (a streaming reader for zip members)."""
        if self._zip_members is not None:
            member = self.member(name)
            zf = zipfile.ZipFile(self.path)
            try:
                return _ClosingZipMember(zf, zf.open(member))
            except Exception:
                zf.close()
                raise
        return open(self._dir_path(name), "rb")

    def _dir_files(self) -> list[Path]:
        files = [p for p in self.path.iterdir() if p.is_file()]
        ratings_files = {r for r, _ in FORMAT_FILES.values()}
        if not any(p.name in ratings_files for p in files):
            # An extracted zip: the files sit in its one folder.
            subdirs = [p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if len(subdirs) == 1:
                files = [p for p in subdirs[0].iterdir() if p.is_file()]
        return files

    def _dir_path(self, name: str) -> Path:
        for p in self._dir_files():
            if p.name == name:
                return p
        raise DataError(f"{name} not found in {self.path}")


class _ClosingZipMember(io.RawIOBase):
    """A zip member stream that also closes its ZipFile."""

    def __init__(self, zf: zipfile.ZipFile, stream: IO[bytes]):
        self._zf, self._stream = zf, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._zf.close()
        super().close()


def _index_by_basename(names, where: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) > 2 or parts[-1].startswith("."):
            continue
        base = parts[-1]
        # A top-level file wins over one inside a folder; two folders with the same file are
        # ambiguous only if the file is one we read, so the first wins and detect_format checks.
        if base not in index or len(parts) < len(index[base].strip("/").split("/")):
            index[base] = name
    return index


def detect_format(files: DataFiles) -> str:
    """Name the format (``csv``, ``100k``, ``1m``) from the ratings file present.

    Raises:
        DataError: no known ratings file is present.
    """
    names = files.names()
    for fmt, (ratings_file, _) in FORMAT_FILES.items():
        if ratings_file in names:
            return fmt
    wanted = ", ".join(r for r, _ in FORMAT_FILES.values())
    raise DataError(
        f"{files.path} holds no MovieLens ratings file ({wanted}) at its top level or one "
        f"folder down; found: {', '.join(sorted(names)) or 'nothing'}"
    )
