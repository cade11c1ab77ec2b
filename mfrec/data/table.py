"""Strict typed reading of a delimited file, and a diagnosis naming each bad row when it fails.

Column kinds: ``id`` (int32, >= 0), ``int64``, ``rating`` (float32 on a scale and step),
``flag`` (0 or 1) and ``text``. Bad rows are never dropped: the whole file is rejected with
counts per problem and up to ``MAX_EXAMPLES`` example lines (1-based, header included).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import IO, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from mfrec.errors import DataError

MAX_EXAMPLES = 5

# Column kinds: how a column is typed on the fast path and checked on the diagnosis path.
_ARROW_TYPES = {
    "id": pa.int32(), "int64": pa.int64(), "rating": pa.float32(), "flag": pa.int8(),
    "text": pa.string(),
}
_INT_BOUNDS = {"id": (0, 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "flag": (0, 1)}
_NA_TOKENS = {"", "na", "n/a", "nan", "null", "none", "-nan", "#n/a"}

@dataclass(frozen=True)
class Layout:
    delimiter: str
    header: bool
    names: tuple[str, ...] = ()
    quoted: bool = True
    shown_delimiter: str | None = None  # how lines are quoted back in messages

    def parse_options(self, **kw) -> pacsv.ParseOptions:
        return pacsv.ParseOptions(delimiter=self.delimiter,
                                  quote_char='"' if self.quoted else False, **kw)

    def read_options(self, **kw) -> pacsv.ReadOptions:
        if self.header:
            return pacsv.ReadOptions(**kw)
        return pacsv.ReadOptions(column_names=list(self.names), **kw)


def _read_header(opener: Callable[[], IO[bytes]], layout: Layout) -> list[str]:
    with opener() as f:
        line = f.readline().decode("utf-8-sig", errors="replace")
    row = next(csv.reader([line], delimiter=layout.delimiter), [])
    return [c.strip() for c in row]


def read_table(opener, label, kinds: dict[str, str], layout: Layout,
               scale=(0.5, 5.0), step=0.5) -> pd.DataFrame:
    """Read the ``kinds`` columns of a delimited file with explicit types; any bad row makes
    a :class:`DataError` describing every problem (re-read as text by :func:`_diagnose`)."""
    if layout.header:
        header = _read_header(opener, layout)
        missing = [c for c in kinds if c not in header]
        if missing:
            raise DataError(
                f"{label}: missing required column(s) {', '.join(missing)}; "
                f"header has: {', '.join(header) or '(empty)'}"
            )
    try:
        with opener() as f:
            table = pacsv.read_csv(
                f,
                read_options=layout.read_options(),
                parse_options=layout.parse_options(),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: _ARROW_TYPES[k] for c, k in kinds.items()},
                    include_columns=list(kinds),
                ),
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        table, failure = None, exc  # diagnosed below, with line numbers
    if table is not None and not any(table.column(c).null_count for c in kinds):
        # Column by column, freeing each Arrow buffer once converted; then hand the freed
        # memory back (Arrow's pool would keep it).
        df = table.to_pandas(split_blocks=True, self_destruct=True)
        del table
        pa.default_memory_pool().release_unused()
        if not _typed_problems(df, kinds, scale, step):
            return df
        failure = None
    try:
        error = _diagnose(opener, label, kinds, layout, scale, step)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{label}: cannot be parsed: {exc}") from exc
    if error is None:
        raise DataError(f"{label}: cannot be parsed: {failure or 'unknown problem'}")
    raise error


def _typed_problems(df: pd.DataFrame, kinds, scale, step, chunk: int = 1 << 20) -> bool:
    """Whether any parsed value fails its range check; in chunks, so the checks' float
    temporaries stay small next to a 25M-row table."""
    for col, kind in kinds.items():
        if kind in ("id", "flag", "rating"):
            values = df[col].to_numpy()
            for start in range(0, len(values), chunk):
                bad = _value_problems(values[start:start + chunk], kind, scale, step)
                if any(mask.any() for mask in bad.values()):
                    return True
    return False


def _value_problems(values: np.ndarray, kind: str, scale, step) -> dict[str, np.ndarray]:
    """Range checks on parsed numbers (NaN rows are ignored here: reported as missing)."""
    if kind == "rating":
        lo, hi = scale
        outside = (values < lo) | (values > hi)
        with np.errstate(invalid="ignore"):
            q = values / step
            off_grid = ~outside & np.isfinite(values) & (np.abs(q - np.round(q)) > 1e-6)
        return {f"outside {float(lo)}..{float(hi)}": outside,
                f"not a multiple of {float(step)}": off_grid}
    if kind == "id":
        return {"negative": values < 0}
    if kind == "flag":
        return {"not 0 or 1": (values != 0) & (values != 1)}
    return {}


def _diagnose(opener, label, kinds, layout: Layout, scale, step) -> DataError | None:
    """Re-read every field as text and describe each problem with example lines.

    Returns ``None`` if no row-level problem is found.
    """
    invalid: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    n_columns = len(layout.names) if not layout.header else None
    with opener() as f:
        table = pacsv.read_csv(
            f,
            # Single-threaded so that the handler sees physical line numbers.
            read_options=layout.read_options(use_threads=False),
            parse_options=layout.parse_options(ignore_empty_lines=False,
                                               invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in kinds},
                include_columns=list(kinds),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    df = table.to_pandas()
    stripped = {c: df[c].astype("str").str.strip() for c in kinds}
    blank = np.logical_and.reduce([stripped[c].eq("").to_numpy() for c in kinds])
    problems: dict[str, np.ndarray] = {}
    for col, kind in kinds.items():
        s = stripped[col]
        if kind == "text":
            continue
        missing = s.str.lower().isin(_NA_TOKENS).to_numpy() & ~blank
        problems[f"missing or NaN {col}"] = missing
        if kind == "rating":
            values = pd.to_numeric(s.where(~missing, None), errors="coerce").to_numpy(np.float64)
            problems[f"non-numeric {col}"] = ~missing & ~blank & np.isnan(values)
        else:
            is_int = s.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
            problems[f"non-integer {col}"] = ~missing & ~blank & ~is_int
            values = pd.to_numeric(s.where(is_int, None), errors="coerce").to_numpy(np.float64)
            lo, hi = _INT_BOUNDS[kind]
            problems[f"{col} out of range {lo}..{hi}"] = is_int & ((values < lo) | (values > hi))
            continue  # the bounds cover the typed checks of integer columns
        for what, mask in _value_problems(values, kind, scale, step).items():
            problems[f"{col} {what}"] = mask & ~blank
    line_of = _line_mapper(1 if layout.header else 0, sorted(n for n, _ in invalid))
    sep = layout.shown_delimiter or layout.delimiter

    def content(i: int) -> str:
        return sep.join(str(df[c].iat[i]) for c in kinds)

    report: dict[str, dict] = {}
    if invalid:
        expected = n_columns or len(_read_header(opener, layout))
        report[f"wrong number of fields (expected {expected})"] = {
            "count": len(invalid),
            "examples": [(n, t.replace(layout.delimiter, sep)) for n, t in invalid[:MAX_EXAMPLES]],
        }
    bad_rows = np.zeros(len(df), dtype=bool)
    for what, mask in problems.items():
        idx = np.flatnonzero(mask)
        if len(idx):
            bad_rows |= mask
            report[what] = {
                "count": int(len(idx)),
                "examples": [(line_of(int(i)), content(int(i))) for i in idx[:MAX_EXAMPLES]],
            }
    return _problems_error(label, report, int(bad_rows.sum()) + len(invalid))


def _line_mapper(header_lines: int, skipped: list[int]) -> Callable[[int], int]:
    """Map a table row index to its 1-based file line, given the lines pyarrow skipped."""
    skipped_arr = np.asarray(skipped, dtype=np.int64)

    def line_of(row: int) -> int:
        line = header_lines + 1 + row
        # Each skipped line at or before the candidate pushes the row one line further down.
        while True:
            shifted = header_lines + 1 + row + int(np.searchsorted(skipped_arr, line, "right"))
            if shifted == line:
                return line
            line = shifted

    return line_of


def _problems_error(label: str, report: dict, n_bad: int) -> DataError | None:
    if not report:
        return None
    lines = [f"{label}: {n_bad:,} bad row(s) found; nothing was loaded. Fix or remove them:"]
    for what, info in report.items():
        shown = "; ".join(f"line {n}: {text!r}" for n, text in info["examples"])
        lines.append(f"  - {what}: {info['count']:,} row(s), e.g. {shown}")
    err = DataError("\n".join(lines))
    err.problems = report  # type: ignore[attr-defined]
    return err
