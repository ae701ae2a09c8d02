"""People frames: one row per user (ranked), user lifecycle per bucket, cohort retention.

A person is a known external user id; ``(unattributed)`` (sessions of no known user) is kept
apart: never ranked in ``users``, left out of ``lifecycle``/``retention`` unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..checks import whole_number
from ..errors import ConfigError
from ..store import UNATTRIBUTED
from ._query import (
    _WEEKDAYS,
    Source,
    TimeLike,
    _base_ctes,
    _check_gurus,
    _finish,
    _horizon,
    _horizon_attrs,
    _in_range,
    _Query,
    _run,
    _series_sql,
    bucket_sql,
    complete_sql,
    plausible,
    reading,
)


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
    """Per known external user, ranked, then ``(unattributed)`` as its own unranked row.

    Only events inside [start, end) count. ``rank`` orders known users by sessions, then
    events (ties share a rank and the next one skips: 33, 33, 35); ``share`` of a known user
    divides by the active sessions that have at least one known user (a session of several
    users counts for each, so shares can add up to more than 1). ``(unattributed)`` has no
    rank and its share is of all active sessions. Sorted by ``rank``, then user.
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
    kn AS (SELECT count(*) AS n FROM ss SEMI JOIN lab
           ON lab.guru = ss.guru AND lab.id = ss.id AND lab.label <> '{UNATTRIBUTED}'),
    per AS (SELECT lab.label AS u, count(*) AS sessions, sum(ss.n) AS events,
                   min(ss.f) AS first_active, max(ss.l) AS last_active
            FROM ss JOIN lab ON lab.guru = ss.guru AND lab.id = ss.id GROUP BY lab.label),
    ud AS (SELECT DISTINCT lab.label AS u, sd.day, sd.week
           FROM sd JOIN lab ON lab.guru = sd.guru AND lab.id = sd.id),
    days AS (SELECT u, count(*) AS active_days, count(DISTINCT week) AS active_weeks
             FROM ud GROUP BY u)
    SELECT per.u AS user, sessions, events, first_active, last_active, active_days, active_weeks,
           CASE WHEN per.u = '{UNATTRIBUTED}' THEN sessions / (SELECT n FROM tot)
                ELSE sessions / (SELECT n FROM kn) END AS share,
           CASE WHEN per.u <> '{UNATTRIBUTED}' THEN rank() OVER (
               PARTITION BY per.u = '{UNATTRIBUTED}' ORDER BY sessions DESC, events DESC)
           END AS rank
    FROM per JOIN days ON days.u = per.u ORDER BY rank NULLS LAST, user
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        df = _run(c, sql, q)
    return _finish(df, "users", q.tz, q.attrs(basis, week_start=_WEEKDAYS[q.week_start - 1]))


def _user_buckets_ctes(q: _Query, include_unattributed: bool) -> str:
    """CTEs ``span``, ``bk`` (bucket ``b`` with index ``idx`` over data ∪ range) and ``ui``
    (distinct user, bucket index of activity), over all history (the range only trims output).
    Checks the range's bucket count first (``_Query.check_buckets``)."""
    q.check_buckets()
    b = bucket_sql("ev.ts", q.freq, q.week_start)
    keep = "true" if include_unattributed else f"lab.label <> '{UNATTRIBUTED}'"
    return f"""
    ul AS (SELECT DISTINCT lab.label AS u, {b} AS b
           FROM ev JOIN lab ON lab.guru = ev.guru AND lab.id = ev.id WHERE {keep}),
    span AS (SELECT least(min(ev.ts) FILTER ({plausible("ev.ts")}), $lo::TIMESTAMPTZ) AS lo,
                    greatest(max(ev.ts) FILTER ({plausible("ev.ts")}) + INTERVAL 1 microsecond,
                             $hi::TIMESTAMPTZ) AS hi
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
    now: TimeLike = None,
) -> pd.DataFrame:
    """Users per bucket split into new / returning / resurrected, and dormant as a negative.

    ``new`` is a user's first bucket ever; ``returning`` was active in the previous bucket
    too; ``resurrected`` was not, but was active before; ``dormant`` were active in the
    previous bucket and not in this one, reported as ``-count`` so it stacks below zero.
    ``new + returning + resurrected = active_users``. The whole history decides the
    categories; ``start``/``end`` only choose the buckets shown. ``(unattributed)`` is not a
    user and is left out unless ``include_unattributed=True`` (then it is one pseudo-user).
    ``complete`` is false for a bucket that had not ended by the horizon (``now``, else the
    end of the last sync; see ``activity``): its counts are still growing.
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
           -coalesce(dorm.dormant, 0) AS dormant_users,
           {complete_sql("shown.b", q.freq)} AS complete
    FROM shown LEFT JOIN act ON act.idx = shown.idx LEFT JOIN dorm ON dorm.idx = shown.idx
    ORDER BY shown.b
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        horizon = _horizon(c, q, now)
        df = _run(c, sql, q, horizon=horizon)
    attrs = q.attrs(
        basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1],
        dormant_sign="negative", **_horizon_attrs(horizon, q.tz),
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
    now: TimeLike = None,
) -> pd.DataFrame:
    """Cohort retention, long format: one row per (cohort, period) that has happened yet.

    A user's cohort is the bucket of their first event ever; ``users`` at ``period`` k are
    the cohort's users active in the k-th bucket after it; ``rate`` = users / cohort_size
    (1.0 at period 0). ``periods`` counts columns including period 0 (8 → periods 0..7).
    Periods after the last bucket of the data (or ``end``) are absent, not zero. A period
    whose bucket had not ended by the horizon (``now``, else the end of the last sync) has
    ``complete`` false and an empty ``rate`` (``users`` so far is kept): a partial week
    would read low. ``start``/``end`` choose the cohorts shown.
    ``retention_matrix(df)`` pivots it. ``(unattributed)`` as in ``lifecycle``.
    """
    periods = whole_number(periods, "periods", minimum=1)
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
           CASE WHEN {complete_sql("pb.b", q.freq)}
                THEN coalesce(per.users, 0) / grid.cohort_size END AS rate,
           {complete_sql("pb.b", q.freq)} AS complete
    FROM grid JOIN shown ON shown.idx = grid.cidx
    JOIN bk pb ON pb.idx = grid.cidx + grid.period
    LEFT JOIN per ON per.cidx = grid.cidx AND per.period = grid.period
    ORDER BY cohort, period
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        horizon = _horizon(c, q, now)
        df = _run(c, sql, q, horizon=horizon)
    attrs = q.attrs(
        basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1], periods=int(periods),
        **_horizon_attrs(horizon, q.tz),
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
