"""The query builder every frame shares: checked filters, bucket SQL, the horizon, dtypes.

It turns the user's options (guru, tz, freq, start/end, users, search, ``now``) into a
``_Query`` and SQL fragments (the selected sessions and their events as CTEs, the start and
end of a bucket in any IANA zone), runs one statement and casts the result to the columns
the catalogue documents. The frames themselves live in ``activity``, ``people`` and
``messages``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from .. import catalog
from ..checks import guru_slug
from ..errors import CacheSchemaError, ConfigError, NoDataError
from ..store import UNATTRIBUTED
from ..timestamps import CLOCK_SKEW, EARLIEST_PLAUSIBLE, check_tz, instant, utc_now

BASIS_OBSERVATIONS = "observations"
BASIS_MESSAGES = "observations+messages"
BASIS_QUESTIONS = "observations+questions"
BASIS_MESSAGES_QUESTIONS = "observations+messages+questions"
UNKNOWN_SOURCE = "(unknown)"


class SupportsReader(Protocol):
    """Anything with a ``reader()`` context manager yielding a DuckDB connection (the Store)."""

    def reader(self) -> Any: ...


Source = duckdb.DuckDBPyConnection | SupportsReader
TimeLike = str | datetime | date | pd.Timestamp | None
Column = catalog.Column
COLUMNS: dict[str, list[Column]] = {name: list(r.columns) for name, r in catalog.REPORTS.items()}
"""Report name -> its documented columns (a view of ``catalog.REPORTS``)."""

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
_STEP = {
    "D": pd.DateOffset(days=1),
    "W": pd.DateOffset(days=7),
    "M": pd.DateOffset(months=1),
    "Q": pd.DateOffset(months=3),
    "Y": pd.DateOffset(years=1),
}
_SERIES_STEP = {
    "D": "INTERVAL 1 day",
    "W": "INTERVAL 7 day",
    "M": "INTERVAL 1 month",
    "Q": "INTERVAL 3 month",
    "Y": "INTERVAL 1 year",
}
# The most buckets a bucketed frame builds: hourly buckets from year 1 would need ~18 million
# rows per group (gigabytes); a real guru spans years at most (~40,000 hours since 2023).
MAX_BUCKETS = 200_000
# The shortest length of each bucket, to bound how many a range holds.
_MIN_BUCKET = {
    "H": timedelta(hours=1),
    "D": timedelta(days=1),
    "W": timedelta(days=7),
    "M": timedelta(days=28),
    "Q": timedelta(days=89),
    "Y": timedelta(days=365),
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
    if isinstance(value, str) and value.strip().lower() in NOW_WORDS:
        if value.strip().lower() == "latest":
            raise ConfigError(f"{name} 'latest' is only understood for now=: give a date or time")
        return parse_now(value, tz)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{name} {value!r} is not a date or time: use ISO 8601 such as 2025-03-30 or 2025-03-30T12:00+02:00"
        ) from exc
    if not isinstance(ts, pd.Timestamp):  # NaT
        raise ConfigError(f"{name} is empty: give an ISO 8601 date or time")
    if ts.tzinfo is None:
        try:
            ts = ts.tz_localize(tz, ambiguous="raise", nonexistent="shift_forward")
        except ValueError as exc:
            raise ConfigError(
                f"{name} {value!r} is ambiguous in {tz} (DST fall-back): add a UTC offset"
            ) from exc
    return ts.tz_convert("UTC")


NOW_WORDS = ("now", "today", "latest")


def parse_now(
    value: TimeLike,
    tz: str,
    latest: Callable[[], pd.Timestamp | None] | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
) -> pd.Timestamp | None:
    """The one reading of ``now`` everywhere (frames, ``Guru``, ``export``, the CLI).

    ``"now"`` is the current UTC instant (``clock()``), ``"today"`` the local midnight that
    began today in ``tz``, ``"latest"`` just after the newest activity event (``latest()``
    gives it; None when nothing is cached), anything else an instant as in ``to_instant``.
    """
    if isinstance(value, str) and value.strip().lower() in NOW_WORDS:
        word = value.strip().lower()
        if word == "latest":
            newest = latest() if latest is not None else None
            return None if newest is None else instant(newest + pd.Timedelta(microseconds=1))
        now_utc = instant(clock()).tz_convert("UTC")
        return now_utc if word == "now" else complete_until(now_utc, "D", tz)
    return to_instant(value, tz, "now")


def bucket_end(start: pd.Timestamp, freq: str) -> pd.Timestamp:
    """End (exclusive) of the bucket starting at tz-aware ``start``: an hour later, or the
    next local calendar start (a Berlin DST day is 23 or 25 hours)."""
    code = normalize_freq(freq)
    if code == "H":
        return instant(start + pd.Timedelta(hours=1))
    return start + _STEP[code]


def complete_until(
    horizon: TimeLike, freq: str, tz: str, week_start: str | int = "MON"
) -> pd.Timestamp:
    """Start (UTC) of the bucket holding ``horizon``: every bucket before it is complete, so
    it is the ``now`` that compares whole periods only (the demo's summary, the dashboard)."""
    code, tz = normalize_freq(freq), check_tz(tz)
    at = to_instant(horizon, tz, "horizon")
    if at is None:
        raise ConfigError("complete_until needs a horizon instant")
    local = at.tz_convert(tz)
    if code == "H":
        since = pd.Timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        return instant(local - since).tz_convert("UTC")
    day = local.tz_localize(None).normalize()
    if code == "W":
        day = instant(
            day - pd.Timedelta(days=(day.isoweekday() - normalize_week_start(week_start)) % 7)
        )
    elif code == "M":
        day = day.replace(day=1)
    elif code == "Q":
        day = day.replace(month=3 * ((day.month - 1) // 3) + 1, day=1)
    elif code == "Y":
        day = day.replace(month=1, day=1)
    return day.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")


def _gurus(guru: str | Sequence[str]) -> list[str]:
    items = [guru] if isinstance(guru, str) else list(guru) if guru is not None else []
    if not items:
        raise ConfigError(f"guru must be a slug or a list of slugs, got {guru!r}")
    return list(dict.fromkeys(guru_slug(g) for g in items))


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

    def check_buckets(self) -> None:
        """Refuse a range too long for the bucket size (``MAX_BUCKETS``) before querying.

        An open end is bounded by what can be in the cache (``plausible``), so this is an
        upper bound on the buckets the frame builds."""
        lo = self.start if self.start is not None else instant(EARLIEST_PLAUSIBLE)
        hi = self.end if self.end is not None else instant(utc_now() + CLOCK_SKEW)
        if hi <= lo:
            return
        # Python datetimes: years 1-9999 fit, where nanosecond Timedeltas overflow
        span = hi.to_pydatetime() - lo.to_pydatetime()
        n = span // _MIN_BUCKET[self.freq] + 1
        if n > MAX_BUCKETS:
            raise ConfigError(
                f"{lo.date()} to {hi.date()} in {FREQ_NAMES[self.freq]}s is about {n:,} "
                f"buckets, more than {MAX_BUCKETS:,}: narrow --start/--end or use a coarser "
                "--freq"
            )

    @property
    def params(self) -> dict[str, Any]:
        return {
            **_plausible_params(),
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
    has_messages = any(m for _n, m in counts.values())
    has_questions = "questions" in present and bool(
        con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM questions WHERE list_contains($gurus::VARCHAR[], "
            "guru) AND session_id IS NOT NULL LIMIT 1)",
            {"gurus": q.gurus},
        ).fetchall()[0][0]
    )
    return basis_of(has_messages, has_questions)


def basis_of(messages: bool, questions: bool) -> str:
    """The ``basis`` attribute: which event sources besides observations were used."""
    return "+".join(
        ["observations", *(["messages"] if messages else []), *(["questions"] if questions else [])]
    )


def uses(basis: str, source: str) -> bool:
    """Whether ``basis`` (``observations+messages+questions``...) includes ``source``."""
    return source in basis.split("+")


# Exported questions (``questions``, schema v4) are read through this text, which
# ``_execute`` swaps for an empty typed row set on a cache without the table (a file written
# before v4 read through a raw connection, or a test cache built from ``SCHEMA_V1``).
QUESTIONS_FROM = "(SELECT guru, kind, asked_at, source, question, trust_score, follow_up, url, session_id FROM questions)"
_NO_QUESTIONS = (
    "(SELECT NULL::VARCHAR AS guru, NULL::VARCHAR AS kind, NULL::TIMESTAMPTZ AS asked_at, "
    "NULL::VARCHAR AS source, NULL::VARCHAR AS question, NULL::DOUBLE AS trust_score, "
    "NULL::BOOLEAN AS follow_up, NULL::VARCHAR AS url, NULL::VARCHAR AS session_id WHERE false)"
)


def _has_questions_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'questions' "
            "AND database_name = current_database() AND schema_name = current_schema()"
        ).fetchall()[0][0]
    )


def _plausible_params() -> dict[str, Any]:
    return {"earliest": EARLIEST_PLAUSIBLE, "ceiling": utc_now() + CLOCK_SKEW}


def plausible(ts: str) -> str:
    """SQL for "instant ``ts`` can be true": from 2023 (Gurubase) to a day after now. A
    ``last_used`` outside (a hostile or broken server's 9999 or year 1) is kept in the cache
    but never sets a default range or the horizon, which would stretch every report."""
    return f"({ts} >= $earliest::TIMESTAMPTZ AND {ts} <= $ceiling::TIMESTAMPTZ)"


def _newest_event(con: duckdb.DuckDBPyConnection, q: _Query) -> pd.Timestamp | None:
    """The newest plausible activity event of the query's gurus (of any user, any title;
    deleted sessions only with ``include_deleted``): what ``now="latest"`` means."""
    # An anti join against the (few) deleted sessions, not a join with every session: the
    # horizon is read by every bucketed frame and must stay a small part of it.
    gone = (
        "(SELECT guru, id FROM sessions WHERE false)"
        if q.include_deleted
        else "(SELECT guru, id FROM sessions WHERE deleted)"
    )
    # Linked question rows count only for sessions the cache knows (as in ``ev``).
    frame = _execute(
        con,
        f"""SELECT greatest(
               (SELECT max(o.last_used) FROM observations o
                ANTI JOIN {gone} d ON d.guru = o.guru AND d.id = o.id
                WHERE list_contains($gurus::VARCHAR[], o.guru) AND {plausible("o.last_used")}),
               (SELECT max(m.date_created) FROM messages m
                ANTI JOIN {gone} d ON d.guru = m.guru AND d.id = m.session_id
                WHERE list_contains($gurus::VARCHAR[], m.guru)
                  AND {plausible("m.date_created")}),
               (SELECT max(x.asked_at) FROM {QUESTIONS_FROM} x
                SEMI JOIN sessions s ON s.guru = x.guru AND s.id = x.session_id
                ANTI JOIN {gone} d ON d.guru = x.guru AND d.id = x.session_id
                WHERE list_contains($gurus::VARCHAR[], x.guru)
                  AND {plausible("x.asked_at")})) AS newest""",
        {"gurus": q.gurus, **_plausible_params()},
    )
    value = frame["newest"].iloc[0] if len(frame) else None
    if value is not None and pd.isna(value):
        value = None
    return None if value is None else instant(value).tz_convert("UTC")


def _last_sync_end(con: duckdb.DuckDBPyConnection, gurus: list[str]) -> pd.Timestamp | None:
    """End of the newest successful sync of every guru (the earliest of them), or None if a
    guru never finished one (a cache filled by ``Store.load_frame``)."""
    try:
        row = con.execute(
            """SELECT min(e), count(e) FROM (
                   SELECT g.guru, (SELECT max(r.ended_at) FROM sync_runs r
                                   WHERE r.guru = g.guru AND r.outcome = 'ok') AS e
                   FROM (SELECT unnest($gurus::VARCHAR[]) AS guru) g)""",
            {"gurus": gurus},
        ).fetchone()
    except duckdb.CatalogException:  # a cache written without the run ledger
        return None
    if row is None or row[0] is None or row[1] < len(gurus):
        return None
    return instant(row[0]).tz_convert("UTC")


def _horizon(con: duckdb.DuckDBPyConnection, q: _Query, now: TimeLike) -> pd.Timestamp | None:
    """The instant up to which the data is taken as complete: ``now`` if given (read by
    ``parse_now``), else the end of the last successful sync, never before just after the
    newest event. (The server's clock at the sync would be better; the store does not keep
    it yet, and the client's clock at the end of the run is the nearest fact it keeps.)"""
    if now is not None:
        return parse_now(now, q.tz, lambda: _newest_event(con, q))
    newest = _newest_event(con, q)
    after = None if newest is None else instant(newest + pd.Timedelta(microseconds=1))
    ended = _last_sync_end(con, q.gurus)
    if ended is None or (after is not None and after > ended):
        return after
    return ended


def _require_messages(q: _Query, basis: str) -> None:
    if not uses(basis, "messages"):
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
    range) and their stored messages (``msg``). Filters that are off add no SQL at all.

    Exported questions linked to a selected session join ``ev`` at their minute, except where
    the session has an observation or a message in that same minute: the export has no
    seconds, so a message at 10:23:27.5 (or a listing's ``last_used`` then) and its exported
    question at 10:23 are one question, counted once at the more precise instant."""
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
ev0 AS (
    SELECT o.guru, o.id, o.last_used AS ts
    FROM observations o SEMI JOIN ses ON o.guru = ses.guru AND o.id = ses.id
    UNION
    SELECT m.guru, m.session_id, m.date_created
    FROM messages m SEMI JOIN ses ON m.guru = ses.guru AND m.session_id = ses.id
),
ev AS (
    SELECT guru, id, ts FROM ev0
    UNION
    SELECT x.guru, x.session_id, x.asked_at
    FROM {QUESTIONS_FROM} x SEMI JOIN ses ON x.guru = ses.guru AND x.session_id = ses.id
    ANTI JOIN (SELECT DISTINCT guru, id, date_trunc('minute', ts) AS minute FROM ev0) e0
        ON e0.guru = x.guru AND e0.id = x.session_id AND e0.minute = x.asked_at
    WHERE x.kind = 'answered'
),
msg AS (
    SELECT m.guru, m.session_id AS id, m.date_created AS ts, m.source, m.trust_score, m.user_vote
    FROM messages m SEMI JOIN ses ON m.guru = ses.guru AND m.session_id = ses.id
)"""


def bucket_end_sql(b: str, freq: str) -> str:
    """SQL for the end instant of the ``$tz`` bucket starting at instant ``b`` (an hour
    later, or the next local calendar start; the SQL twin of ``bucket_end``)."""
    if freq == "H":
        return f"({b} + INTERVAL 1 hour)"
    return f"timezone($tz, timezone($tz, {b}) + {_SERIES_STEP[freq]})"


def complete_sql(b: str, freq: str) -> str:
    """SQL for "the bucket starting at ``b`` has ended by ``$horizon``" (NULL horizon: no data)."""
    return f"coalesce({bucket_end_sql(b, freq)} <= $horizon::TIMESTAMPTZ, false)"


_IN_RANGE = "($lo IS NULL OR {ts} >= $lo) AND ($hi IS NULL OR {ts} < $hi)"


def _in_range(ts: str) -> str:
    return _IN_RANGE.format(ts=ts)


_PARAM_RE = re.compile(r"\$([a-z_]+)")


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    """Run ``sql`` with just the ``$names`` it uses (DuckDB rejects unused parameters); on a
    cache without the ``questions`` table, its reads see no rows (``QUESTIONS_FROM``)."""
    if QUESTIONS_FROM in sql and not _has_questions_table(con):
        sql = sql.replace(QUESTIONS_FROM, _NO_QUESTIONS)
    used = set(_PARAM_RE.findall(sql))
    return con.execute(sql, {k: v for k, v in params.items() if k in used}).fetchdf()


def _run(con: duckdb.DuckDBPyConnection, sql: str, q: _Query, **extra: Any) -> pd.DataFrame:
    """Run ``sql`` with the query's parameters (``extra`` adds e.g. ``horizon``)."""
    params = {**q.params, **{k: _py(v) for k, v in extra.items()}}
    return _execute(con, sql, params)


def _py(value: Any) -> Any:
    return value.to_pydatetime() if isinstance(value, pd.Timestamp) else value


def _finish(df: pd.DataFrame, report: str, tz: str, attrs: Mapping[str, Any]) -> pd.DataFrame:
    """Cast every column to its documented dtype (timestamps into ``tz``) in documented order."""
    spec = [c for c in catalog.REPORTS[report].columns if c.name in df.columns]
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
    out.attrs.update(attrs.items())
    return out


def _horizon_attrs(horizon: pd.Timestamp | None, tz: str) -> dict[str, Any]:
    return {"horizon": None if horizon is None else horizon.tz_convert(tz).isoformat()}
