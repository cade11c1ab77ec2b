"""A table as files: one CSV or parquet file, or a folder of parts; read with the columns
asked for, and its rows named by file and line (CSV) or row (parquet) in error messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mfrec.data.table import MAX_EXAMPLES
from mfrec.errors import DataError

CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def table_files(path: str | Path) -> list[Path]:
    """The files of a table: ``path`` itself, or a folder's CSV or parquet parts (one kind,
    sorted by name; hidden files and markers such as ``_SUCCESS`` skipped)."""
    path = Path(path)
    if path.is_file():
        _kind(path)
        return [path]
    if not path.is_dir():
        raise DataError(f"data_path {path} does not exist: give a CSV or parquet file, or a folder of them")
    # Hidden and "_" files and folders are no parts (.ipynb_checkpoints, Spark's _temporary, _SUCCESS).
    parts = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    kinds = {_kind(p, strict=False) for p in parts} - {None}
    if not kinds:
        raise DataError(f"{path} holds no CSV ({', '.join(CSV_SUFFIXES)}) or parquet "
                        f"({', '.join(PARQUET_SUFFIXES)}) files")
    if len(kinds) > 1:
        raise DataError(f"{path} mixes CSV and parquet files: a table's parts must be one kind")
    return [p for p in parts if _kind(p, strict=False)]


def files_sha256(files: list[Path]) -> str:
    """SHA-256 over the files' names and bytes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _kind(path: Path, strict: bool = True) -> str | None:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if strict:
        raise DataError(f"{path}: not a CSV ({', '.join(CSV_SUFFIXES)}) or parquet "
                        f"({', '.join(PARQUET_SUFFIXES)}) file name")
    return None


class Where:
    """Where row ``i`` of a concatenated table came from, for messages."""

    def __init__(self, files: list[Path], rows: list[int], csv: bool):
        self.files, self.starts, self.csv = files, np.cumsum([0, *rows]), csv
        self._lines: dict[int, np.ndarray] = {}

    def __call__(self, i: int) -> str:
        part = int(np.searchsorted(self.starts, i, "right")) - 1
        row = i - int(self.starts[part])
        if not self.csv:
            return f"{self.files[part]} row {row + 1}"
        if part not in self._lines:  # only when a message needs it: one pass over the file
            self._lines[part] = _record_lines(self.files[part])
        lines = self._lines[part]
        return f"{self.files[part]} line {int(lines[row]) if row < len(lines) else row + 2}"


def _record_lines(f: Path) -> np.ndarray:
    """The line number of each record of a CSV file: Arrow skips empty lines, so row i is not
    always line i + 2 (the header is line 1; line breaks inside quotes are not followed)."""
    numbers = []
    with pa.input_stream(str(f), compression="detect") as stream:
        for number, line in enumerate(stream.read().splitlines(), start=1):
            if number > 1 and line:
                numbers.append(number)
    return np.asarray(numbers, dtype=np.int64)


def read_parts(files: list[Path], wanted: list[str], what: str) -> tuple[pa.Table, Where]:
    tables = []
    for f in files:
        available = _columns_of(f)
        missing = [c for c in wanted if c not in available]
        if missing:
            raise DataError(f"{f}: the {what} has no column {', '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(available) or '(none)'} (name yours with the *_column parameters; "
                            "rating_column= for clicks without ratings, timestamp_column= for no time)")
        tables.append(_read_file(f, wanted))
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise DataError(f"the {what}'s parts disagree on a column's type ({exc}); parts: "
                        f"{', '.join(map(str, files[:5]))}") from None
    if table.num_rows == 0:
        raise DataError(f"the {what} has no rows: {', '.join(map(str, files[:5]))}")
    return table, Where(files, [t.num_rows for t in tables], _kind(files[0]) == "csv")


def _columns_of(f: Path) -> list[str]:
    if _kind(f) == "parquet":
        try:
            return list(pq.read_schema(f).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f} is not a readable parquet file: {exc}") from exc
    try:
        with pacsv.open_csv(f, parse_options=_csv_options(f)) as reader:
            return list(reader.schema.names)
    except (pa.ArrowInvalid, OSError, StopIteration) as exc:
        raise DataError(f"{f}: cannot read its header: {exc}") from exc


def _csv_options(f: Path) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if ".tsv" in f.name.lower() else ",")


def _read_file(f: Path, wanted: list[str]) -> pa.Table:
    try:
        if _kind(f) == "parquet":
            return pq.read_table(f, columns=wanted)
        # Every column as text: ids keep their spelling ("007"), and a bad value is found
        # by row below instead of failing the read without a line number.
        return pacsv.read_csv(f, parse_options=_csv_options(f), convert_options=pacsv.ConvertOptions(
            include_columns=wanted, column_types={c: pa.string() for c in wanted},
            strings_can_be_null=True, quoted_strings_can_be_null=False, null_values=[""]))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{f} cannot be read: {exc}") from exc


def bad(mask: np.ndarray, values, column: str, problem: str, where: Where) -> None:
    """Reject the table if ``mask`` flags any row, quoting up to five."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    shown = "; ".join(f"{where(int(i))}: {plain(values[int(i)])!r}" for i in idx[:MAX_EXAMPLES])
    raise DataError(f"column {column!r}: {len(idx):,} row(s) with {problem}; nothing was loaded. Fix or remove "
                    f"them, e.g. {shown}")


def plain(value):
    """A numpy scalar as the Python value it holds (for messages and JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def no_nulls(column: pa.ChunkedArray, name: str, problem: str, where: Where) -> None:
    if column.null_count:
        bad(column.is_null().to_numpy(), column.to_pylist(), name, problem, where)
