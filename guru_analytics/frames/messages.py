"""Message frames (they need ``sync --messages``): binge length, sources and votes.

Message-per-bucket frames zero-fill over the same range as ``activity`` (first to last
activity event, or ``start``/``end``), so their buckets line up with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ._query import (
    _WEEKDAYS,
    UNKNOWN_SOURCE,
    Source,
    TimeLike,
    _base_ctes,
    _by,
    _check_gurus,
    _finish,
    _in_range,
    _Query,
    _require_messages,
    _run,
    _series_sql,
    bucket_sql,
    plausible,
    reading,
)


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
    """Shared query for message-per-bucket frames (sources, votes): every bucket from the
    first to the last activity EVENT (as ``activity``), not message, so buckets line up."""
    q.check_buckets()
    b = bucket_sql("ts", q.freq, q.week_start)
    grp_col = f"{group}" if group else "''"
    sql = f"""
    WITH {_base_ctes(q)},
    rng AS (SELECT coalesce($lo::TIMESTAMPTZ, min(ts) FILTER ({plausible("ts")})) AS lo,
                   coalesce($hi::TIMESTAMPTZ,
                            max(ts) FILTER ({plausible("ts")}) + INTERVAL 1 microsecond) AS hi
            FROM ev),
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
