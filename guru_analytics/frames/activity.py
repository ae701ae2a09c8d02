"""Session-level frames: sessions, activity per bucket, summary cards, weekday x hour.

Each is one DuckDB statement over the cache built by ``_query``; ``top_n`` and
``pivot_activity`` reshape an ``activity`` frame for charts and tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pandas as pd

from ..checks import whole_number
from ..errors import ConfigError
from ..store import UNATTRIBUTED
from ._query import (
    _WEEKDAYS,
    Source,
    TimeLike,
    _base_ctes,
    _by,
    _check_gurus,
    _execute,
    _finish,
    _horizon,
    _horizon_attrs,
    _in_range,
    _newest_event,
    _py,
    _Query,
    _run,
    _series_sql,
    bucket_sql,
    complete_sql,
    parse_now,
    reading,
    uses,
)

OTHER = "other"


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
    now: TimeLike = None,
) -> pd.DataFrame:
    """Activity per bucket (and per user or guru with ``by``), long format, one SQL query.

    Columns: ``bucket``, then ``user``/``guru`` when grouped, ``active_sessions``,
    ``new_sessions``, ``events``, ``active_users`` (not with ``by="user"``), ``messages``
    and ``complete`` (see ``COLUMNS``): a bucket is complete once it ended by the data's
    horizon, ``now`` (``parse_now``) or else the end of the last sync. Every
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
    if wide == "active_users" and by == "user":
        raise ConfigError(_PER_USER_ACTIVE_USERS)

    def b(ts: str) -> str:
        return bucket_sql(ts, q.freq, q.week_start)

    known = f"sl.label <> '{UNATTRIBUTED}'"
    if by == "user":
        # One pass over (session, bucket) × label: a shared session counts for each user.
        agg = """SELECT sl.label AS grp, sl.b, count(*) AS active_sessions,
                         count_if(sl.is_new) AS new_sessions, sum(sl.n) AS events
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
    # Per user, "distinct known users active" is only 0 or 1: the column is left out.
    au_col = "" if by == "user" else "coalesce(au.active_users, 0) AS active_users,"
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
           {au_col}
           coalesce(mg.messages, 0) AS messages,
           {complete_sql("bk.b", q.freq)} AS complete
    FROM bk CROSS JOIN grps
    LEFT JOIN agg ON agg.b = bk.b AND agg.grp = grps.grp
    {au_join}
    LEFT JOIN mg ON mg.b = bk.b AND mg.grp = grps.grp
    ORDER BY bk.b, grps.grp
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        horizon = _horizon(c, q, now)
        df = _run(c, sql, q, horizon=horizon)
    df = df.drop(columns="grp") if by is None else df.rename(columns={"grp": by})
    if not uses(basis, "messages"):
        df["messages"] = pd.NA
    attrs = q.attrs(basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1], by=by)
    out = _finish(df, "activity", q.tz, {**attrs, **_horizon_attrs(horizon, q.tz)})
    return out if wide is None else pivot_activity(out, wide)


_ACTIVITY_METRICS = ("active_sessions", "new_sessions", "events", "active_users", "messages")


_PER_USER_ACTIVE_USERS = (
    "active_users is not defined per user (it would only say whether the row is active): "
    "use active_sessions, or activity without by='user'"
)


def pivot_activity(df: pd.DataFrame, metric: str = "active_sessions") -> pd.DataFrame:
    """Wide form of ``activity``: index ``bucket``, one column per user/guru (or ``metric``)."""
    if metric not in _ACTIVITY_METRICS:
        raise ConfigError(f"unknown metric {metric!r}: use one of {', '.join(_ACTIVITY_METRICS)}")
    if metric == "active_users" and "user" in df.columns:
        raise ConfigError(_PER_USER_ACTIVE_USERS)
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


def top_n(df: pd.DataFrame, metric: str, n: int, group: str | None = None) -> pd.DataFrame:
    """Wide bucket x series table of a grouped bucket frame: the ``n`` groups with the
    largest ``metric`` total, the rest summed as ``"other"``, and ``"(unattributed)"``
    always apart as its own last series (it is not a person, so it never takes a top place).

    Tie-break: equal totals are ordered by group name (ascending), so the choice and the
    order never depend on row order. Index: ``bucket`` (sorted); columns: the kept groups
    by total, then ``other`` (when anything was summed), then ``(unattributed)`` (when
    present). Used by ``plots`` and the dashboard alike.
    """
    n = whole_number(n, "top", minimum=1)
    if group is None:
        group = next((g for g in ("user", "guru", "source") if g in df.columns), None)
    if group is None or group not in df.columns or metric not in df.columns:
        raise ConfigError(f"top_n needs a frame grouped by user, guru or source with {metric!r}")
    totals = df.groupby(group)[metric].sum().reset_index()
    totals = totals[totals[group] != UNATTRIBUTED]
    totals = totals.sort_values([metric, group], ascending=[False, True], kind="stable")
    keep = list(totals[group].iloc[:n])
    labels = df[group].where(df[group].isin([*keep, UNATTRIBUTED]), OTHER)
    wide = (
        df.assign(_g=labels)
        .pivot_table(index="bucket", columns="_g", values=metric, aggfunc="sum", fill_value=0)
        .sort_index()
    )
    order = keep + [c for c in (OTHER, UNATTRIBUTED) if c in wide.columns and c not in keep]
    wide = wide[order]
    wide.columns.name = group
    return wide


_PERIOD_RE = re.compile(r"^\s*(\d+)\s*(h|hours?|d|days?|w|weeks?)\s*$", re.IGNORECASE)


def parse_period(period: str | timedelta | pd.Timedelta) -> pd.Timedelta:
    """``"7d"``, ``"24h"``, ``"4w"`` (or a timedelta) → a positive Timedelta."""
    if isinstance(period, timedelta):  # pd.Timedelta is a timedelta
        td = pd.to_timedelta(period)
    else:
        m = _PERIOD_RE.match(period) if isinstance(period, str) else None
        if m is None:
            raise ConfigError(
                f"unknown period {period!r}: use a count and unit such as 24h, 7d or 4w"
            )
        unit = {"h": "hours", "d": "days", "w": "weeks"}[m.group(2)[0].lower()]
        td = pd.to_timedelta(timedelta(**{unit: int(m.group(1))}))
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
    is read by ``parse_now``: ``"now"`` (the default, the current UTC instant), ``"today"``
    (local midnight in ``tz``), ``"latest"`` (just after the newest event) or an instant;
    pass one for a reproducible report.
    """
    q = _Query.build(guru, tz=tz, users=users, search=search, include_deleted=include_deleted)
    td = parse_period(period)
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
        end = parse_now("now" if now is None else now, q.tz, lambda: _newest_event(c, q))
        assert end is not None  # _check_gurus found sessions, so there is a newest event
        bounds = {"c_lo": end - td, "c_hi": end, "p_lo": end - 2 * td}
        raw = _execute(c, sql, {**q.params, **{k: _py(v) for k, v in bounds.items()}})
    vals = raw.set_index("k")[list(_SUMMARY_METRICS)].T.astype("Int64")
    if not uses(basis, "messages"):
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
