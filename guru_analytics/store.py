"""The local DuckDB cache: schema, migrations, bulk upserts, runs and sync state.

One file holds many gurus. Every timestamp column is TIMESTAMPTZ and every connection this
module opens runs with ``TimeZone='UTC'`` so values come back tz-aware UTC.

Tables (schema version ``SCHEMA_VERSION``):

- ``meta(key, value)``: ``schema_version``.
- ``sessions``: one row per (guru, id) with the current listing values, first/last seen
  (client clock), the deleted flag, ``date_created`` once messages were fetched, and (v2)
  ``listing_md5``, a fingerprint of the listing text (internal; rows are never deleted).
  (v3) A second index on ``id`` alone: DuckDB 2.0.1 never scans a multi-column primary key,
  so it is what lets a page write find its 30 rows without reading the whole table.
- ``observations``: every distinct ``last_used`` ever seen per session, so activity over time
  survives later syncs overwriting ``sessions.last_used``.
- ``session_users``: which external user a session belongs to (from filtered listings);
  (v3) indexed on ``id`` for the same reason.
- ``messages`` / ``message_fetches``: Get Session enrichment (opt-in).
- ``sync_runs``: one row per ``sync()`` call with its request and session counts, and (v2)
  the PID and host that ran it, so a run a killed process left ``running`` reads as
  ``interrupted``.
- ``sync_state``: per listing (guru-wide, per user, per search) the committed watermark and
  the pass in progress, so an interrupted sync resumes.
- (v4) ``questions`` / ``question_exports``: rows of Export Analytics (every question of an
  interval in one request) and the ledger of exports; see the questions block below.

Concurrency: DuckDB lets one process open a file read-write *or* many processes read-only,
never both. So a ``Store`` opens the file read-write lazily, on its first write, and
``release()`` closes it again (the sync releases before long rate-limit waits); readers open
it read-only only for the length of a ``reader()`` block. Both retry a held lock with short
backoff up to ``lock_timeout`` and then raise ``CacheLockedError`` naming the holder's PID.

Every write method is one transaction: a crash or an exception at any point leaves the cache
as it was before that call. Bulk data moves as DataFrames through set-based SQL, never row
by row. A listing page (30 rows) is the exception to the "all in SQL" style: each DuckDB
statement costs about a millisecond however few rows it touches, so ``write_page`` reads the
stored state of its rows with one index lookup, decides in Python what changes, and writes
only that (see ``_PageRows``). ``load_frame`` does the same job set-based for large frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd

from .errors import CacheError, CacheLockedError, CacheSchemaError, ConfigError
from .timestamps import utc_now

if TYPE_CHECKING:
    from .wire import QuestionExport

SCHEMA_VERSION = 4

# Listing keys in sync_state / sync_runs: '' is the guru-wide listing.
UNATTRIBUTED = "(unattributed)"

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    last_used TIMESTAMPTZ NOT NULL,
    guru_type_name VARCHAR,
    root_question_name VARCHAR,
    root_question_slug VARCHAR,
    root_question_link VARCHAR,
    extra JSON,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false,
    deleted_at TIMESTAMPTZ,
    date_created TIMESTAMPTZ,
    PRIMARY KEY (guru, id)
);
CREATE TABLE IF NOT EXISTS observations (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    last_used TIMESTAMPTZ NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, id, last_used)
);
CREATE TABLE IF NOT EXISTS session_users (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    external_user_id VARCHAR NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, id, external_user_id)
);
CREATE TABLE IF NOT EXISTS messages (
    guru VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    slug VARCHAR,
    parent_slug VARCHAR,
    question VARCHAR,
    user_question VARCHAR,
    date_created TIMESTAMPTZ NOT NULL,
    date_updated TIMESTAMPTZ,
    source VARCHAR,
    trust_score INTEGER,
    user_vote VARCHAR,
    answer VARCHAR,
    n_references INTEGER,
    extra JSON,
    PRIMARY KEY (guru, session_id, id)
);
CREATE TABLE IF NOT EXISTS message_fetches (
    guru VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    fetched_last_used TIMESTAMPTZ,
    fetched_at TIMESTAMPTZ NOT NULL,
    status VARCHAR NOT NULL,
    PRIMARY KEY (guru, session_id)
);
CREATE SEQUENCE IF NOT EXISTS sync_run_ids START 1;
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id BIGINT PRIMARY KEY DEFAULT nextval('sync_run_ids'),
    guru VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    listings VARCHAR,
    search_query VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ,
    requests INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0,
    sessions_new INTEGER NOT NULL DEFAULT 0,
    sessions_changed INTEGER NOT NULL DEFAULT 0,
    sessions_deleted INTEGER NOT NULL DEFAULT 0,
    messages_fetched INTEGER NOT NULL DEFAULT 0,
    messages_remaining INTEGER NOT NULL DEFAULT 0,
    outcome VARCHAR NOT NULL,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS sync_state (
    guru VARCHAR NOT NULL,
    listing VARCHAR NOT NULL,
    watermark TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    pass_mode VARCHAR,
    pass_started_at TIMESTAMPTZ,
    pass_top TIMESTAMPTZ,
    pass_next_page INTEGER,
    PRIMARY KEY (guru, listing)
);
"""
# The v2 listing fingerprint (kept for the v2 step; v3 replaced it with LISTING_FINGERPRINT_SQL).
_LISTING_MD5_V2_SQL = (
    "md5_number_lower(json_array(guru_type_name, root_question_name, root_question_slug, "
    "root_question_link, extra)::VARCHAR)"
)

# v2: who ran each sync (so a run a killed process left 'running' is told apart from one in
# progress in another process, which releases the file while it waits), and the listing
# fingerprint, backfilled for rows written by v1.
SCHEMA_V2 = f"""
ALTER TABLE sync_runs ADD COLUMN pid INTEGER;
ALTER TABLE sync_runs ADD COLUMN host VARCHAR;
ALTER TABLE sessions ADD COLUMN listing_md5 UBIGINT;
UPDATE sessions SET listing_md5 = {_LISTING_MD5_V2_SQL};
"""

# The listing fingerprint (column listing_md5): one short value per session, so a page write can
# tell whether the listing text changed by reading one narrow column instead of five wide ones.
# It is the first 64 bits of the md5 of the listing fields, each written as 'N' (NULL) or
# 'S<bytes>:<text>' and joined by '|', so NULL stays apart from '' and no field can run into the
# next. Python computes it for page writes (``listing_fingerprint``, no page data sent to DuckDB
# just to hash it) and SQL for bulk loads and the v3 backfill; tests hold the two equal.
_FINGERPRINT_FIELDS = (
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
    "extra::VARCHAR",
)
LISTING_FINGERPRINT_SQL = (
    "('0x' || md5("
    + " || '|' || ".join(
        f"CASE WHEN {f} IS NULL THEN 'N' ELSE 'S' || strlen({f}) || ':' || {f} END"
        for f in _FINGERPRINT_FIELDS
    )
    + ")[1:16])::UBIGINT"
)


def listing_fingerprint(values: Sequence[str | None]) -> int:
    """``LISTING_FINGERPRINT_SQL`` of one session's listing fields, computed in Python.

    ``values``: guru_type_name, root_question_name, root_question_slug, root_question_link and
    extra (JSON text), each str or None."""
    text = "|".join(
        "N" if v is None else f"S{len(v.encode('utf-8', 'surrogatepass'))}:{v}" for v in values
    )
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return int(digest.hexdigest()[:16], 16)


# v3: single-column indexes on id, so page writes look their rows up instead of scanning
# (DuckDB 2.0.1 uses an ART index for a scan only when it covers one column, and turns
# ON CONFLICT into a MERGE that scans the target), and the fingerprint above.
SCHEMA_V3 = f"""
CREATE INDEX IF NOT EXISTS sessions_by_id ON sessions (id);
CREATE INDEX IF NOT EXISTS session_users_by_id ON session_users (id);
UPDATE sessions SET listing_md5 = {LISTING_FINGERPRINT_SQL};
"""

# v4 (issue 15): the rows of Export Analytics and the ledger of exports. A row has no id in
# the file, so its key is a fingerprint of its fields (``question_row_key``) plus its
# occurrence among identical rows of one export; see "questions" below for the overlap rule.
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS questions (
    guru VARCHAR NOT NULL,
    row_key UBIGINT NOT NULL,
    occurrence INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    asked_at TIMESTAMPTZ NOT NULL,
    source VARCHAR NOT NULL,
    question VARCHAR NOT NULL,
    trust_score DOUBLE,
    follow_up BOOLEAN,
    url VARCHAR,
    session_id VARCHAR,
    question_slug VARCHAR,
    extra JSON,
    first_exported TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, row_key, occurrence)
);
CREATE SEQUENCE IF NOT EXISTS question_export_ids START 1;
CREATE TABLE IF NOT EXISTS question_exports (
    export_id BIGINT PRIMARY KEY DEFAULT nextval('question_export_ids'),
    guru VARCHAR NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL,
    interval VARCHAR NOT NULL,
    covers_from TIMESTAMPTZ,
    scheme VARCHAR NOT NULL,
    questions INTEGER NOT NULL,
    unanswered INTEGER NOT NULL,
    new_rows INTEGER NOT NULL
);
"""

Migration = tuple[int, "str | Callable[[duckdb.DuckDBPyConnection], None]"]
"""``(version, step)``: ``step`` is SQL text (may hold several statements) or a callable
taking the open connection. Each step runs in its own transaction together with the
``meta.schema_version`` bump, so a failed upgrade leaves the previous version intact."""

MIGRATIONS: tuple[Migration, ...] = (
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
)

LISTING_COLUMNS = (
    "id",
    "last_used",
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
    "extra",
)
_LISTING_TEXT = ("guru_type_name", "root_question_name", "root_question_slug", "root_question_link")

MESSAGE_COLUMNS = (
    "id",
    "slug",
    "parent_slug",
    "question",
    "user_question",
    "date_created",
    "date_updated",
    "source",
    "trust_score",
    "user_vote",
    "answer",
    "n_references",
    "extra",
)
_MESSAGE_TEXT = (
    "slug",
    "parent_slug",
    "question",
    "user_question",
    "source",
    "user_vote",
    "answer",
)
_MESSAGE_INT = ("trust_score", "n_references")

RUN_COUNTS = (
    "requests",
    "throttled",
    "retries",
    "pages",
    "sessions_new",
    "sessions_changed",
    "sessions_deleted",
    "messages_fetched",
    "messages_remaining",
)

_STATE_FIELDS = (
    "watermark",
    "completed_at",
    "pass_mode",
    "pass_started_at",
    "pass_top",
    "pass_next_page",
)
_STATE_TIMES = ("watermark", "completed_at", "pass_started_at", "pass_top")

FETCH_STATUSES = ("ok", "not_found")

ConnectFactory = Callable[[str, bool], duckdb.DuckDBPyConnection]
"""``(path, read_only) -> connection``; the default is ``duckdb.connect``."""

_LOCK_RE = re.compile(r"Could not set lock", re.IGNORECASE)
_PID_RE = re.compile(r"PID (\d+)")
_OTHER_CONFIG_RE = re.compile(r"different configuration", re.IGNORECASE)
_NOT_DUCKDB_RE = re.compile(r"not a valid DuckDB database file", re.IGNORECASE)

# Runs begun by this process and not yet ended, keyed by (database identity, run_id): a
# 'running' row of our own PID that is not in here was left behind by an earlier failure.
_LIVE_RUNS: set[tuple[str, int]] = set()
_LIVE_RUNS_LOCK = threading.Lock()


class _Unset(Enum):
    """Sentinel type for ``save_state``: "leave this field as stored" (None clears it)."""

    UNSET = 0


UNSET = _Unset.UNSET


@dataclass(frozen=True)
class PageWrite:
    """What one ``write_page`` changed, measured against the cache before the write.

    ``new``: ids not in the cache; ``changed``: ids whose stored ``last_used`` moved forward
    or that were marked deleted and are seen again; ``unchanged``: the rest (including a
    stale re-read with an older ``last_used``, which never moves the stored value back).
    The three add up to the number of distinct ids in the page.
    """

    new: int
    changed: int
    unchanged: int
    new_ids: tuple[str, ...] = ()
    changed_ids: tuple[str, ...] = ()

    @property
    def seen(self) -> int:
        """Distinct sessions in the page."""
        return self.new + self.changed + self.unchanged


@dataclass(frozen=True)
class LoadResult:
    """What one ``load_frame`` added: session counts as in ``PageWrite``, plus rows added."""

    sessions_new: int
    sessions_changed: int
    sessions_unchanged: int
    observations_added: int
    users_added: int


@dataclass(frozen=True)
class SyncState:
    """The stored progress of one listing: the committed watermark and the pass in flight."""

    guru: str
    listing: str
    watermark: datetime | None = None
    completed_at: datetime | None = None
    pass_mode: str | None = None
    pass_started_at: datetime | None = None
    pass_top: datetime | None = None
    pass_next_page: int | None = None


def default_cache_path() -> Path:
    """Where the cache lives unless told otherwise.

    ``GURU_ANALYTICS_DB`` wins; else ``$XDG_CACHE_HOME/guru-analytics/cache.duckdb``; else
    ``~/.cache/guru-analytics/cache.duckdb``. Read at call time, never at import.
    """
    override = os.environ.get("GURU_ANALYTICS_DB")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "guru-analytics" / "cache.duckdb"


def _duckdb_connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(path, read_only=read_only)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (signal 0 probes, never kills)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _check_guru(guru: str) -> str:
    if not isinstance(guru, str) or not guru.strip():
        raise ConfigError(f"guru slug {guru!r} is not valid: pass the guru's slug, e.g. 'my-guru'")
    return guru


def _check_listing(listing: str) -> str:
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


def _utc(value: Any, name: str) -> datetime:
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


def _opt_utc(value: Any, name: str) -> datetime | None:
    return None if value is None else _utc(value, name)


def _py_utc(value: Any) -> datetime | None:
    """DuckDB hands back TIMESTAMPTZ as ``datetime`` in a ZoneInfo('UTC'); normalise to UTC."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value.astimezone(UTC)


_UTC_US = pd.DatetimeTZDtype("us", "UTC")


def _utc_column(frame: pd.DataFrame, column: str, what: str, *, required: bool) -> Any:
    """Column ``column`` as a ``datetime64[us, UTC]`` array; naive, unparseable or (if
    required) missing values raise ConfigError before anything touches the cache."""
    series = frame[column]
    if series.dtype == _UTC_US:
        out = series
    elif isinstance(series.dtype, pd.DatetimeTZDtype):
        out = series.dt.tz_convert("UTC").astype(_UTC_US)
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        raise ConfigError(
            f"{what} column {column!r} holds naive timestamps: pass tz-aware UTC values "
            "(e.g. pd.to_datetime(..., utc=True))"
        )
    elif series.isna().all():
        out = pd.Series(pd.NaT, index=series.index, dtype=_UTC_US)
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
                f"({_one_line(exc)}): pass tz-aware UTC timestamps"
            ) from exc
        if not isinstance(parsed.dtype, pd.DatetimeTZDtype):
            raise ConfigError(
                f"{what} column {column!r} holds naive or mixed-offset timestamps: "
                "pass tz-aware UTC values"
            )
        out = parsed.dt.tz_convert("UTC").astype(_UTC_US)
    if required and out.hasnans:
        missing = int(out.isna().sum())
        raise ConfigError(
            f"{what} column {column!r} is empty in {missing} row(s): every row needs a timestamp"
        )
    return out.array


def _text_column(frame: pd.DataFrame, column: str, what: str) -> Any:
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


def _json_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    """JSON text or None; dicts/lists are serialised (sorted keys) for convenience."""
    if column not in frame.columns:
        return None
    series = frame[column]
    kinds = pd.api.types.infer_dtype(series, skipna=True)
    if kinds in ("string", "empty"):
        return _text_column(frame, column, what)

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


def _id_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    series = frame[column]
    kinds = pd.api.types.infer_dtype(series, skipna=False)
    if kinds != "string":
        nulls = int(series.isna().sum())
        detail = f"{nulls} empty value(s)" if nulls else f"{kinds} values"
        raise ConfigError(f"{what} column {column!r} has {detail}: every row needs a text id")
    return series.array


def _int_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    if column not in frame.columns:
        return pd.array([pd.NA] * len(frame), dtype="Int64")
    try:
        return pd.to_numeric(frame[column], errors="raise").astype("Int64").array
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{what} column {column!r} must hold integers or None ({_one_line(exc)})"
        ) from exc


def _require(frame: Any, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"{what} lacks column(s) {', '.join(missing)}: pass a frame with {', '.join(columns)}"
        )


def _listing_frame(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """The listing frame in the exact shape the bulk SQL expects, with ``_ord`` = row position
    (a tie-breaker: among equal ``last_used`` the later row of a batch wins)."""
    n = len(rows)
    return pd.DataFrame(
        {
            "id": _id_column(rows, "id", what),
            "last_used": _utc_column(rows, "last_used", what, required=True),
            **{c: _text_column(rows, c, what) for c in _LISTING_TEXT},
            "extra": _json_column(rows, "extra", what),
            "date_created": _optional_utc_column(rows, "date_created", what),
            "_ord": np.arange(n, dtype=np.int64),
        }
    )


def _optional_utc_column(frame: pd.DataFrame, column: str, what: str) -> Any:
    if column in frame.columns:
        return _utc_column(frame, column, what, required=False)
    return pd.array([pd.NaT] * len(frame), dtype=_UTC_US)


def _values(array: Any, n: int) -> list[Any]:
    """A validated column as a Python list, missing values (NaN, NA, NaT) as None."""
    if array is None:
        return [None] * n
    values = array.tolist()  # far cheaper than iterating a pandas array element by element
    return [None if v is None or v is pd.NA or v is pd.NaT or v != v else v for v in values]


def _message_frame(messages: pd.DataFrame, *, session_ids: bool = False) -> pd.DataFrame:
    """Messages in the shape the SQL expects (with ``session_id`` first if ``session_ids``);
    message ids unique per session."""
    what = "messages"
    _require(
        messages,
        ("session_id", "id", "date_created") if session_ids else ("id", "date_created"),
        what,
    )
    ids = messages["id"]
    if pd.api.types.infer_dtype(ids, skipna=False) == "integer":
        ids = ids.astype(str)
    out = pd.DataFrame(
        {
            **({"session_id": _id_column(messages, "session_id", what)} if session_ids else {}),
            "id": _id_column(pd.DataFrame({"id": ids}), "id", what),
            **{c: _text_column(messages, c, what) for c in _MESSAGE_TEXT},
            "date_created": _utc_column(messages, "date_created", what, required=True),
            "date_updated": _optional_utc_column(messages, "date_updated", what),
            **{c: _int_column(messages, c, what) for c in _MESSAGE_INT},
            "extra": _json_column(messages, "extra", what),
        }
    )
    ids = out["id"].tolist()
    keys: list[Any] = (
        list(zip(out["session_id"].tolist(), ids, strict=True)) if session_ids else ids
    )
    counts = Counter(keys)
    dupes = sorted({ids[k] for k, key in enumerate(keys) if counts[key] > 1})
    if dupes:
        raise ConfigError(
            f"messages repeat id(s) {', '.join(map(str, dupes[:5]))}: pass each message once"
        )
    return out


@dataclass(frozen=True)
class _Fetches:
    """Validated fetch records of ``write_conversations``, one entry per session."""

    session_id: list[str]
    status: list[str]
    fetched_last_used: list[datetime | None]
    fetched_at: list[datetime]
    date_created: list[datetime | None]

    @classmethod
    def from_frame(cls, fetches: pd.DataFrame) -> _Fetches:
        what = "fetches"
        _require(fetches, ("session_id", "status", "fetched_at"), what)
        n = len(fetches)
        if not n:
            return cls([], [], [], [], [])
        ids = list(_id_column(fetches, "session_id", what))
        if not all(ids):
            raise ConfigError("fetches column 'session_id' has an empty id: pass each session's id")
        dupes = sorted(sid for sid, count in Counter(ids).items() if count > 1)
        if dupes:
            raise ConfigError(
                f"fetches repeat session(s) {', '.join(dupes[:5])}: pass each session once per call"
            )
        status = fetches["status"].tolist()
        bad = sorted({str(s) for s in status if s not in FETCH_STATUSES})
        if bad:
            raise ConfigError(
                f"fetch status {', '.join(bad)} is not valid: use {' or '.join(FETCH_STATUSES)}"
            )

        def times(column: str) -> list[datetime | None]:
            return _values(_optional_utc_column(fetches, column, what).to_pydatetime(), n)

        fetched_at = list(_utc_column(fetches, "fetched_at", what, required=True).to_pydatetime())
        return cls(ids, status, times("fetched_last_used"), fetched_at, times("date_created"))


def _check_migrations(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    steps = tuple(migrations)
    versions = [v for v, _ in steps]
    if (
        not steps
        or any(not isinstance(v, int) or v < 1 for v in versions)
        or versions != sorted(set(versions))
    ):
        raise ConfigError(
            "migrations must be (version, step) pairs with strictly increasing versions from 1"
        )
    for version, step in steps:
        if not (isinstance(step, str) or callable(step)):
            raise ConfigError(f"migration {version} must be SQL text or a callable(connection)")
    return steps


# --- listing pages: look up, decide in Python, write what changed ------------------------------
#
# Rules shared with the bulk path below: ids repeating in a page are deduplicated (greatest
# last_used wins, among equals the later row); a row is *new* if the guru has no such session,
# *changed* if its last_used moves forward or the session was marked deleted; the stored
# last_used never moves back and the listing text is rewritten only from a read at least as
# new whose fingerprint differs; every seen session gets last_seen = max(last_seen, seen) and
# loses its deleted flag; every distinct (id, last_used) not equal to the stored value becomes
# an observation; with a user, every id is attributed to it.

# The stored state of the page's ids, through the id index. Filtered on id alone: a second
# condition (guru = ?) would be pushed into the scan, and DuckDB 2.0.1 then scans the whole
# table; rows of other gurus are dropped in Python. The updates below address the rows by id
# too (index again) unless another guru has a session with one of these ids (ids are UUIDs:
# only hand-made data does), then by rowid, which reads the row groups holding them (rowids
# are stable within the transaction: this Store is the file's only writer).
_PAGE_READ_SQL = """
SELECT 's', id, guru, rowid, epoch_us(last_used), deleted, listing_md5, NULL
FROM sessions WHERE id IN (SELECT unnest($ids::VARCHAR[]))
"""
_PAGE_READ_USERS_SQL = """
UNION ALL
SELECT 'u', id, guru, NULL, NULL, NULL, NULL, external_user_id
FROM session_users WHERE id IN (SELECT unnest($ids::VARCHAR[]))
"""

_PAGE_INSERT_SQL = """
INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                      root_question_slug, root_question_link, extra, first_seen, last_seen,
                      deleted, deleted_at, date_created, listing_md5)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]),
       unnest($guru_type_name::VARCHAR[]), unnest($root_question_name::VARCHAR[]),
       unnest($root_question_slug::VARCHAR[]), unnest($root_question_link::VARCHAR[]),
       unnest($extra::VARCHAR[])::JSON, $seen, $seen, false, NULL,
       unnest($date_created::TIMESTAMPTZ[]), unnest($listing_md5::UBIGINT[])
"""

# Every stored row of the page: seen now; moved forward (greatest: a stale read keeps the
# stored value); undeleted. The optional clauses are left out when no row needs them.
_PAGE_TOUCH_SQL = """
UPDATE sessions SET last_seen = greatest(sessions.last_seen, $seen){forward}{undelete}
FROM (SELECT unnest($key::{key_type}[]) AS key, unnest($last_used::TIMESTAMPTZ[]) AS last_used) AS p
WHERE sessions.{key} = p.key
"""
_PAGE_FORWARD = ", last_used = greatest(sessions.last_used, p.last_used)"
_UNDELETE = ", deleted = false, deleted_at = NULL"

# Rows whose listing text changed, read at least as new as stored (rare: a title edit).
_PAGE_REFRESH_SQL = """
UPDATE sessions SET
    guru_type_name = p.guru_type_name,
    root_question_name = p.root_question_name,
    root_question_slug = p.root_question_slug,
    root_question_link = p.root_question_link,
    extra = p.extra::JSON,
    listing_md5 = p.listing_md5
FROM (SELECT unnest($key::{key_type}[]) AS key,
             unnest($guru_type_name::VARCHAR[]) AS guru_type_name,
             unnest($root_question_name::VARCHAR[]) AS root_question_name,
             unnest($root_question_slug::VARCHAR[]) AS root_question_slug,
             unnest($root_question_link::VARCHAR[]) AS root_question_link,
             unnest($extra::VARCHAR[]) AS extra,
             unnest($listing_md5::UBIGINT[]) AS listing_md5) AS p
WHERE sessions.{key} = p.key
"""

# A plain INSERT checks the primary key through its index; ON CONFLICT would become a MERGE
# that scans every observation. New and forward values are almost never stored yet (only
# load_frame can add events past a session's last_used), so the page inserts them plainly
# and, if one does exist, writes the whole page again with the scanning variant.
_PAGE_OBSERVE_SQL = """
INSERT INTO observations (guru, id, last_used, observed_at)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]), $seen
"""
_IF_NEW = " ON CONFLICT DO NOTHING"

_PAGE_ATTRIBUTE_SQL = """
INSERT INTO session_users (guru, id, external_user_id, first_seen)
SELECT $guru, unnest($id::VARCHAR[]), $user, $seen
"""


class _ObservationsExist(Exception):
    """The optimistic observations insert of a page met a stored row: write it again, checked."""


@dataclass(frozen=True)
class _PageRows:
    """One listing page as Python lists (for 30 rows, far cheaper than pandas), deduplicated.

    ``kept`` holds the page position of each distinct id's winning row, in page order.
    """

    ids: list[str]
    last_used: list[datetime]
    last_used_us: list[int]
    fields: list[list[str | None]]  # _LISTING_TEXT columns then extra, one list each
    date_created: list[datetime | None]
    kept: list[int]

    @classmethod
    def from_frame(cls, rows: pd.DataFrame, what: str) -> _PageRows:
        n = len(rows)
        times = _utc_column(rows, "last_used", what, required=True)
        ids = _id_column(rows, "id", what).tolist()
        last_used_us = times.asi8.tolist()
        winner: dict[str, int] = {}
        for k, (sid, us) in enumerate(zip(ids, last_used_us, strict=True)):
            j = winner.get(sid)
            if j is None or us >= last_used_us[j]:
                winner[sid] = k
        created = _optional_utc_column(rows, "date_created", what)
        return cls(
            ids=ids,
            last_used=list(times.to_pydatetime()),
            last_used_us=last_used_us,
            fields=[
                *(_values(_text_column(rows, c, what), n) for c in _LISTING_TEXT),
                _values(_json_column(rows, "extra", what), n),
            ],
            date_created=_values(created.to_pydatetime(), n),
            kept=sorted(winner.values()),
        )

    def _params(self, positions: list[int]) -> dict[str, list[Any]]:
        """The listing fields of these rows, one list per column, keyed like the SQL."""
        return {
            name: [values[k] for k in positions]
            for name, values in zip((*_LISTING_TEXT, "extra"), self.fields, strict=True)
        }

    def write(
        self,
        conn: duckdb.DuckDBPyConnection,
        guru: str,
        seen: datetime,
        user: str | None,
        *,
        checked: bool,
    ) -> PageWrite:
        """Upsert the page inside the caller's transaction (see the rules above)."""
        kept_ids = [self.ids[k] for k in self.kept]
        read = _PAGE_READ_SQL + (_PAGE_READ_USERS_SQL if user is not None else "")
        stored: dict[str, tuple[int, int, bool, int | None]] = {}
        attributed: set[str] = set()
        shared = False  # another guru has a session with one of these ids
        for kind, sid, owner, row, us, deleted, fingerprint, user_id in conn.execute(
            read, {"ids": kept_ids}
        ).fetchall():
            if owner == guru and kind == "s":
                stored[sid] = (row, us, deleted, fingerprint)
            elif owner == guru and user_id == user:
                attributed.add(sid)
            shared = shared or (kind == "s" and owner != guru)
        by = (
            {"key": "rowid", "key_type": "BIGINT"}
            if shared
            else {"key": "id", "key_type": "VARCHAR"}
        )

        def keys(positions: list[int]) -> list[Any]:
            return [stored[self.ids[k]][0] if shared else self.ids[k] for k in positions]

        fingerprints = {
            k: listing_fingerprint([values[k] for values in self.fields]) for k in self.kept
        }
        new: list[int] = []
        changed: list[int] = []
        touched: list[int] = []
        refresh: list[int] = []
        forward = undelete = False
        for k in self.kept:
            if self.ids[k] not in stored:
                new.append(k)
                continue
            _row, us, deleted, fingerprint = stored[self.ids[k]]
            touched.append(k)
            moved = self.last_used_us[k] > us
            if moved or deleted:
                changed.append(k)
            forward = forward or moved
            undelete = undelete or deleted
            if self.last_used_us[k] >= us and fingerprints[k] != fingerprint:
                refresh.append(k)
        common = {"guru": guru, "seen": seen}
        if new:
            conn.execute(
                _PAGE_INSERT_SQL,
                {
                    **common,
                    "id": [self.ids[k] for k in new],
                    "last_used": [self.last_used[k] for k in new],
                    **self._params(new),
                    "date_created": [self.date_created[k] for k in new],
                    "listing_md5": [fingerprints[k] for k in new],
                },
            )
        if touched:
            sql = _PAGE_TOUCH_SQL.format(
                forward=_PAGE_FORWARD if forward else "",
                undelete=_UNDELETE if undelete else "",
                **by,
            )
            conn.execute(
                sql,
                {
                    "seen": seen,
                    "key": keys(touched),
                    "last_used": [self.last_used[k] for k in touched],
                },
            )
        if refresh:
            conn.execute(
                _PAGE_REFRESH_SQL.format(**by),
                {
                    "key": keys(refresh),
                    **self._params(refresh),
                    "listing_md5": [fingerprints[k] for k in refresh],
                },
            )
        self._observe(conn, common, {sid: s[1] for sid, s in stored.items()}, checked=checked)
        if user is not None:
            unattributed = [sid for sid in kept_ids if sid not in attributed]
            if unattributed:
                conn.execute(_PAGE_ATTRIBUTE_SQL, {**common, "user": user, "id": unattributed})
        return PageWrite(
            len(new),
            len(changed),
            len(self.kept) - len(new) - len(changed),
            self._newest_first(new),
            self._newest_first(changed),
        )

    def _observe(
        self,
        conn: duckdb.DuckDBPyConnection,
        common: dict[str, Any],
        stored_us: dict[str, int],
        *,
        checked: bool,
    ) -> None:
        """Every distinct (id, last_used) of the raw page not equal to the stored value (that
        one is an observation already: each write records the value it stores)."""
        values = sorted(
            {
                (sid, us): at
                for sid, us, at in zip(self.ids, self.last_used_us, self.last_used, strict=True)
                if stored_us.get(sid) != us
            }.items()
        )
        if not values:
            return
        params = {
            **common,
            "id": [sid for (sid, _us), _at in values],
            "last_used": [at for _key, at in values],
        }
        if checked:
            conn.execute(_PAGE_OBSERVE_SQL + _IF_NEW, params)
            return
        try:
            conn.execute(_PAGE_OBSERVE_SQL, params)
        except duckdb.ConstraintException as exc:
            raise _ObservationsExist from exc

    def _newest_first(self, positions: list[int]) -> tuple[str, ...]:
        order = sorted(positions, key=lambda k: (-self.last_used_us[k], k))
        return tuple(self.ids[k] for k in order)


# --- bulk loads: the same rules, set-based ----------------------------------------------------

# The frame (deduplicated when an id repeats) classified against what is stored. Only narrow
# stored columns are read, and the stored row's rowid is kept so the updates below touch those
# rows directly (stable within the transaction: this Store is the file's only writer).
_STAGE_SQL = """
CREATE OR REPLACE TEMP TABLE _ga_stage AS
SELECT
    p.*,
    s.rowid AS srow,
    s.id IS NULL AS is_new,
    s.last_used AS stored_last_used,
    coalesce(p.last_used > s.last_used, false) AS forward,
    coalesce(s.deleted, false) AS undelete,
    coalesce(p.last_used >= s.last_used AND p.listing_md5 IS DISTINCT FROM s.listing_md5, false)
        AS refresh
FROM (
    SELECT *, {fingerprint} AS listing_md5
    FROM (
        SELECT id, last_used, guru_type_name, root_question_name, root_question_slug,
               root_question_link, extra::JSON AS extra, date_created, _ord
        FROM _ga_rows
        {dedupe}
    )
) AS p
LEFT JOIN sessions AS s ON s.guru = $guru AND s.id = p.id
"""
_STAGE_DEDUPE = "QUALIFY row_number() OVER (PARTITION BY id ORDER BY last_used DESC, _ord DESC) = 1"

# distinct, new, changed (forward or undeleted), listing rewritten, a value to observe
_STAGE_COUNTS_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE is_new),
       count(*) FILTER (WHERE NOT is_new AND (forward OR undelete)),
       count(*) FILTER (WHERE NOT is_new AND (forward OR refresh)),
       count(*) FILTER (WHERE is_new OR last_used IS DISTINCT FROM stored_last_used)
FROM _ga_stage
"""

# Inserted in key order: DuckDB builds the primary-key index of a large insert at commit, and
# sorted keys make that markedly cheaper than random UUID order.
_INSERT_NEW_SQL = """
INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                      root_question_slug, root_question_link, extra, first_seen, last_seen,
                      deleted, deleted_at, date_created, listing_md5)
SELECT $guru, id, last_used, guru_type_name, root_question_name, root_question_slug,
       root_question_link, extra, $seen, $seen, false, NULL, date_created, listing_md5
FROM _ga_stage WHERE is_new ORDER BY id
"""

# Listing values come from a read at least as new as the stored one; last_used never moves back.
_REFRESH_SQL = """
UPDATE sessions SET
    last_used = greatest(sessions.last_used, p.last_used),
    guru_type_name = p.guru_type_name,
    root_question_name = p.root_question_name,
    root_question_slug = p.root_question_slug,
    root_question_link = p.root_question_link,
    extra = p.extra,
    listing_md5 = p.listing_md5
FROM _ga_stage AS p
WHERE sessions.rowid = p.srow AND NOT p.is_new AND (p.forward OR p.refresh)
"""

_TOUCH_SQL = """
UPDATE sessions SET
    last_seen = greatest(sessions.last_seen, $seen), deleted = false, deleted_at = NULL{date_created}
FROM _ga_stage AS p
WHERE sessions.rowid = p.srow AND NOT p.is_new
"""

# Every distinct (id, last_used) of the raw frame (a value equal to the stored last_used is
# already an observation: each write records the value it stores) and of the events frame,
# unless stored; in key order, like the sessions above.
_OBSERVE_SQL = """
INSERT INTO observations (guru, id, last_used, observed_at)
SELECT $guru, id, last_used, $seen
FROM ({values}) AS v
WHERE NOT EXISTS (
    SELECT 1 FROM observations AS o
    WHERE o.guru = $guru AND o.id = v.id AND o.last_used = v.last_used
)
ORDER BY id, last_used
"""
_OBSERVED_ROWS = """
SELECT r.id, r.last_used FROM _ga_rows AS r JOIN _ga_stage AS p ON p.id = r.id
WHERE r.last_used IS DISTINCT FROM p.stored_last_used
"""
_OBSERVED_EVENTS = "SELECT id, last_used FROM _ga_obs"

_ATTRIBUTE_SQL = """
INSERT INTO session_users (guru, id, external_user_id, first_seen)
SELECT $guru, id, external_user_id, $seen
FROM (
    SELECT DISTINCT id, external_user_id FROM _ga_users
    WHERE external_user_id IS NOT NULL AND external_user_id <> ''
) AS u
WHERE NOT EXISTS (
    SELECT 1 FROM session_users AS s
    WHERE s.guru = $guru AND s.id = u.id AND s.external_user_id = u.external_user_id
)
ORDER BY id, external_user_id
"""

# --- Get Session answers (write_conversations), set-based per batch ---------------------------

_DELETE_MESSAGES_SQL = """
DELETE FROM messages WHERE guru = $guru AND session_id IN (SELECT unnest($id::VARCHAR[]))
"""

_INSERT_MESSAGES_SQL = """
INSERT INTO messages (guru, session_id, id, slug, parent_slug, question, user_question,
                      date_created, date_updated, source, trust_score, user_vote, answer,
                      n_references, extra)
SELECT $guru, session_id, id, slug, parent_slug, question, user_question, date_created,
       date_updated, source, trust_score, user_vote, answer, n_references, extra::JSON
FROM _ga_messages
"""

_DATE_CREATED_SQL = """
UPDATE sessions SET date_created = f.at
FROM (SELECT unnest($id::VARCHAR[]) AS id, unnest($at::TIMESTAMPTZ[]) AS at) AS f
WHERE sessions.guru = $guru AND sessions.id = f.id
"""

_MARK_NOT_FOUND_SQL = """
UPDATE sessions SET deleted = true, deleted_at = f.at
FROM (SELECT unnest($id::VARCHAR[]) AS id, unnest($at::TIMESTAMPTZ[]) AS at) AS f
WHERE sessions.guru = $guru AND sessions.id = f.id AND NOT sessions.deleted
"""

_RECORD_FETCHES_SQL = """
INSERT INTO message_fetches (guru, session_id, fetched_last_used, fetched_at, status)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]),
       unnest($at::TIMESTAMPTZ[]), unnest($status::VARCHAR[])
ON CONFLICT (guru, session_id) DO UPDATE SET
    fetched_last_used = excluded.fetched_last_used,
    fetched_at = excluded.fetched_at,
    status = excluded.status
"""

# Pending = no fetch at least as new as the session's last_used. Written as NOT EXISTS: the
# equivalent LEFT JOIN with "f.session_id IS NULL OR f.fetched_last_used < s.last_used" loses
# its LIMIT in DuckDB 2.0.1 when message_fetches is empty (Top N planned as a plain sort).
_PENDING_FROM = """
FROM sessions AS s
WHERE s.guru = ? AND NOT s.deleted
  AND NOT EXISTS (
      SELECT 1 FROM message_fetches AS f
      WHERE f.guru = s.guru AND f.session_id = s.id AND f.fetched_last_used >= s.last_used
  )
"""

_SESSION_COLUMNS = (
    "guru, id, last_used, guru_type_name, root_question_name, root_question_slug, "
    "root_question_link, extra, first_seen, last_seen, deleted, deleted_at, date_created"
)

_RUN_COLUMNS = (
    "run_id, guru, mode, listings, search_query, started_at, ended_at, "
    + ", ".join(RUN_COUNTS)
    + ", outcome, error, pid, host"
)


class Store:
    """The DuckDB cache of one or many gurus.

    ``path`` is a file (created with its directory if missing) or ``":memory:"`` (one
    connection for the Store's life). ``connect(path, read_only)`` opens connections (a seam
    for tests); ``clock`` stamps runs; ``lock_timeout`` is how long to wait for another
    process's lock. ``migrations`` replaces the upgrade steps (tests use it to build an older
    cache or add a future step). The file is opened read-write only while writing; see the
    module docstring.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        connect: ConnectFactory | None = None,
        clock: Callable[[], datetime] = utc_now,
        lock_timeout: float = 10.0,
        migrations: Iterable[Migration] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(lock_timeout, int | float) or lock_timeout < 0:
            raise ConfigError(f"lock_timeout {lock_timeout!r} is not valid: pass seconds >= 0")
        self._connect: ConnectFactory = connect or _duckdb_connect
        self._clock = clock
        self._lock_timeout = float(lock_timeout)
        self._monotonic = monotonic
        self._sleep = sleep
        self._migrations = _check_migrations(MIGRATIONS if migrations is None else migrations)
        self._target = self._migrations[-1][0]
        self._lock = threading.RLock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._readers: dict[int, int] = {}  # thread id -> open read-only reader() blocks
        self._my_runs: set[int] = set()  # begun here, not ended: live until close()
        self._closed = False
        raw = default_cache_path() if path is None else path
        if not isinstance(raw, str | os.PathLike):
            raise ConfigError(f"cache path {raw!r} is not valid: pass a file path or ':memory:'")
        text = os.fspath(raw)
        if text == ":memory:":
            self._memory = True
            self._path = ":memory:"
            self._identity = f":memory:{id(self)}"
            conn = self._open(read_only=False)
            try:
                self._upgrade(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        else:
            self._memory = False
            self._path = str(self._prepare_path(text))
            self._identity = self._path
            self._init_file()

    # --- opening, locking, schema -------------------------------------------------------

    @property
    def path(self) -> str:
        """The resolved cache file path, or ``':memory:'``."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version this Store reads and writes."""
        return self._target

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._conn is not None else "released")
        return f"Store({self._path!r}, {state})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _prepare_path(text: str) -> Path:
        if not text.strip():
            raise ConfigError("cache path is empty: pass a file path or ':memory:'")
        path = Path(text).expanduser()
        if path.is_dir():
            raise CacheError(
                f"cache path {path} is a directory: pass a file path such as {path / 'cache.duckdb'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache directory {path.parent} ({exc.strerror or exc}): "
                "pass a writable path with --db or GURU_ANALYTICS_DB"
            ) from exc
        return path.resolve()

    def _init_file(self) -> None:
        """Check (read-only, so a running sync elsewhere is not disturbed) and upgrade if needed."""
        path = Path(self._path)
        if path.exists() and path.stat().st_size > 0:
            conn = self._open(read_only=True)
            try:
                version = self._read_version(conn)
            finally:
                conn.close()
            if version == self._target:
                return
            self._check_not_newer(version)
        with self._lock:
            self._write_conn()  # creates or upgrades the file
            self.release()

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open a connection, retrying a held lock with backoff until ``lock_timeout``."""
        deadline = self._monotonic() + self._lock_timeout
        delay = 0.02
        while True:
            try:
                conn = self._connect(self._path, read_only)
                break
            except duckdb.Error as exc:
                message = str(exc)
                if read_only and _OTHER_CONFIG_RE.search(message):
                    # This process already has the file open read-write (another Store):
                    # DuckDB shares that instance, so reading through it costs no new lock.
                    try:
                        conn = self._connect(self._path, False)
                        break
                    except duckdb.Error as retry_exc:
                        message = str(retry_exc)
                if not (_LOCK_RE.search(message) or _OTHER_CONFIG_RE.search(message)):
                    raise self._open_error(exc) from exc
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    raise self._locked_error(message) from exc
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, 0.25)
        try:
            conn.execute("SET TimeZone = 'UTC'")
        except duckdb.Error as exc:
            conn.close()
            raise CacheError(
                f"cannot set TimeZone=UTC on cache {self._path} ({_one_line(exc)}): "
                "reinstall duckdb (it needs the icu extension)"
            ) from exc
        return conn

    def _locked_error(self, message: str) -> CacheLockedError:
        found = _PID_RE.search(message)
        if found:
            holder = f"PID {found.group(1)}"
        elif _OTHER_CONFIG_RE.search(message):
            holder = f"another connection of this process (PID {os.getpid()})"
        else:
            holder = "another process"
        return CacheLockedError(
            f"cache {self._path} is held by {holder} (waited {self._lock_timeout:g} s); "
            "wait for that sync to finish or pass a different --db"
        )

    def _open_error(self, exc: duckdb.Error) -> CacheError:
        message = _one_line(exc)
        if _NOT_DUCKDB_RE.search(message):
            return CacheSchemaError(
                f"{self._path} is not a guru_analytics cache (not a DuckDB file): "
                "pass a different --db path or move that file away"
            )
        if re.search(r"version", message, re.IGNORECASE):
            return CacheSchemaError(
                f"cache {self._path} was written by an incompatible DuckDB ({message}): "
                "install a matching duckdb or pass a different --db"
            )
        return CacheError(
            f"cannot open cache {self._path} ({message}): "
            "check that the path is a writable file or pass a different --db"
        )

    def _check_not_newer(self, version: int) -> None:
        if version > self._target:
            raise CacheSchemaError(
                f"cache {self._path} has schema version {version}, written by a newer "
                f"guru_analytics (this one reads up to {self._target}); upgrade the package "
                "or pass a different --db"
            )

    def _read_version(self, conn: duckdb.DuckDBPyConnection) -> int:
        """0 for an empty database; raise if the file is some other DuckDB database."""
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM duckdb_tables() "
                "WHERE database_name = current_database() AND NOT temporary"
            ).fetchall()
        }
        if not tables:
            return 0
        not_ours = CacheSchemaError(
            f"{self._path} is a DuckDB database but not a guru_analytics cache: "
            "pass a different --db path"
        )
        if "meta" not in tables:
            raise not_ours
        row = _first(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
        if row is None:
            raise not_ours
        try:
            return int(row[0])
        except ValueError:
            raise not_ours from None

    def _upgrade(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Apply every migration step above the stored version, one transaction each."""
        current = self._read_version(conn)
        self._check_not_newer(current)
        for version, step in self._migrations:
            if version <= current:
                continue
            conn.execute("BEGIN TRANSACTION")
            try:
                if isinstance(step, str):
                    conn.execute(step)
                else:
                    step(conn)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [str(version)],
                )
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback(conn, exc, discard=False)
                if isinstance(exc, duckdb.Error):
                    raise CacheSchemaError(
                        f"upgrading cache {self._path} to schema version {version} failed and "
                        f"was rolled back to version {current} ({_one_line(exc)}): report this "
                        "bug; the cache is unchanged"
                    ) from exc
                raise
            current = version

    def _check_open(self) -> None:
        if self._closed:
            raise CacheError(f"Store({self._path!r}) is closed: create a new Store")

    def _write_conn(self) -> duckdb.DuckDBPyConnection:
        """The read-write connection, opened (and the schema checked) on first use."""
        with self._lock:
            self._check_open()
            if self._conn is None:
                if self._readers.get(threading.get_ident()):
                    raise CacheError(
                        "cannot write while a reader() block of this Store is open in the same "
                        "thread: finish the with-block first"
                    )
                conn = self._open(read_only=False)
                try:
                    self._upgrade(conn)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
            return self._conn

    def _rollback(
        self, conn: duckdb.DuckDBPyConnection, exc: BaseException, *, discard: bool = True
    ) -> None:
        try:
            conn.execute("ROLLBACK")
        except duckdb.Error as rollback_exc:
            exc.add_note(
                f"rollback also failed ({_one_line(rollback_exc)}); the connection was closed "
                "and the cache file keeps its last committed state"
            )
            if discard and not self._memory and conn is self._conn:
                self._conn = None
                conn.close()

    @contextmanager
    def _transaction(
        self, what: str, frames: dict[str, pd.DataFrame | None] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction; any failure rolls all of it back and names ``what``.

        ``frames`` are registered as views for the SQL (before BEGIN, dropped after the
        transaction ends: DuckDB refuses to drop a view inside an aborted transaction).
        """
        with self._lock:
            conn = self._write_conn()
            names: list[str] = []
            try:
                try:
                    for name, frame in (frames or {}).items():
                        if frame is not None:
                            conn.register(name, frame)
                            names.append(name)
                    conn.execute("BEGIN TRANSACTION")
                except duckdb.Error as exc:
                    raise CacheError(
                        f"{what} could not start ({_one_line(exc)}): finish any transaction "
                        "you opened on store.connection() and retry"
                    ) from exc
                try:
                    yield conn
                except BaseException as exc:
                    self._rollback(conn, exc)
                    if isinstance(exc, duckdb.Error):
                        raise CacheError(
                            f"{what} failed and was rolled back, nothing of it was stored "
                            f"({_one_line(exc)}): fix the input or report this bug"
                        ) from exc
                    raise
                try:
                    conn.execute("COMMIT")
                except duckdb.Error as exc:
                    self._rollback(conn, exc)
                    raise CacheError(
                        f"{what} could not be committed and was rolled back "
                        f"({_one_line(exc)}): check free disk space and retry"
                    ) from exc
            finally:
                if self._conn is conn:
                    for name in names:
                        conn.unregister(name)

    def release(self) -> None:
        """Close the read-write connection so other processes can open the file.

        The next write reopens it. No-op for ``:memory:`` (closing would lose the data).
        """
        with self._lock:
            if self._memory or self._conn is None:
                return
            conn, self._conn = self._conn, None
            conn.close()

    def close(self) -> None:
        """Release the file (or drop the in-memory database); the Store cannot be used again.

        Runs begun here and never ended read as ``interrupted`` from now on."""
        with self._lock:
            if self._closed:
                return
            with _LIVE_RUNS_LOCK:
                _LIVE_RUNS.difference_update((self._identity, r) for r in self._my_runs)
            self._my_runs.clear()
            if self._memory and self._conn is not None:
                self._conn.close()
                self._conn = None
            self.release()
            self._closed = True

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The Store's own read-write connection, for ad-hoc SQL.

        It stays open (holding the file's lock) until ``release()``; prefer ``reader()`` for
        reads that other processes should not block on.
        """
        return self._write_conn()

    @contextmanager
    def writer(self, *, keep_open: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the read-write connection for a batch of writes.

        On exit the file is released again unless ``keep_open`` or it was already open.
        """
        with self._lock:
            was_open = self._conn is not None
            conn = self._write_conn()
            try:
                yield conn
            finally:
                if not keep_open and not was_open:
                    self.release()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reading (``SET TimeZone='UTC'``), closed when the block ends.

        If this Store has the file open read-write (or is ``:memory:``) it is a cursor on
        that connection; otherwise a read-only connection, so other processes may read too.
        """
        tid = threading.get_ident()
        with self._lock:
            self._check_open()
            own = self._conn is None
            if own:
                conn = self._open(read_only=True)
                self._readers[tid] = self._readers.get(tid, 0) + 1
            else:
                assert self._conn is not None
                conn = self._conn.cursor()
                try:
                    conn.execute("SET TimeZone = 'UTC'")
                except BaseException:
                    conn.close()
                    raise
        try:
            yield conn
        finally:
            conn.close()
            if own:
                with self._lock:
                    left = self._readers[tid] - 1
                    if left:
                        self._readers[tid] = left
                    else:
                        del self._readers[tid]

    # --- listing pages ------------------------------------------------------------------

    def write_page(
        self,
        guru: str,
        rows: pd.DataFrame,
        seen_at: datetime,
        *,
        external_user_id: str | None = None,
    ) -> PageWrite:
        """Upsert one listing page (or a page set) in one transaction.

        Rows are deduplicated by id first (greatest ``last_used`` wins). Sessions get the
        current listing values, ``last_seen = seen_at``, their deleted flag cleared and
        ``first_seen`` kept; the stored ``last_used`` never moves back. Every distinct
        (id, last_used) becomes an observation; with ``external_user_id`` every id is
        attributed to that user. An empty frame writes nothing.
        """
        _check_guru(guru)
        seen = _utc(seen_at, "seen_at")
        user = _check_user(external_user_id)
        _require(rows, LISTING_COLUMNS, "rows")
        if rows.empty:
            return PageWrite(0, 0, 0)
        page = _PageRows.from_frame(rows, "rows")
        what = f"writing a page of {len(rows)} sessions for guru {guru!r}"
        try:
            with self._transaction(what) as conn:
                return page.write(conn, guru, seen, user, checked=False)
        except _ObservationsExist:
            with self._transaction(what) as conn:
                return page.write(conn, guru, seen, user, checked=True)

    def _upsert(
        self,
        conn: duckdb.DuckDBPyConnection,
        guru: str,
        seen: datetime,
        *,
        dedupe: bool,
        with_date_created: bool,
    ) -> tuple[PageWrite, bool]:
        """The sessions part of a bulk load over the registered ``_ga_rows``, leaving the
        classified ``_ga_stage`` behind; statements that would change nothing are skipped.
        Returns the session counts and whether any row needs an observation."""
        stage = _STAGE_SQL.format(
            fingerprint=LISTING_FINGERPRINT_SQL, dedupe=_STAGE_DEDUPE if dedupe else ""
        )
        conn.execute(stage, {"guru": guru})
        row = _first(conn.execute(_STAGE_COUNTS_SQL))
        assert row is not None
        distinct, new, changed, rewrite, observe = (int(v) for v in row)
        if new:
            conn.execute(_INSERT_NEW_SQL, {"guru": guru, "seen": seen})
        if rewrite:
            conn.execute(_REFRESH_SQL)
        if distinct - new:
            extra_set = ", date_created = coalesce(p.date_created, sessions.date_created)"
            touch = _TOUCH_SQL.format(date_created=extra_set if with_date_created else "")
            conn.execute(touch, {"seen": seen})
        # a repeated id may carry values other than its winning row's: observe those too
        return PageWrite(new, changed, distinct - new - changed), bool(observe) or dedupe

    def load_frame(
        self,
        guru: str,
        sessions_df: pd.DataFrame,
        observations_df: pd.DataFrame | None = None,
        users_df: pd.DataFrame | None = None,
        *,
        seen_at: datetime | None = None,
    ) -> LoadResult:
        """Bulk-load whole frames with the same upsert rules as ``write_page`` (no HTTP).

        ``sessions_df`` needs ``id`` and ``last_used``; the other listing columns and
        ``date_created`` are optional. ``observations_df`` adds activity instants (columns
        ``id`` and ``last_used`` or ``ts``, e.g. ``synthetic.message_events``). ``users_df``
        (``id``, ``external_user_id``; empty user ids mean unattributed and are not stored)
        attributes sessions. One transaction for everything.
        """
        _check_guru(guru)
        _require(sessions_df, ("id", "last_used"), "sessions_df")
        seen = _utc(self._clock() if seen_at is None else seen_at, "seen_at")
        page = _listing_frame(sessions_df, "sessions_df")
        observations = None
        if observations_df is not None:
            _require(observations_df, ("id",), "observations_df")
            column = next((c for c in ("last_used", "ts") if c in observations_df.columns), None)
            if column is None:
                raise ConfigError(
                    "observations_df lacks a time column: pass 'last_used' (or 'ts') with tz-aware UTC values"
                )
            observations = pd.DataFrame(
                {
                    "id": _id_column(observations_df, "id", "observations_df"),
                    "last_used": _utc_column(
                        observations_df, column, "observations_df", required=True
                    ),
                }
            )
        users = None
        if users_df is not None:
            _require(users_df, ("id", "external_user_id"), "users_df")
            users = pd.DataFrame(
                {
                    "id": _id_column(users_df, "id", "users_df"),
                    "external_user_id": _text_column(users_df, "external_user_id", "users_df"),
                }
            )
        frames = {"_ga_rows": page, "_ga_obs": observations, "_ga_users": users}
        what = f"loading {len(page)} sessions for guru {guru!r}"
        gs = {"guru": guru, "seen": seen}
        with self._transaction(what, frames) as conn:
            write, observed, attributed = PageWrite(0, 0, 0), 0, 0
            values = []
            if len(page):
                write, observe = self._upsert(
                    conn,
                    guru,
                    seen,
                    dedupe=not page["id"].is_unique,
                    with_date_created=bool(page["date_created"].notna().any()),
                )
                values += [_OBSERVED_ROWS] if observe else []
            if observations is not None and len(observations):
                values.append(_OBSERVED_EVENTS)
            if values:
                sql = _OBSERVE_SQL.format(values=" UNION ".join(values))
                observed = _count(conn.execute(sql, gs))
            if len(page):
                conn.execute("DROP TABLE _ga_stage")
            if users is not None and len(users):
                attributed = _count(conn.execute(_ATTRIBUTE_SQL, gs))
        return LoadResult(write.new, write.changed, write.unchanged, observed, attributed)

    # --- runs and sync state --------------------------------------------------------------

    def begin_run(
        self, guru: str, mode: str, listings: Sequence[str], search_query: str | None = None
    ) -> int:
        """Record a sync run as ``running``; returns its id. Runs that a dead process left
        ``running`` are marked ``interrupted`` first."""
        _check_guru(guru)
        if not isinstance(mode, str) or not mode:
            raise ConfigError(f"run mode {mode!r} is not valid: pass e.g. 'incremental' or 'full'")
        if isinstance(listings, str):
            raise ConfigError("listings must be a list of listing keys, not one string")
        keys = [_check_listing(key) for key in listings]
        if search_query is not None and not isinstance(search_query, str):
            raise ConfigError(f"search_query {search_query!r} is not valid: pass text or None")
        now = _utc(self._clock(), "clock()")
        with self._transaction(f"starting a sync run for guru {guru!r}") as conn:
            self._mark_orphans(conn, now)
            row = _first(
                conn.execute(
                    "INSERT INTO sync_runs (guru, mode, listings, search_query, started_at, outcome, "
                    "pid, host) VALUES (?, ?, ?, ?, ?, 'running', ?, ?) RETURNING run_id",
                    [
                        guru,
                        mode,
                        json.dumps(keys),
                        search_query,
                        now,
                        os.getpid(),
                        socket.gethostname(),
                    ],
                )
            )
            assert row is not None
            run_id = int(row[0])
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS.add((self._identity, run_id))
        self._my_runs.add(run_id)
        return run_id

    def end_run(self, run_id: int, outcome: str, error: str | None = None, **counts: int) -> None:
        """Close a run with its outcome (e.g. 'ok', 'partial', 'failed'), error text and counts."""
        unknown = sorted(set(counts) - set(RUN_COUNTS))
        if unknown:
            raise ConfigError(
                f"unknown run count(s) {', '.join(unknown)}: use {', '.join(RUN_COUNTS)}"
            )
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(f"run count {name}={value!r} is not valid: pass an integer >= 0")
        if not isinstance(outcome, str) or not outcome or outcome == "running":
            raise ConfigError(
                f"run outcome {outcome!r} is not valid: pass e.g. 'ok', 'partial' or 'failed'"
            )
        if error is not None and not isinstance(error, str):
            raise ConfigError("run error must be text or None")
        now = _utc(self._clock(), "clock()")
        sets = "".join(f", {name} = ?" for name in counts)
        params = [outcome, error, now, *(int(v) for v in counts.values()), int(run_id)]
        with self._transaction(f"ending sync run {run_id}") as conn:
            updated = _count(
                conn.execute(
                    f"UPDATE sync_runs SET outcome = ?, error = ?, ended_at = ?{sets} WHERE run_id = ?",
                    params,
                )
            )
            if not updated:
                raise ConfigError(
                    f"sync run {run_id} is not in cache {self._path}: pass the id begin_run returned"
                )
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS.discard((self._identity, int(run_id)))
        self._my_runs.discard(int(run_id))

    def _is_orphan(self, run_id: int, pid: Any, host: Any) -> bool:
        """Whether a 'running' row has no live process behind it (checked on this host only)."""
        if pid is None or pd.isna(pid):
            return True
        if host and host != socket.gethostname():
            return False
        if int(pid) == os.getpid():
            with _LIVE_RUNS_LOCK:
                return (self._identity, int(run_id)) not in _LIVE_RUNS
        return not _pid_alive(int(pid))

    def _mark_orphans(self, conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
        running = conn.execute(
            "SELECT run_id, pid, host FROM sync_runs WHERE outcome = 'running'"
        ).fetchall()
        orphans = [run_id for run_id, pid, host in running if self._is_orphan(run_id, pid, host)]
        if orphans:
            conn.execute(
                "UPDATE sync_runs SET outcome = 'interrupted', ended_at = ?, "
                "error = coalesce(error, 'the process running this sync stopped before recording an outcome') "
                "WHERE run_id IN (SELECT unnest(?::BIGINT[]))",
                [now, orphans],
            )

    def runs(self, guru: str | None = None) -> pd.DataFrame:
        """All sync runs (oldest first); a run whose process is gone reads as 'interrupted'."""
        where, params = ("WHERE guru = ?", [guru]) if guru is not None else ("", [])
        with self.reader() as conn:
            frame = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM sync_runs {where} ORDER BY run_id", params
            ).df()
        if len(frame):
            orphan = [
                outcome == "running" and self._is_orphan(run_id, pid, host)
                for run_id, outcome, pid, host in zip(
                    frame["run_id"], frame["outcome"], frame["pid"], frame["host"], strict=True
                )
            ]
            frame.loc[np.array(orphan, dtype=bool), "outcome"] = "interrupted"
        frame["listings"] = [json.loads(v) if isinstance(v, str) else [] for v in frame["listings"]]
        return frame

    def get_state(self, guru: str, listing: str) -> SyncState | None:
        """The stored progress of one listing ('' guru-wide, 'user:<id>', 'search:<q>')."""
        _check_guru(guru)
        _check_listing(listing)
        with self.reader() as conn:
            return _read_state(conn, guru, listing)

    def save_state(
        self,
        guru: str,
        listing: str,
        *,
        watermark: datetime | None | _Unset = UNSET,
        completed_at: datetime | None | _Unset = UNSET,
        pass_mode: str | None | _Unset = UNSET,
        pass_started_at: datetime | None | _Unset = UNSET,
        pass_top: datetime | None | _Unset = UNSET,
        pass_next_page: int | None | _Unset = UNSET,
    ) -> SyncState:
        """Upsert a listing's state: only the fields given change; ``None`` clears one."""
        _check_guru(guru)
        _check_listing(listing)
        given: dict[str, Any] = {
            name: value
            for name, value in zip(
                _STATE_FIELDS,
                (watermark, completed_at, pass_mode, pass_started_at, pass_top, pass_next_page),
                strict=True,
            )
            if value is not UNSET
        }
        for name in _STATE_TIMES:
            if name in given:
                given[name] = _opt_utc(given[name], name)
        if given.get("pass_mode") is not None and not isinstance(given["pass_mode"], str):
            raise ConfigError(f"pass_mode {given['pass_mode']!r} is not valid: pass text or None")
        page = given.get("pass_next_page")
        if page is not None and (
            isinstance(page, bool) or not isinstance(page, int | np.integer) or page < 1
        ):
            raise ConfigError(
                f"pass_next_page {page!r} is not valid: pass a page number >= 1 or None"
            )
        columns = list(given)
        action = (
            "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns)
            if columns
            else "NOTHING"
        )
        sql = (
            f"INSERT INTO sync_state (guru, listing{''.join(', ' + c for c in columns)}) "
            f"VALUES (?, ?{', ?' * len(columns)}) ON CONFLICT (guru, listing) DO {action}"
        )
        with self._transaction(f"saving sync state of {guru!r} listing {listing!r}") as conn:
            conn.execute(sql, [guru, listing, *given.values()])
            state = _read_state(conn, guru, listing)
        assert state is not None
        return state

    # --- deletions ------------------------------------------------------------------------

    def unseen_since(self, guru: str, since: datetime) -> pd.DataFrame:
        """Non-deleted sessions not seen since ``since``: after a complete full pass that
        started at ``since`` these are the deletion candidates."""
        _check_guru(guru)
        cutoff = _utc(since, "since")
        with self.reader() as conn:
            return conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions "
                "WHERE guru = ? AND NOT deleted AND last_seen < ? "
                "ORDER BY last_used DESC, id",
                [guru, cutoff],
            ).df()

    def mark_deleted(self, guru: str, ids: Iterable[str], at: datetime) -> int:
        """Flag sessions deleted (rows are kept); returns how many were not flagged before."""
        _check_guru(guru)
        when = _utc(at, "at")
        id_list = list(ids)
        if not all(isinstance(i, str) for i in id_list):
            raise ConfigError("ids must be session id strings")
        if not id_list:
            return 0
        with self._transaction(f"marking {len(id_list)} sessions of {guru!r} deleted") as conn:
            return _count(
                conn.execute(
                    "UPDATE sessions SET deleted = true, deleted_at = ? "
                    "WHERE guru = ? AND NOT deleted AND id IN (SELECT unnest(?::VARCHAR[]))",
                    [when, guru, id_list],
                )
            )

    # --- messages -----------------------------------------------------------------------

    def write_messages(
        self,
        guru: str,
        session_id: str,
        messages: pd.DataFrame | None,
        *,
        fetched_last_used: datetime | None,
        fetched_at: datetime,
        status: str = "ok",
        date_created: datetime | None = None,
    ) -> int:
        """Store one Get Session answer in one transaction; returns the messages stored.

        ``'ok'`` replaces the session's messages and sets ``sessions.date_created`` (given,
        else the first message's). ``'not_found'`` (404) keeps stored messages and marks the
        session deleted. Either way the fetch is recorded, so the session leaves
        ``pending_message_fetches`` until its ``last_used`` passes ``fetched_last_used``.
        ``write_conversations`` stores many answers in one transaction (far cheaper each).
        """
        _check_guru(guru)
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"session_id {session_id!r} is not valid: pass the session's id")
        if status not in FETCH_STATUSES:
            raise ConfigError(
                f"fetch status {status!r} is not valid: use {' or '.join(FETCH_STATUSES)}"
            )
        fetch = _Fetches(
            [session_id],
            [status],
            [_opt_utc(fetched_last_used, "fetched_last_used")],
            [_utc(fetched_at, "fetched_at")],
            [_opt_utc(date_created, "date_created")],
        )
        frame = None
        if status == "ok":
            if messages is None:
                raise ConfigError(
                    "messages is None for status 'ok': pass the session's messages frame"
                )
            _require(messages, ("id", "date_created"), "messages")
            frame = _message_frame(messages.assign(session_id=session_id), session_ids=True)
        elif messages is not None and len(messages):
            raise ConfigError(
                "status 'not_found' comes with no messages: pass None or an empty frame"
            )
        return self._write_conversations(guru, fetch, frame)

    def write_conversations(
        self, guru: str, fetches: pd.DataFrame, messages: pd.DataFrame | None
    ) -> int:
        """Store many Get Session answers in one transaction; returns the messages stored.

        ``fetches``: one row per session with ``session_id``, ``status`` (``'ok'`` or
        ``'not_found'``), ``fetched_at`` and optionally ``fetched_last_used`` (the answer's
        ``last_used``) and ``date_created``. ``messages``: the messages of the ``'ok'``
        sessions, ``session_id`` plus the ``write_messages`` columns (an ``'ok'`` session
        without rows has no messages; None only when no session is ``'ok'``). Each session
        gets exactly what ``write_messages`` would do for it; all of them or none are stored.
        """
        _check_guru(guru)
        fetch = _Fetches.from_frame(fetches)
        frame = None if messages is None else _message_frame(messages, session_ids=True)
        ok = {
            sid
            for sid, status in zip(fetch.session_id, fetch.status, strict=True)
            if status == "ok"
        }
        if frame is None and ok:
            raise ConfigError(
                "messages is None but some fetches have status 'ok': pass their messages "
                "(an empty frame if they have none)"
            )
        if frame is not None and len(frame):
            stray = set(frame["session_id"]) - ok
            if stray & set(fetch.session_id):
                raise ConfigError(
                    "status 'not_found' comes with no messages: pass messages only for 'ok' "
                    "sessions"
                )
            if stray:
                raise ConfigError(
                    f"messages of session(s) {', '.join(sorted(stray)[:5])} have no fetches "
                    "row: add one row per session to fetches"
                )
        return self._write_conversations(guru, fetch, frame)

    def _write_conversations(self, guru: str, fetch: _Fetches, frame: pd.DataFrame | None) -> int:
        """The transaction behind ``write_messages`` and ``write_conversations`` (validated
        input). Sessions are matched on (guru, id) with plain joins: a scan of the narrow key
        columns once per batch, which stays cheap next to one Get Session request each."""
        if not fetch.session_id:
            return 0
        stored = 0 if frame is None else len(frame)
        first: dict[str, datetime] = {}  # each session's first message
        if stored and frame is not None:
            for sid, at in zip(
                frame["session_id"].tolist(),
                frame["date_created"].array.to_pydatetime(),
                strict=True,
            ):
                if sid not in first or at < first[sid]:
                    first[sid] = at
        created = {  # the one given, else the first message's
            sid: given if given is not None else first.get(sid)
            for sid, given in zip(fetch.session_id, fetch.date_created, strict=True)
        }
        ok = [k for k, status in enumerate(fetch.status) if status == "ok"]
        gone = [k for k, status in enumerate(fetch.status) if status != "ok"]
        dated = [k for k in ok if created[fetch.session_id[k]] is not None]
        what = f"storing the messages of {len(fetch.session_id)} session(s) of {guru!r}"
        g = {"guru": guru}
        with self._transaction(what, {"_ga_messages": frame if stored else None}) as conn:
            if ok:
                conn.execute(_DELETE_MESSAGES_SQL, {**g, "id": [fetch.session_id[k] for k in ok]})
            if stored:
                conn.execute(_INSERT_MESSAGES_SQL, g)
            if dated:
                sids = [fetch.session_id[k] for k in dated]
                conn.execute(
                    _DATE_CREATED_SQL, {**g, "id": sids, "at": [created[sid] for sid in sids]}
                )
            if gone:
                conn.execute(
                    _MARK_NOT_FOUND_SQL,
                    {
                        **g,
                        "id": [fetch.session_id[k] for k in gone],
                        "at": [fetch.fetched_at[k] for k in gone],
                    },
                )
            conn.execute(
                _RECORD_FETCHES_SQL,
                {
                    **g,
                    "id": fetch.session_id,
                    "last_used": fetch.fetched_last_used,
                    "at": fetch.fetched_at,
                    "status": fetch.status,
                },
            )
        return stored

    def pending_message_fetches(self, guru: str, limit: int | None = None) -> pd.DataFrame:
        """Non-deleted sessions whose messages were never fetched or are older than their
        ``last_used``; newest ``last_used`` first (the sessions users touched last).

        Columns: ``id``, ``last_used``, ``fetched_last_used`` (NaT if never fetched),
        ``root_question_slug``."""
        _check_guru(guru)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ConfigError(f"limit {limit!r} is not valid: pass an integer >= 0 or None")
        sql = (
            "SELECT s.id, s.last_used, "
            "(SELECT f.fetched_last_used FROM message_fetches AS f "
            " WHERE f.guru = s.guru AND f.session_id = s.id) AS fetched_last_used, "
            "s.root_question_slug "
            f"{_PENDING_FROM} ORDER BY s.last_used DESC, s.id"
        )
        params: list[Any] = [guru]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.reader() as conn:
            return conn.execute(sql, params).df()

    def count_pending(self, guru: str) -> int:
        """How many sessions ``pending_message_fetches`` would return without a limit."""
        _check_guru(guru)
        with self.reader() as conn:
            return _count(conn.execute(f"SELECT count(*) {_PENDING_FROM}", [guru]))

    # --- questions (issue 15) -----------------------------------------------------------

    def write_questions(
        self,
        guru: str,
        export: QuestionExport,
        exported_at: datetime,
        *,
        covers_from: datetime | None = None,
    ) -> QuestionWrite:
        """Store one Export Analytics answer in one transaction: rows not stored before, and
        the export in the ledger (also when empty, so the next sync asks for a short
        interval). Re-exports of overlapping intervals add nothing (see ``question_row_key``
        and the rule above it). ``covers_from``: the start of the interval asked for."""
        _check_guru(guru)
        at = _utc(exported_at, "exported_at")
        since = _opt_utc(covers_from, "covers_from")
        frame = question_frame(export)
        what = f"storing the question export of {guru!r} ({len(frame)} rows)"
        with self._transaction(what, {"_ga_questions": frame if len(frame) else None}) as conn:
            return insert_questions(
                conn,
                guru,
                frame,
                exported_at=at,
                interval=str(export.interval),
                covers_from=since,
                scheme=str(export.scheme),
            )

    def last_question_export(self, guru: str) -> QuestionExportRecord | None:
        """The newest question export of ``guru`` (None before the first)."""
        _check_guru(guru)
        with self.reader() as conn:
            return read_last_question_export(conn, guru)

    # --- overview -----------------------------------------------------------------------

    def gurus(self) -> list[str]:
        """Every guru slug the cache knows (from sessions, runs or sync state), sorted."""
        with self.reader() as conn:
            rows = conn.execute(
                "SELECT guru FROM sessions UNION SELECT guru FROM sync_runs "
                "UNION SELECT guru FROM sync_state ORDER BY guru"
            ).fetchall()
        return [row[0] for row in rows]

    def summary(self, guru: str) -> dict[str, Any]:
        """Counts and extremes for a one-line repr of a guru's cache."""
        _check_guru(guru)
        with self.reader() as conn:
            sessions_row = _first(
                conn.execute(
                    "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted), "
                    "min(last_used) FILTER (WHERE NOT deleted), "
                    "max(last_used) FILTER (WHERE NOT deleted) FROM sessions WHERE guru = ?",
                    [guru],
                )
            )
            users = _count(
                conn.execute(
                    "SELECT count(DISTINCT external_user_id) FROM session_users WHERE guru = ?",
                    [guru],
                )
            )
            messages = _count(conn.execute("SELECT count(*) FROM messages WHERE guru = ?", [guru]))
            pending = _count(conn.execute(f"SELECT count(*) {_PENDING_FROM}", [guru]))
            run = _first(
                conn.execute(
                    "SELECT run_id, mode, outcome, started_at, ended_at, pid, host FROM sync_runs "
                    "WHERE guru = ? ORDER BY run_id DESC LIMIT 1",
                    [guru],
                )
            )
        assert sessions_row is not None
        last_run = None
        if run is not None:
            run_id, mode, outcome, started, ended, pid, host = run
            if outcome == "running" and self._is_orphan(run_id, pid, host):
                outcome = "interrupted"
            last_run = {
                "run_id": int(run_id),
                "mode": mode,
                "outcome": outcome,
                "started_at": _py_utc(started),
                "ended_at": _py_utc(ended),
            }
        return {
            "guru": guru,
            "sessions": int(sessions_row[0]),
            "deleted": int(sessions_row[1]),
            "users": users,
            "messages": messages,
            "pending_messages": pending,
            "first_last_used": _py_utc(sessions_row[2]),
            "last_last_used": _py_utc(sessions_row[3]),
            "last_run": last_run,
        }


def _count(result: duckdb.DuckDBPyConnection) -> int:
    """The single integer a DML statement or ``count(*)`` returns."""
    row = _first(result)
    return 0 if row is None or row[0] is None else int(row[0])


def _first(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row, reading the result to its end: DuckDB 2 refuses other work on a
    connection (e.g. ``register``) while a result is only partly fetched."""
    rows = result.fetchall()
    return rows[0] if rows else None


def _check_user(external_user_id: str | None) -> str | None:
    if external_user_id is None:
        return None
    if not isinstance(external_user_id, str) or not external_user_id:
        raise ConfigError(
            f"external_user_id {external_user_id!r} is not valid: pass the user's id or None"
        )
    return external_user_id


def _read_state(conn: duckdb.DuckDBPyConnection, guru: str, listing: str) -> SyncState | None:
    row = _first(
        conn.execute(
            f"SELECT {', '.join(_STATE_FIELDS)} FROM sync_state WHERE guru = ? AND listing = ?",
            [guru, listing],
        )
    )
    if row is None:
        return None
    watermark, completed, mode, started, top, next_page = row
    return SyncState(
        guru=guru,
        listing=listing,
        watermark=_py_utc(watermark),
        completed_at=_py_utc(completed),
        pass_mode=mode,
        pass_started_at=_py_utc(started),
        pass_top=_py_utc(top),
        pass_next_page=None if next_page is None else int(next_page),
    )


# --- questions (issue 15) -----------------------------------------------------------------
# Export Analytics rows (``wire.QuestionExport``) and the ledger of exports. Module-level
# functions take the connection; the Store methods ``write_questions`` and
# ``last_question_export`` wrap them in a transaction / a reader.
#
# Idempotency. A row of the export has no id. Its key is ``question_row_key`` (kind, minute,
# source, text, URL, follow-up flag) plus its occurrence number among identical rows of the
# same export (0, 1, ...). A row whose (key, occurrence) is stored already is ignored, so a
# re-export of an overlapping interval adds nothing, and N identical rows of one minute are
# stored N times (the most any export showed), never 2N. This needs no clock agreement with
# the server: the interval's edges never decide what is kept. Linked rows are unique by
# (minute, URL) anyway; the occurrence number matters for the unlinked ones (first questions
# of web sessions share their original's URL; unable-to-answer rows have no URL). A row
# stored once is kept even if a later export no longer holds it (its session was deleted, or
# it fell out of the 12 months): the cache only grows, as observations do.

QUESTION_KINDS = ("answered", "unanswered")
_QUESTION_FRAME_COLUMNS = (
    "row_key", "occurrence", "kind", "asked_at", "source", "question", "trust_score",
    "follow_up", "url", "session_id", "question_slug", "extra",
)  # fmt: skip


@dataclass(frozen=True)
class QuestionWrite:
    """What ``write_questions`` stored: the export's rows by kind, how many of the answered
    ones link to a session, and how many rows (of both kinds) were not stored before."""

    questions: int
    unanswered: int
    linked: int
    new: int


@dataclass(frozen=True)
class QuestionExportRecord:
    """One row of the export ledger (``question_exports``); times are tz-aware UTC."""

    guru: str
    exported_at: datetime
    interval: str
    covers_from: datetime | None
    scheme: str
    questions: int
    unanswered: int
    new: int


def question_row_key(
    kind: str,
    asked_at: datetime,
    source: str,
    question: str,
    url: str | None,
    follow_up: bool | None,
) -> int:
    """The fingerprint of an export row's identity: first 64 bits of the md5 of its fields,
    each written as ``N`` (None) or ``S<bytes>:<text>`` and joined by ``|`` (no field can
    run into the next). The trust score is left out: it is a value of the row, not its
    identity."""
    minute = asked_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    flag = None if follow_up is None else ("1" if follow_up else "0")
    text = "|".join(
        "N" if v is None else f"S{len(v.encode('utf-8', 'surrogatepass'))}:{v}"
        for v in (kind, minute, source, question, url, flag)
    )
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return int(digest.hexdigest()[:16], 16)


def question_frame(export: Any) -> pd.DataFrame:
    """The rows of a ``wire.QuestionExport`` as the ``questions`` table's columns (answered
    rows first, then unanswered), with ``row_key`` and ``occurrence``; ConfigError on rows
    that are not tz-aware."""
    cols: dict[str, list[Any]] = {c: [] for c in _QUESTION_FRAME_COLUMNS}
    seen: Counter[int] = Counter()

    def add(kind: str, row: Any, i: int, answered: bool) -> None:
        at = _utc(row.asked_at, f"{kind} row {i} asked_at")
        url = row.url if answered else None
        follow = bool(row.follow_up) if answered else None
        key = question_row_key(kind, at, row.source, row.question, url, follow)
        cols["row_key"].append(key)
        cols["occurrence"].append(seen[key])
        seen[key] += 1
        cols["kind"].append(kind)
        cols["asked_at"].append(at)
        cols["source"].append(row.source)
        cols["question"].append(row.question)
        cols["trust_score"].append(row.trust_score if answered else None)
        cols["follow_up"].append(follow)
        cols["url"].append(url)
        cols["session_id"].append(row.session_id if answered else None)
        cols["question_slug"].append(row.question_slug if answered else None)
        cols["extra"].append(json.dumps(row.extra, sort_keys=True) if row.extra else None)

    for i, row in enumerate(export.questions):
        add("answered", row, i, True)
    for i, row in enumerate(export.unanswered):
        add("unanswered", row, i, False)
    return pd.DataFrame(
        {
            "row_key": pd.Series(cols["row_key"], dtype="uint64"),
            "occurrence": pd.Series(cols["occurrence"], dtype="int32"),
            "kind": pd.Series(cols["kind"], dtype=object),
            "asked_at": pd.Series(pd.to_datetime(cols["asked_at"], utc=True), dtype=_UTC_US),
            "source": pd.Series(cols["source"], dtype=object),
            "question": pd.Series(cols["question"], dtype=object),
            "trust_score": pd.Series(cols["trust_score"], dtype="float64"),
            "follow_up": pd.Series(cols["follow_up"], dtype="boolean"),
            "url": pd.Series(cols["url"], dtype=object),
            "session_id": pd.Series(cols["session_id"], dtype=object),
            "question_slug": pd.Series(cols["question_slug"], dtype=object),
            "extra": pd.Series(cols["extra"], dtype=object),
        }
    )


_INSERT_QUESTIONS_SQL = """
INSERT INTO questions (guru, row_key, occurrence, kind, asked_at, source, question,
                       trust_score, follow_up, url, session_id, question_slug, extra,
                       first_exported)
SELECT $guru, n.row_key, n.occurrence, n.kind, n.asked_at, n.source, n.question,
       n.trust_score, n.follow_up, n.url, n.session_id, n.question_slug, n.extra::JSON, $at
FROM _ga_questions AS n
WHERE NOT EXISTS (SELECT 1 FROM questions AS q
                  WHERE q.guru = $guru AND q.row_key = n.row_key
                    AND q.occurrence = n.occurrence)
ORDER BY n.row_key, n.occurrence
"""


def insert_questions(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    frame: pd.DataFrame,
    *,
    exported_at: datetime,
    interval: str,
    covers_from: datetime | None,
    scheme: str,
) -> QuestionWrite:
    """Store ``question_frame`` rows not stored before and record the export in the ledger.

    Runs inside the caller's transaction; ``frame`` must be registered as ``_ga_questions``
    when it has rows. One anti-joined insert (not ``ON CONFLICT``, which DuckDB runs as a
    MERGE scanning the table anyway) and one ledger row."""
    new = 0
    if len(frame):
        new = _count(conn.execute(_INSERT_QUESTIONS_SQL, {"guru": guru, "at": exported_at}))
    answered = frame["kind"] == "answered"
    write = QuestionWrite(
        questions=int(answered.sum()),
        unanswered=int((~answered).sum()),
        linked=int((answered & frame["session_id"].notna()).sum()),
        new=new,
    )
    conn.execute(
        "INSERT INTO question_exports (guru, exported_at, interval, covers_from, scheme, "
        "questions, unanswered, new_rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [guru, exported_at, interval, covers_from, scheme, write.questions, write.unanswered, new],
    )
    return write


def read_last_question_export(
    conn: duckdb.DuckDBPyConnection, guru: str
) -> QuestionExportRecord | None:
    """The newest export of ``guru`` in the ledger (None before the first)."""
    row = _first(
        conn.execute(
            "SELECT exported_at, interval, covers_from, scheme, questions, unanswered, new_rows "
            "FROM question_exports WHERE guru = ? ORDER BY exported_at DESC, export_id DESC "
            "LIMIT 1",
            [guru],
        )
    )
    if row is None:
        return None
    at, interval, covers_from, scheme, n_q, n_u, new = row
    exported = _py_utc(at)
    assert exported is not None
    return QuestionExportRecord(
        guru, exported, interval, _py_utc(covers_from), scheme, int(n_q), int(n_u), int(new)
    )
