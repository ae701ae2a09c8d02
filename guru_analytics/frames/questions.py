"""Question frames (they need ``sync --questions``): every exported question, and its
sources, trust scores and unanswered share over time.

The rows come from Export Analytics (``questions`` table): minute resolution, up to 12
months back per export, one request for all of them. A row links to a session only through
the session id in its URL (follow-ups, and first questions of Slack/Discord/GitHub
sessions); first questions of web/widget/API sessions, questions asked outside any session
and questions the guru could not answer have none. So ``users=`` and ``search=`` (which
select sessions) keep only linked rows; without them every row counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from ..errors import NoDataError
from ._query import (
    _WEEKDAYS,
    QUESTIONS_FROM,
    Source,
    TimeLike,
    _base_ctes,
    _check_gurus,
    _execute,
    _finish,
    _in_range,
    _Query,
    _run,
    _series_sql,
    bucket_sql,
    plausible,
    reading,
)

LOW_TRUST = 0.5
"""A trust score below this counts as low in ``question_trust``."""


def _selected(q: _Query) -> str:
    """CTE ``qs``: the query's question rows (both kinds), before any time range.

    Linked rows of deleted sessions are left out unless ``include_deleted``; with ``users``
    or ``search`` only rows linked to a selected session stay."""
    keep = []
    if q.users is not None or q.search is not None:
        keep.append("EXISTS (SELECT 1 FROM ses WHERE ses.guru = x.guru AND ses.id = x.session_id)")
    if not q.include_deleted:
        keep.append("NOT coalesce(s.deleted, false)")
    where = f"WHERE {' AND '.join(keep)}" if keep else ""
    return f"""
qs AS (
    SELECT x.*, s.root_question_name AS title
    FROM {QUESTIONS_FROM} x
    JOIN g ON g.guru = x.guru
    LEFT JOIN sessions s ON s.guru = x.guru AND s.id = x.session_id
    {where}
)"""


def _require_questions(con: duckdb.DuckDBPyConnection, q: _Query) -> None:
    found = _execute(
        con,
        f"SELECT count(*) AS n FROM (SELECT 1 FROM {QUESTIONS_FROM} x "
        "WHERE list_contains($gurus::VARCHAR[], x.guru) LIMIT 1)",
        {"gurus": q.gurus},
    )
    if int(found["n"].iloc[0]) == 0:
        guru = q.gurus[0]
        raise NoDataError(
            f"no questions cached for guru '{guru}': run `guru-analytics sync {guru} --questions` first"
        )


def questions(
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
    """One row per exported question, oldest first (see ``COLUMNS['questions']``).

    ``start``/``end`` filter on the question's minute; ``users``/``search`` keep questions
    linked to a selected session. Needs questions: NoDataError when none are cached."""
    q = _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted,
    )  # fmt: skip
    sql = f"""
    WITH {_base_ctes(q)}, {_selected(q)}
    SELECT guru, asked_at, kind = 'answered' AS answered, source, question, trust_score,
           coalesce(follow_up, false) AS follow_up, session_id, title, url
    FROM qs WHERE {_in_range("asked_at")}
    ORDER BY asked_at, guru, kind, url, question
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        _require_questions(c, q)
        df = _run(c, sql, q)
    return _finish(df, "questions", q.tz, q.attrs(basis))


def _bucketed(con: Source, q: _Query, report: str, select: str, group: str | None) -> pd.DataFrame:
    """Question rows per bucket (and per ``group`` column), every bucket from the first to the
    last selected question (or ``start``/``end``), zeros included."""
    q.check_buckets()
    b = bucket_sql("asked_at", q.freq, q.week_start)
    grp = group or "''"
    sql = f"""
    WITH {_base_ctes(q)}, {_selected(q)},
    rng AS (SELECT coalesce($lo::TIMESTAMPTZ, min(asked_at) FILTER ({plausible("asked_at")})) AS lo,
                   coalesce($hi::TIMESTAMPTZ, max(asked_at) FILTER ({plausible("asked_at")})
                                              + INTERVAL 1 microsecond) AS hi
            FROM qs),
    bk AS ({_series_sql("SELECT lo FROM rng", "SELECT hi FROM rng", q.freq, q.week_start)}),
    qb AS (SELECT *, {b} AS b FROM qs
           WHERE asked_at >= (SELECT lo FROM rng) AND asked_at < (SELECT hi FROM rng)),
    agg AS (SELECT b, {grp} AS grp, {select} FROM qb GROUP BY ALL),
    grps AS ({"SELECT DISTINCT grp FROM agg" if group else "SELECT '' AS grp"})
    SELECT bk.b AS bucket, grps.grp, agg.* EXCLUDE (b, grp)
    FROM bk CROSS JOIN grps LEFT JOIN agg ON agg.b = bk.b AND agg.grp = grps.grp
    ORDER BY bk.b, grps.grp
    """
    with reading(con) as c:
        basis = _check_gurus(c, q)
        _require_questions(c, q)
        df = _run(c, sql, q)
    df = df.rename(columns={"grp": "source"}) if group else df.drop(columns="grp")
    attrs = q.attrs(basis, freq=q.freq, week_start=_WEEKDAYS[q.week_start - 1])
    return _finish(df, report, q.tz, attrs)


def _bucket_query(
    guru: str | Sequence[str],
    freq: str,
    tz: str,
    start: TimeLike,
    end: TimeLike,
    users: str | Sequence[str] | None,
    search: str | None,
    week_start: str | int,
    include_deleted: bool,
) -> _Query:
    return _Query.build(
        guru, tz=tz, start=start, end=end, users=users, search=search,
        include_deleted=include_deleted, freq=freq, week_start=week_start,
    )  # fmt: skip


def question_sources(
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
    """Exported questions per bucket per source (long; every bucket × every source seen)."""
    q = _bucket_query(guru, freq, tz, start, end, users, search, week_start, include_deleted)
    select = """count(*) FILTER (WHERE kind = 'answered') AS questions,
        count(*) FILTER (WHERE kind = 'answered' AND follow_up) AS follow_ups,
        count(*) FILTER (WHERE kind = 'unanswered') AS unanswered"""
    return _bucketed(con, q, "question_sources", select, "source")


def question_trust(
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
    """Trust scores of answered exported questions per bucket (mean, median, low-trust count)."""
    q = _bucket_query(guru, freq, tz, start, end, users, search, week_start, include_deleted)
    select = f"""count(*) FILTER (WHERE kind = 'answered') AS questions,
        count(trust_score) FILTER (WHERE kind = 'answered') AS scored,
        avg(trust_score) FILTER (WHERE kind = 'answered') AS mean_trust_score,
        median(trust_score) FILTER (WHERE kind = 'answered') AS median_trust_score,
        count(*) FILTER (WHERE kind = 'answered' AND trust_score < {LOW_TRUST}) AS low_trust"""
    return _bucketed(con, q, "question_trust", select, None)


def unanswered(
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
    """Answered and unable-to-answer questions per bucket, and the unanswered share.

    Unanswered rows name no session, so with ``users``/``search`` they are all left out."""
    q = _bucket_query(guru, freq, tz, start, end, users, search, week_start, include_deleted)
    select = """count(*) FILTER (WHERE kind = 'answered') AS questions,
        count(*) FILTER (WHERE kind = 'unanswered') AS unanswered,
        count(*) FILTER (WHERE kind = 'unanswered') / count(*) AS unanswered_share"""
    return _bucketed(con, q, "unanswered", select, None)
