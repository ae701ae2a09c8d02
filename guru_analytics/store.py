"""The local DuckDB cache: schema, migrations, bulk upserts, runs and sync state.

One file holds many gurus. Every timestamp column is TIMESTAMPTZ and every connection this
module opens runs with ``TimeZone='UTC'`` so values come back tz-aware UTC.

Tables (schema version ``SCHEMA_VERSION``):

- ``meta(key, value)``: ``schema_version``.
- ``sessions``: one row per (guru, id) with the current listing values, first/last seen
  (client clock), the deleted flag, ``date_created`` once messages were fetched, and (v2)
  ``listing_md5``, a fingerprint of the listing text (internal; rows are never deleted).
- ``observations``: every distinct ``last_used`` ever seen per session, so activity over time
  survives later syncs overwriting ``sessions.last_used``.
- ``session_users``: which external user a session belongs to (from filtered listings).
- ``messages`` / ``message_fetches``: Get Session enrichment (opt-in).
- ``sync_runs``: one row per ``sync()`` call with its request and session counts, and (v2)
  the PID and host that ran it, so a run a killed process left ``running`` reads as
  ``interrupted``.
- ``sync_state``: per listing (guru-wide, per user, per search) the committed watermark and
  the pass in progress, so an interrupted sync resumes.

Concurrency: DuckDB lets one process open a file read-write *or* many processes read-only,
never both. So a ``Store`` opens the file read-write lazily, on its first write, and
``release()`` closes it again (the sync releases before long rate-limit waits); readers open
it read-only only for the length of a ``reader()`` block. Both retry a held lock with short
backoff up to ``lock_timeout`` and then raise ``CacheLockedError`` naming the holder's PID.

Every write method is one transaction: a crash or an exception at any point leaves the cache
as it was before that call. Bulk data moves as DataFrames through set-based SQL, never row
by row.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from .errors import CacheError, CacheLockedError, CacheSchemaError, ConfigError
from .timestamps import utc_now

SCHEMA_VERSION = 2

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
# The listing fingerprint: one short value per session, so a page write can tell whether the
# listing text changed by reading one narrow column instead of five wide ones. md5 is stable
# across DuckDB versions (hash() is not). json_array keeps NULL apart from ''.
LISTING_MD5_SQL = (
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
UPDATE sessions SET listing_md5 = {LISTING_MD5_SQL};
"""

Migration = tuple[int, "str | Callable[[duckdb.DuckDBPyConnection], None]"]
"""``(version, step)``: ``step`` is SQL text (may hold several statements) or a callable
taking the open connection. Each step runs in its own transaction together with the
``meta.schema_version`` bump, so a failed upgrade leaves the previous version intact."""

MIGRATIONS: tuple[Migration, ...] = ((1, SCHEMA_V1), (2, SCHEMA_V2))

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
    """The listing frame in the exact shape the SQL expects, with ``_ord`` = row position
    (a tie-breaker: among equal ``last_used`` the later row of a batch wins). Built from
    arrays, so it has a fresh RangeIndex and costs little for a 30-row page."""
    n = len(rows)
    no_times = pd.array([pd.NaT] * n, dtype=_UTC_US)
    return pd.DataFrame(
        {
            "id": _id_column(rows, "id", what),
            "last_used": _utc_column(rows, "last_used", what, required=True),
            **{c: _text_column(rows, c, what) for c in _LISTING_TEXT},
            "extra": _json_column(rows, "extra", what),
            "date_created": (
                _utc_column(rows, "date_created", what, required=False)
                if "date_created" in rows.columns
                else no_times
            ),
            "_ord": np.arange(n, dtype=np.int64),
        }
    )


def _message_frame(messages: pd.DataFrame) -> pd.DataFrame:
    """The messages of one session in the shape the SQL expects; ids unique."""
    what = "messages"
    _require(messages, ("id", "date_created"), what)
    ids = messages["id"]
    if pd.api.types.infer_dtype(ids, skipna=False) == "integer":
        ids = ids.astype(str)
    n = len(messages)
    out = pd.DataFrame(
        {
            "id": _id_column(pd.DataFrame({"id": ids}), "id", what),
            **{c: _text_column(messages, c, what) for c in _MESSAGE_TEXT},
            "date_created": _utc_column(messages, "date_created", what, required=True),
            "date_updated": (
                _utc_column(messages, "date_updated", what, required=False)
                if "date_updated" in messages.columns
                else pd.array([pd.NaT] * n, dtype=_UTC_US)
            ),
            **{c: _int_column(messages, c, what) for c in _MESSAGE_INT},
            "extra": _json_column(messages, "extra", what),
        }
    )
    dupes = out["id"][out["id"].duplicated()].unique().tolist()
    if dupes:
        raise ConfigError(
            f"messages repeat id(s) {', '.join(map(str, dupes[:5]))}: pass each message once"
        )
    return out


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


# The page (deduplicated when an id repeats: greatest last_used wins, among equals the later
# row) classified against what is stored. Every later statement of the write reads this small
# table. Only narrow stored columns are read (scanning the wide text columns of a large
# sessions table would dominate the cost of a 30-row page), and the stored row's rowid is
# kept so the updates below touch those rows directly instead of joining the whole table
# again: rowids are stable here because sessions rows are never deleted and no key column
# is ever updated, and this transaction is the only writer.
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
        AS refresh,
    {attributed} AS attributed
FROM (
    SELECT id, last_used, guru_type_name, root_question_name, root_question_slug,
           root_question_link, extra, date_created, _ord,
           {listing_md5} AS listing_md5
    FROM (
        SELECT id, last_used, guru_type_name, root_question_name, root_question_slug,
               root_question_link, extra::JSON AS extra, date_created, _ord
        FROM _ga_rows
        {dedupe}
    )
) AS p
LEFT JOIN sessions AS s ON s.guru = $guru AND s.id = p.id
{users_join}
"""
_STAGE_DEDUPE = "QUALIFY row_number() OVER (PARTITION BY id ORDER BY last_used DESC, _ord DESC) = 1"
_STAGE_USERS_JOIN = (
    "LEFT JOIN session_users AS u ON u.guru = $guru AND u.id = p.id AND u.external_user_id = $user"
)

# Per-row flags, in page order: new, changed (forward or undeleted), forward, needs the
# listing columns rewritten, stale (older than stored), not yet attributed to the user.
_FLAGS = """
    is_new,
    NOT is_new AND (forward OR undelete),
    NOT is_new AND forward,
    NOT is_new AND (forward OR refresh),
    NOT is_new AND last_used < stored_last_used,
    NOT attributed
"""
# Pages fetch the flags row by row (30 rows; cheaper than aggregating lists in SQL) because
# they report ids; bulk loads only count.
_FLAG_ROWS_SQL = f"SELECT id, {_FLAGS} FROM _ga_stage ORDER BY last_used DESC, _ord"
_FLAG_COUNTS_SQL = (
    "SELECT count(*), "
    + ", ".join(f"count(*) FILTER (WHERE {flag.strip()})" for flag in _FLAGS.strip().split(",\n"))
    + " FROM _ga_stage"
)

_INSERT_NEW_SQL = """
INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                      root_question_slug, root_question_link, extra, first_seen, last_seen,
                      deleted, deleted_at, date_created, listing_md5)
SELECT $guru, id, last_used, guru_type_name, root_question_name, root_question_slug,
       root_question_link, extra, $seen, $seen, false, NULL, date_created, listing_md5
FROM _ga_stage WHERE is_new
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

# Every distinct (id, last_used) of the raw page; a value equal to the stored last_used is
# already an observation (each write records the value it stores), so it is skipped.
_OBSERVE_SQL = """
INSERT INTO observations (guru, id, last_used, observed_at)
SELECT DISTINCT $guru, r.id, r.last_used, $seen
FROM _ga_rows AS r JOIN _ga_stage AS p ON p.id = r.id
WHERE r.last_used IS DISTINCT FROM p.stored_last_used
ON CONFLICT DO NOTHING
"""

_ATTRIBUTE_SQL = """
INSERT INTO session_users (guru, id, external_user_id, first_seen)
SELECT $guru, id, $user, $seen FROM _ga_stage WHERE NOT attributed
ON CONFLICT DO NOTHING
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
        page = _listing_frame(rows, "rows")
        what = f"writing a page of {len(page)} sessions for guru {guru!r}"
        with self._transaction(what, {"_ga_rows": page}) as conn:
            write, _obs, _users = self._upsert(
                conn,
                guru,
                len(page),
                seen,
                dedupe=not page["id"].is_unique,
                user=user,
                want_ids=True,
            )
        return write

    def _upsert(
        self,
        conn: duckdb.DuckDBPyConnection,
        guru: str,
        n_rows: int,
        seen: datetime,
        *,
        dedupe: bool,
        user: str | None,
        want_ids: bool,
        bulk: bool = False,
        with_date_created: bool = False,
    ) -> tuple[PageWrite, int, int]:
        """The shared write path over the registered ``_ga_rows``; statements that would
        change nothing are skipped (each costs milliseconds even for 30 rows)."""
        stage = _STAGE_SQL.format(
            attributed="u.id IS NOT NULL" if user is not None else "true",
            listing_md5=LISTING_MD5_SQL,
            dedupe=_STAGE_DEDUPE if dedupe else "",
            users_join=_STAGE_USERS_JOIN if user is not None else "",
        )
        conn.execute(stage, {"guru": guru, "user": user} if user is not None else {"guru": guru})
        new_ids: tuple[str, ...] = ()
        changed_ids: tuple[str, ...] = ()
        if want_ids:
            flags = conn.execute(_FLAG_ROWS_SQL).fetchall()
            new_ids = tuple(r[0] for r in flags if r[1])
            changed_ids = tuple(r[0] for r in flags if r[2])
            counts = [len(flags), *(sum(1 for r in flags if r[k]) for k in range(1, 7))]
        else:
            row = _first(conn.execute(_FLAG_COUNTS_SQL))
            assert row is not None
            counts = [int(v) for v in row]
        distinct, new, changed, forward, refresh, stale, unattributed = counts
        gs = {"guru": guru, "seen": seen}
        if new:
            conn.execute(_INSERT_NEW_SQL, gs)
        if refresh:
            conn.execute(_REFRESH_SQL)
        if distinct - new:
            extra_set = ", date_created = coalesce(p.date_created, sessions.date_created)"
            touch = _TOUCH_SQL.format(date_created=extra_set if with_date_created else "")
            conn.execute(touch, {"seen": seen})
        observations = 0
        if new or forward or stale or n_rows > distinct:
            observations = _count(conn.execute(_OBSERVE_SQL, gs))
        users = 0
        if user is not None and unattributed:
            users = _count(conn.execute(_ATTRIBUTE_SQL, {**gs, "user": user}))
        if bulk:
            conn.execute("DROP TABLE _ga_stage")
        write = PageWrite(new, changed, distinct - new - changed, new_ids, changed_ids)
        return write, observations, users

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
        with self._transaction(what, frames) as conn:
            write, observed, attributed = PageWrite(0, 0, 0), 0, 0
            if len(page):
                write, observed, attributed = self._upsert(
                    conn,
                    guru,
                    len(page),
                    seen,
                    dedupe=not page["id"].is_unique,
                    user=None,
                    want_ids=False,
                    bulk=True,
                    with_date_created=bool(page["date_created"].notna().any()),
                )
            gs = {"guru": guru, "seen": seen}
            if observations is not None and len(observations):
                observed += _count(
                    conn.execute(
                        "INSERT INTO observations (guru, id, last_used, observed_at) "
                        "SELECT DISTINCT $guru, id, last_used, $seen FROM _ga_obs "
                        "ON CONFLICT DO NOTHING",
                        gs,
                    )
                )
            if users is not None and len(users):
                attributed += _count(
                    conn.execute(
                        "INSERT INTO session_users (guru, id, external_user_id, first_seen) "
                        "SELECT DISTINCT $guru, id, external_user_id, $seen FROM _ga_users "
                        "WHERE external_user_id IS NOT NULL AND external_user_id <> '' "
                        "ON CONFLICT DO NOTHING",
                        gs,
                    )
                )
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
        """
        _check_guru(guru)
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"session_id {session_id!r} is not valid: pass the session's id")
        if status not in FETCH_STATUSES:
            raise ConfigError(
                f"fetch status {status!r} is not valid: use {' or '.join(FETCH_STATUSES)}"
            )
        fetched_lu = _opt_utc(fetched_last_used, "fetched_last_used")
        fetched = _utc(fetched_at, "fetched_at")
        created = _opt_utc(date_created, "date_created")
        frame: pd.DataFrame | None = None
        if status == "ok":
            if messages is None:
                raise ConfigError(
                    "messages is None for status 'ok': pass the session's messages frame"
                )
            frame = _message_frame(messages)
            if created is None and len(frame):
                created = _py_utc(frame["date_created"].min())
        elif messages is not None and len(messages):
            raise ConfigError(
                "status 'not_found' comes with no messages: pass None or an empty frame"
            )
        key = [guru, session_id]
        what = f"storing the messages of session {session_id} of {guru!r}"
        with self._transaction(what, {"_ga_messages": frame}) as conn:
            if frame is not None:
                conn.execute("DELETE FROM messages WHERE guru = ? AND session_id = ?", key)
                if len(frame):
                    conn.execute(
                        "INSERT INTO messages (guru, session_id, id, slug, parent_slug, question, "
                        "user_question, date_created, date_updated, source, trust_score, user_vote, "
                        "answer, n_references, extra) SELECT ?, ?, id, slug, parent_slug, question, "
                        "user_question, date_created, date_updated, source, trust_score, user_vote, "
                        "answer, n_references, extra::JSON FROM _ga_messages",
                        key,
                    )
                if created is not None:
                    conn.execute(
                        "UPDATE sessions SET date_created = ? WHERE guru = ? AND id = ?",
                        [created, *key],
                    )
            else:
                conn.execute(
                    "UPDATE sessions SET deleted = true, deleted_at = ? "
                    "WHERE guru = ? AND id = ? AND NOT deleted",
                    [fetched, *key],
                )
            conn.execute(
                "INSERT INTO message_fetches (guru, session_id, fetched_last_used, fetched_at, status) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guru, session_id) DO UPDATE SET "
                "fetched_last_used = excluded.fetched_last_used, fetched_at = excluded.fetched_at, "
                "status = excluded.status",
                [*key, fetched_lu, fetched, status],
            )
        return 0 if frame is None else len(frame)

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
