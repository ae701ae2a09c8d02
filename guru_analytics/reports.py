"""Export analytics frames to CSV or Parquet files (or CSV on stdout).

``export(con, report, path, **params)`` computes ``frames.<report>`` and writes it: ``.csv``
as UTF-8 CSV, ``.parquet`` through DuckDB's ``COPY`` (no pyarrow), ``"-"`` as CSV on stdout.

CSV rules, so a file opens safely in a spreadsheet and reads back with ``pandas.read_csv``:

- a header row with the documented column names (``frames.COLUMNS``), in that order;
- timestamps as ISO 8601 with their UTC offset in the chosen zone
  (``2025-03-30T00:00:00+01:00``; a fraction only when some value has one), empty when
  missing: read back with ``pd.to_datetime(col, utc=True, format="ISO8601")``;
- numbers as numbers (floats with full precision), booleans as ``True``/``False``;
- text cells a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
  tab or carriage return) get a leading ``'``, and so does such text right after a line
  break inside a cell (an importer that splits there must not find a formula). Session
  titles come from end users; this is the one deliberate change to a value;
- rows end in CRLF (RFC 4180), so every cell holding a CR or LF is quoted: with ``\n`` row
  ends the csv module leaves a lone CR unquoted and a reader starts a new row there.

Parquet keeps types; timestamps are stored as UTC instants (the zone is not kept).
An empty result raises ``NoDataError`` and writes nothing, and every file is written to a
temporary name first and renamed, so a failure never leaves a file that looks like data.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import duckdb
import pandas as pd

from . import frames
from .errors import ConfigError, NoDataError, OutputError

REPORTS: tuple[str, ...] = tuple(frames.FRAMES)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A formula start right after a line break inside a cell (the break itself is kept).
_FORMULA_AFTER_BREAK = re.compile(r"([\r\n])(?=[=+\-@\t])")
# Rows end in CRLF: the csv module quotes a field holding any line-terminator character.
CSV_LINE_END = "\r\n"


def neutralize(s: pd.Series) -> pd.Series:
    """Prefix text that a spreadsheet would evaluate as a formula with ``'``: at the start of
    a cell, and after every line break inside one."""
    text = s.astype("str")
    present = s.notna()
    risky = text.str.startswith(FORMULA_PREFIXES) & present
    broken = text.str.contains("[\r\n]", regex=True) & present
    if not (risky | broken).any():
        return s
    fixed = text.where(~broken, text.str.replace(_FORMULA_AFTER_BREAK, r"\1'", regex=True))
    fixed = fixed.where(~risky, "'" + fixed)
    return s.where(~(risky | broken), fixed)


def _iso(s: pd.Series) -> pd.Series:
    """ISO 8601 with ``+HH:MM`` offset; a microsecond fraction only if the column needs it."""
    fraction = bool((s.dt.microsecond.fillna(0) != 0).any())
    text = s.dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z" if fraction else "%Y-%m-%dT%H:%M:%S%z")
    # strftime writes +0100; ISO 8601 extended format wants +01:00.
    text = text.str.slice(0, -2) + ":" + text.str.slice(-2)
    return text.where(s.notna(), None)


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as it goes into a CSV: timestamps as ISO text, risky text neutralised."""
    out = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df.copy()
    for name in out.columns:
        s = out[name]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            out[name] = _iso(s)
        elif pd.api.types.is_datetime64_any_dtype(s):
            out[name] = _iso(s.dt.tz_localize("UTC"))
        elif pd.api.types.is_string_dtype(s) or s.dtype == object:
            out[name] = neutralize(s)
    out.columns = [str(c) for c in out.columns]
    return out


def write_csv(
    df: pd.DataFrame, path: str | os.PathLike[str], *, stdout: TextIO | None = None
) -> None:
    """Write ``df`` as UTF-8 CSV to ``path`` (atomically), or to stdout when path is ``-``."""
    data = csv_frame(df)
    if str(path) == "-":
        out = stdout or sys.stdout
        try:
            data.to_csv(out, index=False, lineterminator=CSV_LINE_END)
            out.flush()
        except OSError as exc:  # a closed pipe, a full disk behind a redirect
            raise OutputError.writing("-", exc) from exc
        return
    with atomic_write(path) as tmp:
        data.to_csv(tmp, index=False, encoding="utf-8", lineterminator=CSV_LINE_END)


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``df`` as Parquet through an in-memory DuckDB (no pyarrow needed)."""
    data = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    data = data.rename(columns=str)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        con.register("export_frame", data)
        with atomic_write(path) as tmp:
            literal = str(tmp).replace("'", "''")
            try:
                con.execute(f"COPY (SELECT * FROM export_frame) TO '{literal}' (FORMAT parquet)")
            except duckdb.IOException as exc:  # DuckDB's OSError: no space, no permission
                raise OutputError.writing(path, exc) from exc
    finally:
        con.close()


class atomic_write:
    """Context manager giving a temporary path next to ``path`` for the writer to create;
    renamed into place on success, removed on failure. The writer creates the file, so it
    gets the process's normal mode (umask): CSV, Parquet and chart files alike."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.path.parent
        if not parent.is_dir():
            raise ConfigError(f"cannot write {self.path}: directory {parent} does not exist")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            os.unlink(name)  # DuckDB's COPY wants to create the file itself
        except OSError as exc:  # no permission, read-only file system
            raise OutputError.writing(self.path, exc) from exc
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        try:
            if exc_type is None:
                os.replace(self.tmp, self.path)
                return
            if self.tmp.exists():
                self.tmp.unlink()
        except OSError as err:
            raise OutputError.writing(self.path, err) from err
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError.writing(self.path, exc) from exc  # e.g. the disk filled up


def file_format(path: str | os.PathLike[str]) -> str:
    """``"csv"`` or ``"parquet"`` from the file name (``-`` is CSV on stdout)."""
    if str(path) == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ConfigError(
        f"cannot tell the format of {str(path)!r}: end the name in .csv or .parquet, or use - for stdout"
    )


def export(
    con: frames.Source,
    report: str,
    path: str | os.PathLike[str],
    guru: str | Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Compute report ``report`` (a name in ``REPORTS``) for ``guru`` and write it to ``path``.

    ``params`` go to the frame function (``freq``, ``tz``, ``by``, ``start``, ``end``,
    ``users``, ``week_start``, ...). Returns the frame written. Nothing is written when the
    report is empty (``NoDataError``) or any argument is bad (``ConfigError``).
    """
    if report not in frames.FRAMES:
        raise ConfigError(f"unknown report {report!r}: use one of {', '.join(REPORTS)}")
    if guru is None:
        guru = params.pop("guru", None)
    if guru is None:
        raise ConfigError("export needs a guru slug: export(con, report, path, guru)")
    fmt = file_format(path)
    df = frames.FRAMES[report](con, guru, **params)
    if df.empty:
        raise NoDataError(
            f"nothing to export: the {report} report for guru {guru!r} is empty with these filters "
            "(widen start/end, users or search)"
        )
    if fmt == "csv":
        write_csv(df, path, stdout=stdout)
    else:
        write_parquet(df, path)
    return df
