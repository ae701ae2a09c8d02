"""Analytics DataFrames over the DuckDB cache: sessions, activity, users, lifecycle, retention.

Every function here is a pure read of the cache (it never fetches) and does its work in one
DuckDB SQL statement, so a million sessions cost one query, not a Python loop.

Definitions (the README repeats them):

- An **activity event** is an observed use of a session: each distinct ``last_used`` value any
  sync has seen (the ``observations`` table; the store records there every value it stores),
  and, where a session's messages were fetched, each message's ``date_created``. Identical
  (session, instant) pairs count once. The listing alone shows only the *latest* use between
  two syncs, so without messages the events are a lower bound of real use.
- A session is **active** in a bucket if it has an event in it, and **new** in the bucket of
  its first event ever (not its first event inside ``start``/``end``).
- **Buckets** are hour, day, week, month, quarter or year in any IANA time zone. Day and
  longer buckets start at local midnight (a Berlin day is 23 or 25 hours long on DST days);
  an hour bucket is the instant minus the time since the local hour began, so the two
  02:00 hours of a fall-back night stay apart. Weeks start on Monday unless ``week_start``
  says otherwise. Results cover every bucket from ``start`` (or the first event) to ``end``
  (or the last event); buckets with no activity are present with zeros.
- ``start`` is inclusive and ``end`` exclusive (``end="2025-04-01"`` covers all of March);
  naive times and dates are read in ``tz``. The buckets holding ``start`` and ``end`` are
  shown whole, but only events inside the range are counted.
- A session with no known external user counts under the label ``"(unattributed)"``; it is
  never dropped. A session attributed to several users counts once for each of them in
  per-user figures (per-user sums can exceed the total), and once in totals.
- A **user** is a known external user id; ``active_users`` never counts ``"(unattributed)"``
  (one label stands for any number of anonymous visitors).
- Deleted sessions are left out unless ``include_deleted=True``.

Each result carries ``df.attrs`` with ``basis`` (``"observations"`` or
``"observations+messages"``: whether message times could be used), ``guru``, ``tz`` and,
where relevant, ``freq`` and ``week_start``. ``COLUMNS`` documents every column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from .errors import CacheSchemaError, ConfigError, NoDataError
from .store import UNATTRIBUTED
from .timestamps import check_tz, utc_now

BASIS_OBSERVATIONS = "observations"
BASIS_MESSAGES = "observations+messages"
UNKNOWN_SOURCE = "(unknown)"


class SupportsReader(Protocol):
    """Anything with a ``reader()`` context manager yielding a DuckDB connection (the Store)."""

    def reader(self) -> Any: ...


Source = duckdb.DuckDBPyConnection | SupportsReader
TimeLike = str | datetime | date | pd.Timestamp | None


@dataclass(frozen=True)
class Column:
    """One documented output column: ``kind`` is the pandas dtype family it is cast to."""

    name: str
    kind: str  # "datetime" (tz-aware, in tz), "int", "Int64" (nullable), "float", "str", "bool"
    doc: str


_GROUP_USER = Column("user", "str", "external user id, or `(unattributed)` (only with `by='user'`)")
_GROUP_GURU = Column("guru", "str", "guru slug (only with `by='guru'`)")

COLUMNS: dict[str, list[Column]] = {
    "sessions": [
        Column("guru", "str", "guru slug"),
        Column("id", "str", "session (binge) id"),
        Column("title", "str", "first question of the session (`root_question_name`)"),
        Column("slug", "str", "`root_question_slug`"),
        Column("link", "str", "`root_question_link`, the session in the Gurubase UI"),
        Column("users", "str", "known external user ids joined by `; `, or `(unattributed)`"),
        Column("n_users", "int", "number of known external users (0 when unattributed)"),
        Column("first_seen", "datetime", "when a sync first listed the session (client clock)"),
        Column(
            "date_created",
            "datetime",
            "creation time from Get Session; empty until messages are fetched",
        ),
        Column("first_event", "datetime", "earliest activity event"),
        Column("last_event", "datetime", "latest activity event"),
        Column("last_used", "datetime", "`last_used` from the latest listing"),
        Column("events", "int", "number of distinct activity events"),
        Column("messages", "Int64", "messages stored for the session; empty when not fetched"),
        Column("deleted", "bool", "true once a full sync no longer listed it"),
        Column("deleted_at", "datetime", "when it was found deleted"),
    ],
    "activity": [
        Column("bucket", "datetime", "bucket start, in the chosen time zone"),
        _GROUP_USER,
        _GROUP_GURU,
        Column("active_sessions", "int", "sessions with at least one event in the bucket"),
        Column("new_sessions", "int", "sessions whose first event ever is in the bucket"),
        Column("events", "int", "activity events in the bucket"),
        Column(
            "active_users",
            "int",
            "distinct known users with an active session (never counts `(unattributed)`)",
        ),
        Column(
            "messages",
            "Int64",
            "stored messages created in the bucket; empty when no messages are cached",
        ),
    ],
    "users": [
        Column("user", "str", "external user id, or `(unattributed)`"),
        Column("sessions", "int", "sessions of the user with an event in the range"),
        Column("events", "int", "activity events of those sessions in the range"),
        Column("first_active", "datetime", "earliest event in the range"),
        Column("last_active", "datetime", "latest event in the range"),
        Column("active_days", "int", "distinct local calendar days with an event"),
        Column("active_weeks", "int", "distinct weeks (starting on `week_start`) with an event"),
        Column(
            "share",
            "float",
            "sessions / all active sessions in the range (0..1; multi-user sessions count for each user, so shares can sum above 1)",
        ),
        Column("rank", "int", "rank by sessions, then events (1 = most; ties share a rank)"),
    ],
    "lifecycle": [
        Column("bucket", "datetime", "bucket start, in the chosen time zone"),
        Column(
            "active_users", "int", "users active in the bucket (= new + returning + resurrected)"
        ),
        Column("new_users", "int", "users whose first bucket ever is this one"),
        Column("returning_users", "int", "users active in this and the previous bucket"),
        Column(
            "resurrected_users",
            "int",
            "users active now, not in the previous bucket, but before it",
        ),
        Column(
            "dormant_users",
            "int",
            "users active in the previous bucket but not this one, as a NEGATIVE count (<= 0)",
        ),
    ],
    "retention": [
        Column("cohort", "datetime", "first bucket in which the cohort's users were active"),
        Column("cohort_size", "int", "users in the cohort"),
        Column("period", "int", "buckets since the cohort bucket (0 = the cohort bucket itself)"),
        Column("bucket", "datetime", "start of the bucket this period falls in"),
        Column("users", "int", "cohort users active in that bucket"),
        Column("rate", "float", "users / cohort_size (period 0 is 1.0)"),
    ],
    "summary": [
        Column("metric", "str", "active_sessions, new_sessions, active_users, events or messages"),
        Column(
            "current", "Int64", "value in the last period; empty for messages when none are cached"
        ),
        Column("previous", "Int64", "value in the period before it"),
        Column("change", "Int64", "current - previous"),
        Column("change_pct", "float", "100 * change / previous; empty when previous is 0"),
        Column("current_start", "datetime", "start of the last period (inclusive)"),
        Column("current_end", "datetime", "end of the last period (exclusive, = now)"),
        Column("previous_start", "datetime", "start of the previous period (inclusive)"),
        Column("previous_end", "datetime", "end of the previous period (exclusive)"),
        Column("basis", "str", "`observations` or `observations+messages`"),
    ],
    "heatmap": [
        Column("weekday", "int", "day of week, 0 = Monday .. 6 = Sunday, local time"),
        Column("weekday_name", "str", "Mon .. Sun"),
        Column("hour", "int", "local hour of day 0..23"),
        Column("events", "int", "activity events in that weekday and hour"),
        Column("active_sessions", "int", "distinct sessions with an event there"),
    ],
    "binge_length": [
        _GROUP_USER,
        _GROUP_GURU,
        Column("sessions", "int", "sessions with stored messages"),
        Column("messages", "int", "messages in those sessions"),
        Column("mean", "float", "mean messages per session"),
        Column("median", "float", "median messages per session"),
        Column("p90", "float", "90th percentile of messages per session (linear interpolation)"),
        Column("max", "int", "most messages in one session"),
    ],
    "sources": [
        Column("bucket", "datetime", "bucket start, in the chosen time zone"),
        Column(
            "source",
            "str",
            "message source (USER, WIDGET QUESTION, API, SLACK, ...; `(unknown)` if missing)",
        ),
        Column("messages", "int", "messages from that source created in the bucket"),
    ],
    "votes": [
        Column("bucket", "datetime", "bucket start, in the chosen time zone"),
        Column("messages", "int", "messages created in the bucket"),
        Column("upvotes", "int", "messages voted up"),
        Column("downvotes", "int", "messages voted down"),
        Column("no_vote", "int", "messages without a vote"),
        Column("scored", "int", "messages with a trust score"),
        Column(
            "mean_trust_score",
            "float",
            "mean trust score (0-100); empty for buckets without scored messages",
        ),
    ],
}

_FREQS: dict[str, str] = {
    "h": "H", "hour": "H", "hours": "H", "hourly": "H",
    "d": "D", "day": "D", "days": "D", "daily": "D",
    "w": "W", "week": "W", "weeks": "W", "weekly": "W",
    "m": "M", "month": "M", "months": "M", "monthly": "M",
    "q": "Q", "quarter": "Q", "quarters": "Q", "quarterly": "Q",
    "y": "Y", "year": "Y", "years": "Y", "yearly": "Y", "annual": "Y",
}  # fmt: skip
FREQ_NAMES = {"H": "hour", "D": "day", "W": "week", "M": "month", "Q": "quarter", "Y": "year"}
_WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]
_HOUR_US = 3_600_000_000
_SERIES_STEP = {
    "D": "INTERVAL 1 day",
    "W": "INTERVAL 7 day",
    "M": "INTERVAL 1 month",
    "Q": "INTERVAL 3 month",
    "Y": "INTERVAL 1 year",
}


# --- input checking ----------------------------------------------------------------------


def normalize_freq(freq: str) -> str:
    """Return the one-letter bucket code (H, D, W, M, Q, Y) for a letter or word."""
    code = _FREQS.get(freq.strip().lower()) if isinstance(freq, str) else None
    if code is None:
        raise ConfigError(
            f"unknown freq {freq!r}: use H, D, W, M, Q, Y or hour, day, week, month, quarter, year"
        )
    return code


def normalize_week_start(week_start: str | int) -> int:
    """Return the ISO weekday (1 = Monday .. 7 = Sunday) a week starts on.

    Accepts ``"MON"``..``"SUN"``, full day names, or an int 0..6 with 0 = Monday (Python's
    ``weekday()``).
    """
    if isinstance(week_start, bool):
        raise ConfigError(f"unknown week_start {week_start!r}: use MON..SUN or 0..6 (0 = Monday)")
    if isinstance(week_start, int | np.integer):
        if 0 <= int(week_start) <= 6:
            return int(week_start) + 1
    elif isinstance(week_start, str):
        key = week_start.strip().upper()[:3]
        if key in _WEEKDAYS and len(week_start.strip()) >= 3:
            return _WEEKDAYS.index(key) + 1
    raise ConfigError(f"unknown week_start {week_start!r}: use MON..SUN or 0..6 (0 = Monday)")


def to_instant(value: TimeLike, tz: str, name: str = "time") -> pd.Timestamp | None:
    """Parse a start/end/now value into a tz-aware UTC Timestamp; naive values are in ``tz``."""
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{name} {value!r} is not a date or time: use ISO 8601 such as 2025-03-30 or 2025-03-30T12:00+02:00"
        ) from exc
    if ts is pd.NaT:
        raise ConfigError(f"{name} is empty: give an ISO 8601 date or time")
    if ts.tzinfo is None:
        try:
            ts = ts.tz_localize(tz, ambiguous="raise", nonexistent="shift_forward")
        except ValueError as exc:
            raise ConfigError(
                f"{name} {value!r} is ambiguous in {tz} (DST fall-back): add a UTC offset"
            ) from exc
    return ts.tz_convert("UTC")


def _gurus(guru: str | Sequence[str]) -> list[str]:
    items = [guru] if isinstance(guru, str) else list(guru)
    if not items or not all(isinstance(g, str) and g.strip() for g in items):
        raise ConfigError(f"guru must be a slug or a list of slugs, got {guru!r}")
    return list(dict.fromkeys(g.strip() for g in items))


def _users(users: str | Sequence[str] | None) -> list[str] | None:
    if users is None:
        return None
    items = [users] if isinstance(users, str) else list(users)
    if not all(isinstance(u, str) for u in items):
        raise ConfigError(f"users must be external user ids (strings), got {users!r}")
    return list(dict.fromkeys(items)) or None


def _by(by: str | None, allowed: tuple[str | None, ...] = (None, "user", "guru")) -> str | None:
    if by not in allowed:
        raise ConfigError(f"unknown by={by!r}: use {' or '.join(repr(a) for a in allowed)}")
    return by


@contextmanager
def reading(source: Source) -> Iterator[duckdb.DuckDBPyConnection]:
    """Yield a DuckDB connection from a connection (used as is) or a Store (its ``reader()``)."""
    if isinstance(source, duckdb.DuckDBPyConnection):
        yield source
        return
    reader = getattr(source, "reader", None)
    if reader is None:
        raise ConfigError(
            f"expected a DuckDB connection or a Store, got {type(source).__name__}: pass Store(path) or duckdb.connect(path)"
        )
    with reader() as con:
        yield con


# --- the query context -------------------------------------------------------------------


@dataclass(frozen=True)
class _Query:
    """Checked filters shared by every frame; ``params`` feeds the SQL's ``$names``."""

    gurus: list[str]
    tz: str
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    users: list[str] | None
    search: str | None
    include_deleted: bool
    freq: str = "D"
    week_start: int = 1

    @classmethod
    def build(
        cls,
        guru: str | Sequence[str],
        *,
        tz: str = "UTC",
        start: TimeLike = None,
        end: TimeLike = None,
        users: str | Sequence[str] | None = None,
        search: str | None = None,
        include_deleted: bool = False,
        freq: str = "D",
        week_start: str | int = "MON",
    ) -> _Query:
        tz = check_tz(tz)
        lo, hi = to_instant(start, tz, "start"), to_instant(end, tz, "end")
        if lo is not None and hi is not None and lo >= hi:
            raise ConfigError(
                f"start {start} is not before end {end}: swap them or widen the range"
            )
        if search is not None and not isinstance(search, str):
            raise ConfigError(f"search must be text, got {search!r}")
        needle = search.strip().lower() if search else None
        return cls(
            gurus=_gurus(guru),
            tz=tz,
            start=lo,
            end=hi,
            users=_users(users),
            search=needle or None,
            include_deleted=bool(include_deleted),
            freq=normalize_freq(freq),
            week_start=normalize_week_start(week_start),
        )

    @property
    def params(self) -> dict[str, Any]:
        return {
            "gurus": self.gurus,
            "tz": self.tz,
            "lo": None if self.start is None else self.start.to_pydatetime(),
            "hi": None if self.end is None else self.end.to_pydatetime(),
            "users": self.users,
            "search": self.search,
            "include_deleted": self.include_deleted,
        }

    def attrs(self, basis: str, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "basis": basis,
            "guru": self.gurus[0] if len(self.gurus) == 1 else list(self.gurus),
            "tz": self.tz,
            "start": None if self.start is None else self.start.tz_convert(self.tz).isoformat(),
            "end": None if self.end is None else self.end.tz_convert(self.tz).isoformat(),
        }
        out.update(extra)
        return out


_CACHE_TABLES = frozenset({"sessions", "observations", "session_users", "messages"})


def _check_gurus(con: duckdb.DuckDBPyConnection, q: _Query) -> str:
    """Raise NoDataError for a guru with no cached sessions; return the basis for the rest."""
    # Check the tables first: DuckDB would otherwise resolve a missing table name to a
    # Python variable of that name (a "replacement scan"), e.g. the function sessions().
    present = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = current_schema()"
        ).fetchall()
    }
    if not present >= _CACHE_TABLES:
        raise CacheSchemaError(
            "this database is not a guru_analytics cache (tables missing: "
            f"{', '.join(sorted(_CACHE_TABLES - present))}): run `guru-analytics sync GURU` to create one"
        )
    try:
        rows = con.execute(
            """
            SELECT g.guru,
                   (SELECT count(*) FROM sessions s WHERE s.guru = g.guru) AS n_sessions,
                   (SELECT count(*) FROM (SELECT 1 FROM messages m WHERE m.guru = g.guru LIMIT 1))
                       AS has_messages
            FROM (SELECT unnest($gurus::VARCHAR[]) AS guru) g
            """,
            {"gurus": q.gurus},
        ).fetchall()
    except duckdb.CatalogException as exc:
        raise CacheSchemaError(
            "this database is not a guru_analytics cache (no sessions table): run `guru-analytics sync GURU` to create one"
        ) from exc
    counts = {guru: (n, m) for guru, n, m in rows}
    for guru in q.gurus:
        if counts.get(guru, (0, 0))[0] == 0:
            raise NoDataError(
                f"no sessions cached for guru '{guru}': run `guru-analytics sync {guru}` first"
            )
    return BASIS_MESSAGES if any(m for _n, m in counts.values()) else BASIS_OBSERVATIONS


def _require_messages(q: _Query, basis: str) -> None:
    if basis != BASIS_MESSAGES:
        guru = q.gurus[0]
        raise NoDataError(
            f"no messages cached for guru '{guru}': run `guru-analytics sync {guru} --messages` first"
        )


# --- SQL building blocks ------------------------------------------------------------------


def _local_bucket_sql(local: str, freq: str, ws: int) -> str:
    """Start of the bucket holding naive local time ``local``, as naive local TIMESTAMP."""
    if freq == "W":
        return (
            f"CAST(CAST({local} AS DATE) - CAST((isodow({local}) - {ws} + 7) % 7 AS INTEGER)"
            " AS TIMESTAMP)"
        )
    part = {"D": "day", "M": "month", "Q": "quarter", "Y": "year"}[freq]
    return f"CAST(date_trunc('{part}', {local}) AS TIMESTAMP)"


def bucket_sql(ts: str, freq: str, ws: int = 1) -> str:
    """SQL for the start instant (TIMESTAMPTZ) of the ``$tz`` bucket holding instant ``ts``.

    Hours subtract the time since the local hour began from the instant (never truncate a
    naive local time, which would merge the two 02:00 hours of a fall-back night); longer
    buckets truncate the local wall time and map the local start back to an instant.
    """
    if freq == "H":
        return (
            f"({ts} - to_microseconds(((epoch_us(timezone($tz, {ts})) % {_HOUR_US})"
            f" + {_HOUR_US}) % {_HOUR_US}))"
        )
    return f"timezone($tz, {_local_bucket_sql(f'timezone($tz, {ts})', freq, ws)})"


def _series_sql(lo: str, hi: str, freq: str, ws: int) -> str:
    """SELECT of every bucket start ``b`` whose bucket meets [lo, hi) (both SQL scalars).

    Calendar buckets step through naive local time (so a DST day is still one step); hours
    sample the range every 15 minutes and keep the distinct hour buckets, which is exact for
    every zone whose offsets are multiples of 15 minutes.
    """
    last = f"(({hi}) - INTERVAL 1 microsecond)"
    if freq == "H":
        first = bucket_sql(f"({lo})", "H")
        return (
            f"SELECT DISTINCT {bucket_sql('x', 'H')} AS b FROM ("
            f"SELECT unnest(generate_series({first}, {last}, INTERVAL 15 minute)) AS x)"
        )
    a = _local_bucket_sql(f"timezone($tz, ({lo}))", freq, ws)
    z = _local_bucket_sql(f"timezone($tz, {last})", freq, ws)
    return (
        f"SELECT timezone($tz, x) AS b FROM ("
        f"SELECT unnest(generate_series({a}, {z}, {_SERIES_STEP[freq]})) AS x)"
    )


def _base_ctes(q: _Query) -> str:
    """CTEs shared by every frame: the selected sessions (``sel``), their user labels
    (``lab``: one row per session and user, ``(unattributed)`` when none), the selected keys
    (``ses``), all their activity events (``ev``: guru, id, ts; deduplicated, before any time
    range) and their stored messages (``msg``). Filters that are off add no SQL at all."""
    where = []
    if not q.include_deleted:
        where.append("NOT s.deleted")
    if q.search is not None:
        where.append("strpos(lower(coalesce(s.root_question_name, '')), $search) > 0")
    sel_where = f"WHERE {' AND '.join(where)}" if where else ""
    label = f"coalesce(u.external_user_id, '{UNATTRIBUTED}')"
    lab_where = f"WHERE list_contains($users::VARCHAR[], {label})" if q.users is not None else ""
    ses = "SELECT guru, id FROM sel" if q.users is None else "SELECT DISTINCT guru, id FROM lab"
    return f"""
g AS (SELECT DISTINCT unnest($gurus::VARCHAR[]) AS guru),
sel AS (SELECT s.* FROM sessions s JOIN g ON s.guru = g.guru {sel_where}),
lab AS (
    SELECT sel.guru, sel.id, {label} AS label
    FROM sel LEFT JOIN session_users u ON u.guru = sel.guru AND u.id = sel.id
    {lab_where}
),
ses AS ({ses}),
ev AS (
    SELECT o.guru, o.id, o.last_used AS ts
    FROM observations o SEMI JOIN ses ON o.guru = ses.guru AND o.id = ses.id
    UNION
    SELECT m.guru, m.session_id, m.date_created
    FROM messages m SEMI JOIN ses ON m.guru = ses.guru AND m.session_id = ses.id
),
msg AS (
    SELECT m.guru, m.session_id AS id, m.date_created AS ts, m.source, m.trust_score, m.user_vote
    FROM messages m SEMI JOIN ses ON m.guru = ses.guru AND m.session_id = ses.id
)"""


_IN_RANGE = "($lo IS NULL OR {ts} >= $lo) AND ($hi IS NULL OR {ts} < $hi)"


def _in_range(ts: str) -> str:
    return _IN_RANGE.format(ts=ts)


_PARAM_RE = re.compile(r"\$([a-z_]+)")


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """Run ``sql`` with just the ``$names`` it uses (DuckDB rejects unused parameters)."""
    used = set(_PARAM_RE.findall(sql))
    return con.execute(sql, {k: v for k, v in params.items() if k in used}).fetchdf()


def _run(con: duckdb.DuckDBPyConnection, sql: str, q: _Query) -> pd.DataFrame:
    return _execute(con, sql, q.params)


def _finish(df: pd.DataFrame, report: str, tz: str, attrs: dict[str, Any]) -> pd.DataFrame:
    """Cast every column to its documented dtype (timestamps into ``tz``) in documented order."""
    spec = [c for c in COLUMNS[report] if c.name in df.columns]
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in spec:
        s = df[col.name].reset_index(drop=True)
        if col.kind == "datetime":
            s = pd.to_datetime(s, utc=True).dt.tz_convert(tz).astype(f"datetime64[us, {tz}]")
        elif col.kind == "int":
            s = s.fillna(0).astype("int64")
        elif col.kind == "Int64":
            s = s.astype("Int64")
        elif col.kind == "float":
            s = s.astype("float64")
        elif col.kind == "bool":
            s = s.astype("bool")
        else:
            s = s.astype("str")
        out[col.name] = s
    out.attrs = attrs
    return out


# --- public frames -------------------------------------------------------------------------


def sessions(
    con: Source,
    guru: str | Sequence[str],
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    include_deleted: bool = False,
    tz: str = "UTC",
) -> pd.DataFrame:
    """One row per cached session, newest ``last_used`` first (see ``COLUMNS['sessions']``).

    ``start``/``end`` filter on the session's current ``last_used`` ([start, end)); ``users``
    keeps sessions of any of these ids (``"(unattributed)"`` selects sessions of no known
    user); ``search`` is a case-insensitive substring of the title.
    """
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted,
    )  # fmt: skip
    sql = f"""
    WITH {_base_ctes(q)},
    agg AS (SELECT guru, id, min(ts) AS first_event, max(ts) AS last_event, count(*) AS events
            FROM ev GROUP BY guru, id),
    mc AS (SELECT guru, id, count(*) AS messages FROM msg GROUP BY guru, id),
    lb AS (SELECT guru, id,
                  string_agg(label, '; ' ORDER BY label) AS users,
                  count(*) FILTER (WHERE label <> '{UNATTRIBUTED}') AS n_users
           FROM lab GROUP BY guru, id)
    SELECT s.guru, s.id, s.root_question_name AS title, s.root_question_slug AS slug,
           s.root_question_link AS link, lb.users, lb.n_users, s.first_seen, s.date_created,
           agg.first_event, agg.last_event, s.last_used, agg.events, mc.messages,
           s.deleted, s.deleted_at
    FROM sel s
    JOIN lb ON lb.guru = s.guru AND lb.id = s.id
    JOIN agg ON agg.guru = s.guru AND agg.id = s.id
    LEFT JOIN mc ON mc.guru = s.guru AND mc.id = s.id
    WHERE {_in_range("s.last_used")}
    ORDER BY s.last_used DESC, s.guru, s.id
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    return _finish(df, "sessions", q.tz, q.attrs(basis))


def activity(
    con: Source,
    guru: str | Sequence[str],
    freq: str = "D",
    tz: str = "UTC",
    by: str | None = None,
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    week_start: str | int = "MON",
    include_deleted: bool = False,
    wide: str | None = None,
) -> pd.DataFrame:
    """Activity per bucket (and per user or guru with ``by``), long format, one SQL query.

    Columns: ``bucket``, then ``user``/``guru`` when grouped, ``active_sessions``,
    ``new_sessions``, ``events``, ``active_users``, ``messages`` (see ``COLUMNS``). Every
    bucket of the range is present (zeros when idle); grouped results hold every bucket for
    every group active in the range, every user asked for in ``users`` and every guru asked
    for with ``by="guru"``. Sorted by
    bucket, then group. ``wide="events"`` (any metric) returns ``pivot_activity`` instead.
    """
    by = _by(by)
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip
    if wide is not None and wide not in _ACTIVITY_METRICS:
        raise ConfigError(f"unknown metric {wide!r}: use one of {', '.join(_ACTIVITY_METRICS)}")

    def b(ts: str) -> str:
        return bucket_sql(ts, q.freq, q.week_start)

    known = f"sl.label <> '{UNATTRIBUTED}'"
    if by == "user":
        # One pass over (session, bucket) × label: a shared session counts for each user.
        agg = f"""SELECT sl.label AS grp, sl.b, count(*) AS active_sessions,
                         count_if(sl.is_new) AS new_sessions, sum(sl.n) AS events,
                         max(CASE WHEN {known} THEN 1 ELSE 0 END) AS active_users
                  FROM sl GROUP BY ALL"""
        users_join = ""
    else:
        key = "''" if by is None else "sb.guru"
        agg = f"""SELECT {key} AS grp, sb.b, count(*) AS active_sessions,
                         count_if(sb.is_new) AS new_sessions, sum(sb.n) AS events
                  FROM sb GROUP BY ALL"""
        users_join = f""",
    au AS (SELECT grp, b, count(*) AS active_users FROM (
               SELECT DISTINCT {key.replace("sb.", "sl.")} AS grp, sl.b, sl.label
               FROM sl WHERE {known}) GROUP BY ALL)"""
    mgrp = {None: "''", "user": "lab.label", "guru": "mb.guru"}[by]
    mjoin = "JOIN lab ON lab.guru = mb.guru AND lab.id = mb.id" if by == "user" else ""
    # Groups asked for by name are shown even when idle: users= ids, or every guru slug.
    asked = "$users::VARCHAR[]" if by == "user" else "$gurus::VARCHAR[]"
    groups = (
        "SELECT '' AS grp"
        if by is None
        else f"SELECT grp FROM agg UNION SELECT unnest(coalesce({asked}, []::VARCHAR[]))"
    )
    au_col = "agg.active_users" if by == "user" else "au.active_users"
    au_join = "" if by == "user" else "LEFT JOIN au ON au.b = bk.b AND au.grp = grps.grp"
    sql = f"""
    WITH {_base_ctes(q)},
    rng AS (SELECT coalesce($lo::TIMESTAMPTZ, min(ts)) AS lo,
                   coalesce($hi::TIMESTAMPTZ, max(ts) + INTERVAL 1 microsecond) AS hi FROM ev),
    bk AS ({_series_sql("SELECT lo FROM rng", "SELECT hi FROM rng", q.freq, q.week_start)}),
    ew AS (SELECT guru, id, ts, min(ts) OVER (PARTITION BY guru, id) AS first_ts FROM ev),
    -- per session and bucket: events, and whether the session's first event ever is here
    sb AS (SELECT ew.guru, ew.id, {b("ew.ts")} AS b, count(*) AS n,
                  bool_or(ew.ts = ew.first_ts) AS is_new
           FROM ew, rng WHERE ew.ts >= rng.lo AND ew.ts < rng.hi GROUP BY ALL),
    sl AS (SELECT sb.*, lab.label FROM sb JOIN lab ON lab.guru = sb.guru AND lab.id = sb.id),
    agg AS ({agg}){users_join},
    mb AS (SELECT msg.guru, msg.id, {b("msg.ts")} AS b, count(*) AS n FROM msg, rng
           WHERE msg.ts >= rng.lo AND msg.ts < rng.hi GROUP BY ALL),
    mg AS (SELECT {mgrp} AS grp, mb.b, sum(mb.n) AS messages FROM mb {mjoin} GROUP BY ALL),
    grps AS ({groups})
    SELECT bk.b AS bucket, grps.grp,
           coalesce(agg.active_sessions, 0) AS active_sessions,
           coalesce(agg.new_sessions, 0) AS new_sessions,
           coalesce(agg.events, 0) AS events,
           coalesce({au_col}, 0) AS active_users,
           coalesce(mg.messages, 0) AS messages
    FROM bk CROSS JOIN grps
    LEFT JOIN agg ON agg.b = bk.b AND agg.grp = grps.grp
    {au_join}
    LEFT JOIN mg ON mg.b = bk.b AND mg.grp = grps.grp
    ORDER BY bk.b, grps.grp
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    df = df.drop(columns="grp") if by is None else df.rename(columns={"grp": by})
    if basis != BASIS_MESSAGES:
        df["messages"] = pd.NA
    out = _finish(
        df,
        "activity",
        q.tz,
        q.attrs(basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1], by=by),
    )
    return out if wide is None else pivot_activity(out, wide)


_ACTIVITY_METRICS = ("active_sessions", "new_sessions", "events", "active_users", "messages")


def pivot_activity(df: pd.DataFrame, metric: str = "active_sessions") -> pd.DataFrame:
    """Wide form of ``activity``: index ``bucket``, one column per user/guru (or ``metric``)."""
    if metric not in _ACTIVITY_METRICS:
        raise ConfigError(f"unknown metric {metric!r}: use one of {', '.join(_ACTIVITY_METRICS)}")
    group = next((g for g in ("user", "guru") if g in df.columns), None)
    if group is None:
        wide = df.set_index("bucket")[[metric]]
    else:
        wide = df.pivot(index="bucket", columns=group, values=metric).fillna(0)
        if df[metric].dtype.kind in "iu":
            wide = wide.astype("int64")
        wide.columns.name = group
    wide.attrs = {**df.attrs, "metric": metric}
    return wide


def users(
    con: Source,
    guru: str | Sequence[str],
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    include_deleted: bool = False,
    tz: str = "UTC",
    week_start: str | int = "MON",
) -> pd.DataFrame:
    """Per external user (and ``(unattributed)``, ranked like a user so it is never hidden).

    Only events inside [start, end) count. ``share`` divides by all sessions active in the
    range, so with sessions of several users the shares add up to more than 1. Sorted by
    ``rank`` then user.
    """
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, week_start=week_start,
    )  # fmt: skip
    day = "CAST(timezone($tz, ev.ts) AS DATE)"
    week = bucket_sql("ev.ts", "W", q.week_start)
    # Per session and local day first (few rows per session), then per user: no
    # count(DISTINCT ...) over all events.
    sql = f"""
    WITH {_base_ctes(q)},
    sd AS (SELECT ev.guru, ev.id, {day} AS day, {week} AS week, count(*) AS n,
                  min(ev.ts) AS f, max(ev.ts) AS l
           FROM ev WHERE {_in_range("ev.ts")} GROUP BY ALL),
    ss AS (SELECT guru, id, sum(n) AS n, min(f) AS f, max(l) AS l FROM sd GROUP BY guru, id),
    tot AS (SELECT count(*) AS n FROM ss),
    per AS (SELECT lab.label AS u, count(*) AS sessions, sum(ss.n) AS events,
                   min(ss.f) AS first_active, max(ss.l) AS last_active
            FROM ss JOIN lab ON lab.guru = ss.guru AND lab.id = ss.id GROUP BY lab.label),
    ud AS (SELECT DISTINCT lab.label AS u, sd.day, sd.week
           FROM sd JOIN lab ON lab.guru = sd.guru AND lab.id = sd.id),
    days AS (SELECT u, count(*) AS active_days, count(DISTINCT week) AS active_weeks
             FROM ud GROUP BY u)
    SELECT per.u AS user, sessions, events, first_active, last_active, active_days, active_weeks,
           sessions / (SELECT n FROM tot) AS share,
           rank() OVER (ORDER BY sessions DESC, events DESC) AS rank
    FROM per JOIN days ON days.u = per.u ORDER BY rank, user
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    return _finish(df, "users", q.tz, q.attrs(basis, week_start=_WEEKDAYS[q.week_start - 1]))


def _user_buckets_ctes(q: _Query, include_unattributed: bool) -> str:
    """CTEs ``span``, ``bk`` (bucket ``b`` with index ``idx`` over data ∪ range) and ``ui``
    (distinct user, bucket index of activity), over all history (the range only trims output)."""
    b = bucket_sql("ev.ts", q.freq, q.week_start)
    keep = "true" if include_unattributed else f"lab.label <> '{UNATTRIBUTED}'"
    return f"""
    ul AS (SELECT DISTINCT lab.label AS u, {b} AS b
           FROM ev JOIN lab ON lab.guru = ev.guru AND lab.id = ev.id WHERE {keep}),
    span AS (SELECT least(min(ev.ts), $lo::TIMESTAMPTZ) AS lo,
                    greatest(max(ev.ts) + INTERVAL 1 microsecond, $hi::TIMESTAMPTZ) AS hi
             FROM ev JOIN lab ON lab.guru = ev.guru AND lab.id = ev.id WHERE {keep}),
    bk AS (SELECT b, row_number() OVER (ORDER BY b) AS idx
           FROM ({_series_sql("SELECT lo FROM span", "SELECT hi FROM span", q.freq, q.week_start)})),
    ui AS (SELECT ul.u, bk.idx FROM ul JOIN bk ON bk.b = ul.b),
    shown AS (SELECT * FROM bk
              WHERE ($lo IS NULL OR b >= {bucket_sql("$lo::TIMESTAMPTZ", q.freq, q.week_start)})
                AND ($hi IS NULL OR b < $hi))"""


_UNATTRIBUTED_NOTE = (
    f"sessions of no known user ('{UNATTRIBUTED}') are left out of user counts; "
    "pass include_unattributed=True to count them as one pseudo-user"
)


def lifecycle(
    con: Source,
    guru: str | Sequence[str],
    freq: str = "W",
    tz: str = "UTC",
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    week_start: str | int = "MON",
    include_deleted: bool = False,
    include_unattributed: bool = False,
) -> pd.DataFrame:
    """Users per bucket split into new / returning / resurrected, and dormant as a negative.

    ``new`` is a user's first bucket ever; ``returning`` was active in the previous bucket
    too; ``resurrected`` was not, but was active before; ``dormant`` were active in the
    previous bucket and not in this one, reported as ``-count`` so it stacks below zero.
    ``new + returning + resurrected = active_users``. The whole history decides the
    categories; ``start``/``end`` only choose the buckets shown. ``(unattributed)`` is not a
    user and is left out unless ``include_unattributed=True`` (then it is one pseudo-user).
    """
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip
    sql = f"""
    WITH {_base_ctes(q)}, {_user_buckets_ctes(q, include_unattributed)},
    w AS (SELECT u, idx,
                 lag(idx) OVER (PARTITION BY u ORDER BY idx) AS prev_idx,
                 lead(idx) OVER (PARTITION BY u ORDER BY idx) AS next_idx,
                 min(idx) OVER (PARTITION BY u) AS first_idx
          FROM ui),
    act AS (SELECT idx, count(*) AS active_users,
                   count(*) FILTER (WHERE idx = first_idx) AS new_users,
                   count(*) FILTER (WHERE prev_idx = idx - 1) AS returning_users,
                   count(*) FILTER (WHERE idx <> first_idx AND prev_idx < idx - 1)
                       AS resurrected_users
            FROM w GROUP BY idx),
    dorm AS (SELECT idx + 1 AS idx, count(*) AS dormant FROM w
             WHERE next_idx IS NULL OR next_idx > idx + 1 GROUP BY 1)
    SELECT shown.b AS bucket,
           coalesce(act.active_users, 0) AS active_users,
           coalesce(act.new_users, 0) AS new_users,
           coalesce(act.returning_users, 0) AS returning_users,
           coalesce(act.resurrected_users, 0) AS resurrected_users,
           -coalesce(dorm.dormant, 0) AS dormant_users
    FROM shown LEFT JOIN act ON act.idx = shown.idx LEFT JOIN dorm ON dorm.idx = shown.idx
    ORDER BY shown.b
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    attrs = q.attrs(
        basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1],
        dormant_sign="negative",
        unattributed="included as one pseudo-user" if include_unattributed else _UNATTRIBUTED_NOTE,
    )  # fmt: skip
    return _finish(df, "lifecycle", q.tz, attrs)


def retention(
    con: Source,
    guru: str | Sequence[str],
    freq: str = "W",
    periods: int = 8,
    tz: str = "UTC",
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    week_start: str | int = "MON",
    include_deleted: bool = False,
    include_unattributed: bool = False,
) -> pd.DataFrame:
    """Cohort retention, long format: one row per (cohort, period) that has happened yet.

    A user's cohort is the bucket of their first event ever; ``users`` at ``period`` k are
    the cohort's users active in the k-th bucket after it; ``rate`` = users / cohort_size
    (1.0 at period 0). ``periods`` counts columns including period 0 (8 → periods 0..7).
    Periods after the last bucket of the data (or ``end``) are absent, not zero; the last
    bucket may be incomplete. ``start``/``end`` choose the cohorts shown.
    ``retention_matrix(df)`` pivots it. ``(unattributed)`` as in ``lifecycle``.
    """
    if isinstance(periods, bool) or not isinstance(periods, int | np.integer) or periods < 1:
        raise ConfigError(f"periods must be a positive integer, got {periods!r}")
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip
    sql = f"""
    WITH {_base_ctes(q)}, {_user_buckets_ctes(q, include_unattributed)},
    coh AS (SELECT u, min(idx) AS cidx FROM ui GROUP BY u),
    cs AS (SELECT cidx, count(*) AS cohort_size FROM coh GROUP BY cidx),
    per AS (SELECT coh.cidx, ui.idx - coh.cidx AS period, count(*) AS users
            FROM ui JOIN coh ON coh.u = ui.u WHERE ui.idx - coh.cidx < {int(periods)}
            GROUP BY ALL),
    grid AS (SELECT cs.cidx, cs.cohort_size, p.range AS period
             FROM cs CROSS JOIN range({int(periods)}) p
             WHERE cs.cidx + p.range <= (SELECT max(idx) FROM bk))
    SELECT shown.b AS cohort, grid.cohort_size, grid.period, pb.b AS bucket,
           coalesce(per.users, 0) AS users,
           coalesce(per.users, 0) / grid.cohort_size AS rate
    FROM grid JOIN shown ON shown.idx = grid.cidx
    JOIN bk pb ON pb.idx = grid.cidx + grid.period
    LEFT JOIN per ON per.cidx = grid.cidx AND per.period = grid.period
    ORDER BY cohort, period
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    attrs = q.attrs(
        basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1], periods=int(periods),
        unattributed="included as one pseudo-user" if include_unattributed else _UNATTRIBUTED_NOTE,
    )  # fmt: skip
    return _finish(df, "retention", q.tz, attrs)


def retention_matrix(df: pd.DataFrame, value: str = "rate") -> pd.DataFrame:
    """Cohort × period matrix of ``value`` ("rate" or "users"); NaN where not observed yet."""
    if value not in ("rate", "users"):
        raise ConfigError(f"unknown retention value {value!r}: use 'rate' or 'users'")
    wide = df.pivot(index="cohort", columns="period", values=value)
    wide.attrs = {**df.attrs, "value": value}
    return wide


_PERIOD_RE = re.compile(r"^\s*(\d+)\s*(h|hours?|d|days?|w|weeks?)\s*$", re.IGNORECASE)


def parse_period(period: str | timedelta | pd.Timedelta) -> pd.Timedelta:
    """``"7d"``, ``"24h"``, ``"4w"`` (or a timedelta) → a positive Timedelta."""
    if isinstance(period, timedelta | pd.Timedelta):
        td = pd.Timedelta(period)
    else:
        m = _PERIOD_RE.match(period) if isinstance(period, str) else None
        if m is None:
            raise ConfigError(
                f"unknown period {period!r}: use a count and unit such as 24h, 7d or 4w"
            )
        unit = m.group(2)[0].lower()
        td = pd.Timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[unit]: int(m.group(1))})
    if td <= pd.Timedelta(0):
        raise ConfigError(f"period {period!r} must be longer than zero")
    return td


_SUMMARY_METRICS = ("active_sessions", "new_sessions", "active_users", "events", "messages")


def summary(
    con: Source,
    guru: str | Sequence[str],
    period: str | timedelta = "7d",
    now: TimeLike = None,
    tz: str = "UTC",
    *,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    include_deleted: bool = False,
) -> pd.DataFrame:
    """Headline figures for [now - period, now) against the period before, like stat cards.

    One row per metric (``active_sessions``, ``new_sessions``, ``active_users``, ``events``,
    ``messages``) with ``current``, ``previous``, ``change`` and ``change_pct`` (empty when
    the previous value is 0). ``messages`` is empty when no messages are cached. ``now``
    defaults to the wall clock; pass it for a reproducible report.
    """
    q = _Query.build(guru, tz=tz, users=users, search=search, include_deleted=include_deleted)
    td = parse_period(period)
    end = to_instant(now, q.tz, "now") if now is not None else pd.Timestamp(utc_now())
    bounds = {
        "c_lo": (end - td).to_pydatetime(),
        "c_hi": end.to_pydatetime(),
        "p_lo": (end - 2 * td).to_pydatetime(),
    }
    win = """CASE WHEN {ts} >= $c_lo AND {ts} < $c_hi THEN 0
                  WHEN {ts} >= $p_lo AND {ts} < $c_lo THEN 1 END"""
    sql = f"""
    WITH {_base_ctes(q)},
    e AS (SELECT guru, id, {win.format(ts="ts")} AS k FROM ev),
    se AS (SELECT k, guru, id, count(*) AS n FROM e WHERE k IS NOT NULL GROUP BY ALL),
    f AS (SELECT {win.format(ts="min(ts)")} AS k FROM ev GROUP BY guru, id),
    m AS (SELECT {win.format(ts="ts")} AS k FROM msg),
    ks AS (SELECT * FROM (VALUES (0), (1)) t(k))
    SELECT ks.k,
        (SELECT count(*) FROM se WHERE se.k = ks.k) AS active_sessions,
        (SELECT count(*) FROM f WHERE f.k = ks.k) AS new_sessions,
        (SELECT count(DISTINCT lab.label) FROM se JOIN lab ON lab.guru = se.guru AND lab.id = se.id
          WHERE se.k = ks.k AND lab.label <> '{UNATTRIBUTED}') AS active_users,
        (SELECT coalesce(sum(n), 0) FROM se WHERE se.k = ks.k) AS events,
        (SELECT count(*) FROM m WHERE m.k = ks.k) AS messages
    FROM ks ORDER BY ks.k
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        raw = _execute(c, sql, {**q.params, **bounds})
    vals = raw.set_index("k")[list(_SUMMARY_METRICS)].T.astype("Int64")
    if basis != BASIS_MESSAGES:
        vals.loc["messages"] = pd.NA
    cur, prev = vals[0], vals[1]
    change = cur - prev
    pct = (change.astype("Float64") * 100 / prev.astype("Float64")).where(prev != 0)
    df = pd.DataFrame(
        {
            "metric": list(_SUMMARY_METRICS),
            "current": cur.to_numpy(),
            "previous": prev.to_numpy(),
            "change": change.to_numpy(),
            "change_pct": pct.astype("float64").to_numpy(),
            "current_start": end - td,
            "current_end": end,
            "previous_start": end - 2 * td,
            "previous_end": end - td,
            "basis": basis,
        }
    )
    return _finish(df, "summary", q.tz, q.attrs(basis, period=str(td), now=end.isoformat()))


def weekday_hour(
    con: Source,
    guru: str | Sequence[str],
    tz: str = "UTC",
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    include_deleted: bool = False,
    week_start: str | int = "MON",
) -> pd.DataFrame:
    """Events and active sessions per local weekday × hour: all 7 × 24 cells, rows ordered
    from ``week_start``. Local wall-clock hour, so the repeated 02:00 of a fall-back night
    lands in the same cell twice."""
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, week_start=week_start,
    )  # fmt: skip
    sql = f"""
    WITH {_base_ctes(q)},
    e AS (SELECT guru, id, isodow(timezone($tz, ts)) - 1 AS weekday,
                 hour(timezone($tz, ts)) AS hour FROM ev WHERE {_in_range("ts")}),
    agg AS (SELECT weekday, hour, count(*) AS events, count(DISTINCT (guru, id)) AS active_sessions
            FROM e GROUP BY ALL),
    cells AS (SELECT d.range AS weekday, h.range AS hour FROM range(7) d CROSS JOIN range(24) h)
    SELECT cells.weekday, cells.hour, coalesce(agg.events, 0) AS events,
           coalesce(agg.active_sessions, 0) AS active_sessions
    FROM cells LEFT JOIN agg ON agg.weekday = cells.weekday AND agg.hour = cells.hour
    ORDER BY (cells.weekday - {q.week_start - 1} + 7) % 7, cells.hour
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    df["weekday_name"] = np.array([d.title() for d in _WEEKDAYS])[df["weekday"].to_numpy()]
    return _finish(df, "heatmap", q.tz, q.attrs(basis, week_start=_WEEKDAYS[q.week_start - 1]))


def binge_length(
    con: Source,
    guru: str | Sequence[str],
    by: str | None = None,
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    include_deleted: bool = False,
) -> pd.DataFrame:
    """Messages per session (binge length) over sessions whose messages are stored.

    One row overall, or per user / guru with ``by`` (multi-user sessions count for each).
    ``start``/``end`` select sessions by their current ``last_used``. Needs messages
    (``sync --messages``): raises NoDataError when none are cached.
    """
    by = _by(by)
    q = _Query.build(
        guru, start=start, end=end, users=users, search=search, include_deleted=include_deleted
    )
    grp = {None: "''", "user": "lab.label", "guru": "x.guru"}[by]
    join_lab = "JOIN lab ON lab.guru = x.guru AND lab.id = x.id" if by == "user" else ""
    sql = f"""
    WITH {_base_ctes(q)},
    x AS (SELECT msg.guru, msg.id, count(*) AS n FROM msg
          JOIN sel ON sel.guru = msg.guru AND sel.id = msg.id
          WHERE {_in_range("sel.last_used")} GROUP BY ALL)
    SELECT {grp} AS grp, count(*) AS sessions, sum(x.n) AS messages, avg(x.n) AS mean,
           median(x.n) AS median, quantile_cont(x.n, 0.9) AS p90, max(x.n) AS max
    FROM x {join_lab} GROUP BY ALL ORDER BY sessions DESC, grp
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        _require_messages(q, basis)
        df = _run(c, sql, q)
    df = df.drop(columns="grp") if by is None else df.rename(columns={"grp": by})
    return _finish(df, "binge_length", q.tz, q.attrs("messages", by=by))


def _message_bucket_frame(
    con: Source, q: _Query, report: str, select: str, group: str | None
) -> pd.DataFrame:
    """Shared query for message-per-bucket frames (sources, votes) over a contiguous range."""
    b = bucket_sql("ts", q.freq, q.week_start)
    grp_col = f"{group}" if group else "''"
    sql = f"""
    WITH {_base_ctes(q)},
    rng AS (SELECT coalesce($lo::TIMESTAMPTZ, min(ts)) AS lo,
                   coalesce($hi::TIMESTAMPTZ, max(ts) + INTERVAL 1 microsecond) AS hi FROM msg),
    bk AS ({_series_sql("SELECT lo FROM rng", "SELECT hi FROM rng", q.freq, q.week_start)}),
    mb AS (SELECT *, {b} AS b, coalesce(source, '{UNKNOWN_SOURCE}') AS src FROM msg
           WHERE ts >= (SELECT lo FROM rng) AND ts < (SELECT hi FROM rng)),
    agg AS (SELECT b, {grp_col} AS grp, {select} FROM mb GROUP BY ALL),
    grps AS ({"SELECT DISTINCT grp FROM agg" if group else "SELECT '' AS grp"})
    SELECT bk.b AS bucket, grps.grp, agg.* EXCLUDE (b, grp)
    FROM bk CROSS JOIN grps LEFT JOIN agg ON agg.b = bk.b AND agg.grp = grps.grp
    ORDER BY bk.b, grps.grp
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        _require_messages(q, basis)
        df = _run(c, sql, q)
    df = df.rename(columns={"grp": "source"}) if group else df.drop(columns="grp")
    attrs = q.attrs("messages", freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1])
    return _finish(df, report, q.tz, attrs)


def sources(
    con: Source,
    guru: str | Sequence[str],
    freq: str = "D",
    tz: str = "UTC",
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    week_start: str | int = "MON",
    include_deleted: bool = False,
) -> pd.DataFrame:
    """Stored messages per bucket per source (long; every bucket × every source seen, zeros
    included). Needs messages: raises NoDataError when none are cached."""
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip
    return _message_bucket_frame(con, q, "sources", "count(*) AS messages", "src")


def votes(
    con: Source,
    guru: str | Sequence[str],
    freq: str = "D",
    tz: str = "UTC",
    *,
    start: TimeLike = None,
    end: TimeLike = None,
    users: str | Sequence[str] | None = None,
    search: str | None = None,
    week_start: str | int = "MON",
    include_deleted: bool = False,
) -> pd.DataFrame:
    """Votes and mean trust score of stored messages per bucket (every bucket present; the
    mean is empty where no message was scored). Needs messages."""
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip
    select = """count(*) AS messages,
        count(*) FILTER (WHERE lower(user_vote) = 'upvote') AS upvotes,
        count(*) FILTER (WHERE lower(user_vote) = 'downvote') AS downvotes,
        count(*) FILTER (WHERE user_vote IS NULL OR user_vote = '') AS no_vote,
        count(trust_score) AS scored,
        avg(trust_score) AS mean_trust_score"""
    df = _message_bucket_frame(con, q, "votes", select, None)
    return df


FRAMES = {
    "sessions": sessions,
    "activity": activity,
    "users": users,
    "lifecycle": lifecycle,
    "retention": retention,
    "summary": summary,
    "heatmap": weekday_hour,
    "binge_length": binge_length,
    "sources": sources,
    "votes": votes,
}
"""Report name → frame function (reports and the CLI dispatch on it)."""
