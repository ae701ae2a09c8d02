"""Checking what users hand the store: slugs, listing keys, instants and DataFrame columns.

Validation lives where user data enters (``load_frame``, ``write_page`` with a frame, the
public arguments); the sync's typed pages skip it, their only producer being our client.
Every problem is a ``ConfigError`` raised before anything touches the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ._connection import one_line


def check_guru(guru: str) -> str:
    if not isinstance(guru, str) or not guru.strip():
        raise ConfigError(f"guru slug {guru!r} is not valid: pass the guru's slug, e.g. 'my-guru'")
    return guru


def check_listing(listing: str) -> str:
    if listing == "":
        return listing
    if isinstance(listing, str):
        kind, sep, rest = listing.partition(":")
        if sep and kind in ("user", "search") and rest:
            return listing
    raise ConfigError(
        f"listing key {listing!r} is not valid: use '' (guru-wide), 'user:<id>', "
        "'search:<query>' or 'user:<id>|search:<query>'"
    )


def as_utc(value: Any, name: str) -> datetime:
    """A tz-aware instant as a UTC ``datetime``; naive or non-time values are a ConfigError."""
    if isinstance(value, pd.Timestamp):
        if value is pd.NaT:
            raise ConfigError(f"{name} is NaT: pass a tz-aware UTC datetime")
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise ConfigError(f"{name} must be a tz-aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigError(
            f"{name} is a naive datetime: pass a tz-aware UTC value, e.g. datetime.now(UTC)"
        )
    return value.astimezone(UTC)


def opt_utc(value: Any, name: str) -> datetime | None:
    return None if value is None else as_utc(value, name)


def py_utc(value: Any) -> datetime | None:
    """DuckDB hands back TIMESTAMPTZ as ``datetime`` in a ZoneInfo('UTC'); normalise to UTC."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value.astimezone(UTC)


UTC_US = pd.DatetimeTZDtype("us", "UTC")


def utc_column(frame: pd.DataFrame, column: str, what: str, *, required: bool) -> Any:
    """Column ``column`` as a ``datetime64[us, UTC]`` array; naive, unparseable or (if
    required) missing values raise ConfigError before anything touches the cache."""
    series = frame[column]
    if series.dtype == UTC_US:
        out = series
    elif isinstance(series.dtype, pd.DatetimeTZDtype):
        out = series.dt.tz_convert("UTC").astype(UTC_US)
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        raise ConfigError(
            f"{what} column {column!r} holds naive timestamps: pass tz-aware UTC values "
            "(e.g. pd.to_datetime(..., utc=True))"
        )
    elif series.isna().all():
        out = pd.Series(pd.NaT, index=series.index, dtype=UTC_US)
    else:
        kinds = pd.api.types.infer_dtype(series, skipna=True)
        if kinds not in ("datetime", "datetime64", "string"):
            raise ConfigError(
                f"{what} column {column!r} holds {kinds} values: pass tz-aware UTC timestamps"
            )
        try:
            parsed = pd.to_datetime(series, format="ISO8601" if kinds == "string" else None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{what} column {column!r} has a value that is not a timestamp "
                f"({one_line(exc)}): pass tz-aware UTC timestamps"
            ) from exc
        if not isinstance(parsed.dtype, pd.DatetimeTZDtype):
            raise ConfigError(
                f"{what} column {column!r} holds naive or mixed-offset timestamps: "
                "pass tz-aware UTC values"
            )
        out = parsed.dt.tz_convert("UTC").astype(UTC_US)
    if required and out.hasnans:
        missing = int(out.isna().sum())
        raise ConfigError(
            f"{what} column {column!r} is empty in {missing} row(s): every row needs a timestamp"
        )
    return out.array


def text_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    """An optional text column: the column's own array when it already holds str/missing
    values (the common case, no copy), else None for an absent or all-missing column."""
    if column not in frame.columns:
        return None
    series = frame[column]
    kinds = pd.api.types.infer_dtype(series, skipna=True)
    if kinds == "empty":
        return None
    if kinds != "string":
        raise ConfigError(f"{what} column {column!r} holds {kinds} values: pass text (str) or None")
    if series.dtype == object and series.hasnans:  # NaN in an object column is not NULL
        return series.where(series.notna(), None).to_numpy()
    return series.array


def json_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    """JSON text or None; dicts/lists are serialised (sorted keys) for convenience."""
    if column not in frame.columns:
        return None
    series = frame[column]
    kinds = pd.api.types.infer_dtype(series, skipna=True)
    if kinds in ("string", "empty"):
        return text_column(frame, column, what)

    def encode(value: Any) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, dict | list):
            return json.dumps(value, sort_keys=True, default=str)
        raise ConfigError(
            f"{what} column {column!r} holds a {type(value).__name__}: "
            "pass JSON text, a dict or None"
        )

    return np.array([encode(v) for v in series], dtype=object)


def id_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    series = frame[column]
    kinds = pd.api.types.infer_dtype(series, skipna=False)
    if kinds != "string":
        nulls = int(series.isna().sum())
        detail = f"{nulls} empty value(s)" if nulls else f"{kinds} values"
        raise ConfigError(f"{what} column {column!r} has {detail}: every row needs a text id")
    return series.array


def int_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    if column not in frame.columns:
        return pd.array([pd.NA] * len(frame), dtype="Int64")
    try:
        return pd.to_numeric(frame[column], errors="raise").astype("Int64").array
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{what} column {column!r} must hold integers or None ({one_line(exc)})"
        ) from exc


def require(frame: Any, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"{what} lacks column(s) {', '.join(missing)}: pass a frame with {', '.join(columns)}"
        )


def optional_utc_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    if column in frame.columns:
        return utc_column(frame, column, what, required=False)
    return pd.array([pd.NaT] * len(frame), dtype=UTC_US)


def column_values(array: Any, n: int) -> list[Any]:
    """A validated column as a Python list, missing values (NaN, NA, NaT) as None."""
    if array is None:
        return [None] * n
    values = array.tolist()  # far cheaper than iterating a pandas array element by element
    return [None if v is None or v is pd.NA or v is pd.NaT or v != v else v for v in values]


def check_user(external_user_id: str | None) -> str | None:
    if external_user_id is None:
        return None
    if not isinstance(external_user_id, str) or not external_user_id:
        raise ConfigError(
            f"external_user_id {external_user_id!r} is not valid: pass the user's id or None"
        )
    return external_user_id
