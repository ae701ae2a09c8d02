"""The catalogue: every report and chart named once, with what it needs and what it returns.

A ``Report`` names its frame function in ``guru_analytics.frames`` (by name, so this module
imports nothing of the package and anything can read it), its columns, the options it takes
and the outputs the demo writes of it. A ``Chart`` names the report whose frame it draws, its
plot function in ``guru_analytics.plots`` and its drawing options. The CLI's choices and
option checks, ``Guru``'s tz defaulting, the demo's CSVs and PNGs, ``frames.FRAMES``,
``frames.COLUMNS``, ``plots.CHARTS`` and the README's column list are all derived from here.

Adding a report is one ``Report`` entry below plus its frame function in ``frames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

OPTIONS: dict[str, str] = {
    "freq": "bucket: H, D, W, M, Q, Y or hour, day, week, month, quarter, year",
    "tz": "IANA time zone for buckets and timestamps",
    "by": "split per user or guru",
    "start": "first instant or date, inclusive (naive = in tz)",
    "end": "end instant or date, exclusive",
    "users": "only sessions of these external user ids",
    "search": "only sessions whose title contains this",
    "week_start": "first day of week buckets",
    "include_deleted": "count sessions deleted upstream too",
    "periods": "retention: number of periods including period 0",
    "period": "summary: length of the period, e.g. 24h, 7d, 4w",
    "now": "now, today, latest or an instant: the end of the data (summary: of the period)",
}
"""The frame options shared by the CLI, ``Guru`` and ``reports.export`` (keyword names)."""

METRIC_LABELS: dict[str, str] = {
    "active_sessions": "Active sessions",
    "new_sessions": "New sessions",
    "events": "Activity events",
    "active_users": "Active users",
    "messages": "Messages",
    "sessions": "Sessions",
    "active_days": "Active days",
    "active_weeks": "Active weeks",
    "share": "Share of sessions",
    "questions": "Questions",
    "follow_ups": "Follow-up questions",
    "unanswered": "Unanswered questions",
}
"""Human labels of metrics (axis labels, titles, dashboard menus)."""


def metric_label(metric: str) -> str:
    """The label of ``metric`` ("Active sessions"); unknown names are prettified."""
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


@dataclass(frozen=True)
class Column:
    """One documented output column: ``kind`` is the pandas dtype family it is cast to."""

    name: str
    kind: str  # "datetime" (tz-aware, in tz), "int", "Int64" (nullable), "float", "str", "bool"
    doc: str


Outputs = tuple[tuple[str, dict[str, Any]], ...]


@dataclass(frozen=True)
class Report:
    """A table: ``function`` is its frame function's name in ``guru_analytics.frames``."""

    name: str
    function: str
    doc: str
    columns: tuple[Column, ...]
    options: frozenset[str]
    needs_messages: bool = False
    demo: Outputs = field(default=())  # CSVs the demo writes: (file stem, frame parameters)
    needs_questions: bool = False  # rows of Export Analytics (`sync --questions`)

    def takes(self, option: str) -> bool:
        return option in self.options


@dataclass(frozen=True)
class Chart:
    """A chart drawn by ``plots.<plot>`` from the frame of report ``report``."""

    name: str
    report: str
    plot: str
    plot_options: frozenset[str]
    needs_messages: bool = False
    demo: Outputs = field(default=())  # PNGs the demo writes: (file stem, chart parameters)
    needs_questions: bool = False


_USER = Column("user", "str", "external user id, or `(unattributed)` (only with `by='user'`)")
_GURU = Column("guru", "str", "guru slug (only with `by='guru'`)")
_BUCKET = Column("bucket", "datetime", "bucket start, in the chosen time zone")
_COMPLETE = Column(
    "complete",
    "bool",
    "true once the bucket's end is at or before the data's horizon (`now`, else the end of the "
    "last sync, else just after the newest event); false for a partial bucket",
)
_FILTERS = frozenset({"start", "end", "users", "search", "include_deleted"})
_BUCKETED = _FILTERS | {"freq", "tz", "week_start"}

_ENTRIES = (
    Report(
        "sessions", "sessions", "one row per cached session",
        (
            Column("guru", "str", "guru slug"),
            Column("id", "str", "session (binge) id"),
            Column("title", "str", "first question of the session (`root_question_name`)"),
            Column("slug", "str", "`root_question_slug`"),
            Column("link", "str", "`root_question_link`, the session in the Gurubase UI"),
            Column("users", "str", "known external user ids joined by `; `, or `(unattributed)`"),
            Column("n_users", "int", "number of known external users (0 when unattributed)"),
            Column("first_seen", "datetime", "when a sync first listed the session (client clock)"),
            Column(
                "date_created", "datetime",
                "creation time from Get Session; empty until messages are fetched",
            ),
            Column("first_event", "datetime", "earliest activity event"),
            Column("last_event", "datetime", "latest activity event"),
            Column("last_used", "datetime", "`last_used` from the latest listing"),
            Column("events", "int", "number of distinct activity events"),
            Column("messages", "Int64", "messages stored for the session; empty when not fetched"),
            Column("deleted", "bool", "true once a full sync no longer listed it"),
            Column("deleted_at", "datetime", "when it was found deleted"),
        ),
        _FILTERS | {"tz"},
        demo=(("sessions", {}),),
    ),
    Report(
        "activity", "activity", "activity per bucket (per user or guru with `by`)",
        (
            _BUCKET, _USER, _GURU,
            Column("active_sessions", "int", "sessions with at least one event in the bucket"),
            Column("new_sessions", "int", "sessions whose first event ever is in the bucket"),
            Column("events", "int", "activity events in the bucket"),
            Column(
                "active_users", "int",
                "distinct known users with an active session (never counts `(unattributed)`; "
                "absent with `by='user'`, where it would only say whether the row is active)",
            ),
            Column(
                "messages", "Int64",
                "stored messages created in the bucket; empty when no messages are cached",
            ),
            _COMPLETE,
        ),
        _BUCKETED | {"by", "now"},
        demo=(
            ("activity_day_by_user", {"freq": "day", "by": "user"}),
            ("activity_week_by_user", {"freq": "week", "by": "user"}),
        ),
    ),
    Report(
        "users", "users", "one row per external user, ranked, and `(unattributed)` apart",
        (
            Column("user", "str", "external user id, or `(unattributed)` (always the last row)"),
            Column("sessions", "int", "sessions of the user with an event in the range"),
            Column("events", "int", "activity events of those sessions in the range"),
            Column("first_active", "datetime", "earliest event in the range"),
            Column("last_active", "datetime", "latest event in the range"),
            Column("active_days", "int", "distinct local calendar days with an event"),
            Column("active_weeks", "int", "distinct weeks (starting on `week_start`) with an event"),
            Column(
                "share", "float",
                "known user: sessions / active sessions with at least one known user (a session "
                "of several users counts for each, so shares can sum above 1); `(unattributed)`: "
                "its sessions / all active sessions",
            ),
            Column(
                "rank", "Int64",
                "rank among known users by sessions, then events (1 = most; ties share a rank "
                "and the next rank skips: 33, 33, 35); empty for `(unattributed)`",
            ),
        ),
        _FILTERS | {"tz", "week_start"},
        demo=(("users", {}),),
    ),
    Report(
        "lifecycle", "lifecycle", "users per bucket: new, returning, resurrected, dormant",
        (
            _BUCKET,
            Column(
                "active_users", "int", "users active in the bucket (= new + returning + resurrected)"
            ),
            Column("new_users", "int", "users whose first bucket ever is this one"),
            Column("returning_users", "int", "users active in this and the previous bucket"),
            Column(
                "resurrected_users", "int",
                "users active now, not in the previous bucket, but before it",
            ),
            Column(
                "dormant_users", "int",
                "users active in the previous bucket but not this one, as a NEGATIVE count (<= 0)",
            ),
            _COMPLETE,
        ),
        _BUCKETED | {"now"},
        demo=(("lifecycle", {"freq": "week"}),),
    ),
    Report(
        "retention", "retention", "cohort retention, one row per cohort and period",
        (
            Column("cohort", "datetime", "first bucket in which the cohort's users were active"),
            Column("cohort_size", "int", "users in the cohort"),
            Column("period", "int", "buckets since the cohort bucket (0 = the cohort bucket itself)"),
            Column("bucket", "datetime", "start of the bucket this period falls in"),
            Column("users", "int", "cohort users active in that bucket (so far, when partial)"),
            Column(
                "rate", "float",
                "users / cohort_size (period 0 is 1.0); empty while the period is partial",
            ),
            Column(
                "complete", "bool",
                "true once the period's bucket has ended by the data's horizon (see `activity`)",
            ),
        ),
        _BUCKETED | {"periods", "now"},
        demo=(("retention", {"freq": "week", "periods": 8}),),
    ),
    Report(
        "summary", "summary", "headline figures for [now - period, now) against the period before",
        (
            Column("metric", "str", "active_sessions, new_sessions, active_users, events or messages"),
            Column(
                "current", "Int64",
                "value in the last period; empty for messages when none are cached",
            ),
            Column("previous", "Int64", "value in the period before it"),
            Column("change", "Int64", "current - previous"),
            Column("change_pct", "float", "100 * change / previous; empty when previous is 0"),
            Column("current_start", "datetime", "start of the last period (inclusive)"),
            Column("current_end", "datetime", "end of the last period (exclusive, = now)"),
            Column("previous_start", "datetime", "start of the previous period (inclusive)"),
            Column("previous_end", "datetime", "end of the previous period (exclusive)"),
            Column(
                "basis", "str",
                "`observations`, plus `+messages` and/or `+questions` when those were used",
            ),
        ),
        frozenset({"period", "now", "tz", "users", "search", "include_deleted"}),
        demo=(("summary", {"period": "28d"}),),
    ),
    Report(
        "heatmap", "weekday_hour", "events per local weekday and hour",
        (
            Column("weekday", "int", "day of week, 0 = Monday .. 6 = Sunday, local time"),
            Column("weekday_name", "str", "Mon .. Sun"),
            Column("hour", "int", "local hour of day 0..23"),
            Column("events", "int", "activity events in that weekday and hour"),
            Column("active_sessions", "int", "distinct sessions with an event there"),
        ),
        _FILTERS | {"tz", "week_start"},
    ),
    Report(
        "binge_length", "binge_length", "messages per session (per user or guru with `by`)",
        (
            _USER, _GURU,
            Column("sessions", "int", "sessions with stored messages"),
            Column("messages", "int", "messages in those sessions"),
            Column("mean", "float", "mean messages per session"),
            Column("median", "float", "median messages per session"),
            Column("p90", "float", "90th percentile of messages per session (linear interpolation)"),
            Column("max", "int", "most messages in one session"),
        ),
        _FILTERS | {"by"},
        needs_messages=True,
        demo=(("binge_length", {"by": "user"}),),
    ),
    Report(
        "sources", "sources", "messages per bucket per source",
        (
            _BUCKET,
            Column(
                "source", "str",
                "message source (USER, WIDGET QUESTION, API, SLACK, ...; `(unknown)` if missing)",
            ),
            Column("messages", "int", "messages from that source created in the bucket"),
        ),
        _BUCKETED,
        needs_messages=True,
        demo=(("sources", {"freq": "week"}),),
    ),
    Report(
        "votes", "votes", "votes and mean trust score per bucket",
        (
            _BUCKET,
            Column("messages", "int", "messages created in the bucket"),
            Column("upvotes", "int", "messages voted up"),
            Column("downvotes", "int", "messages voted down"),
            Column("no_vote", "int", "messages without a vote"),
            Column("scored", "int", "messages with a trust score"),
            Column(
                "mean_trust_score", "float",
                "mean trust score (0-100); empty for buckets without scored messages",
            ),
        ),
        _BUCKETED,
        needs_messages=True,
    ),
    Report(
        "questions", "questions", "one row per exported question (Export Analytics), oldest first",
        (
            Column("guru", "str", "guru slug"),
            Column("asked_at", "datetime", "the minute the question was asked (the export has no seconds)"),
            Column("answered", "bool", "false for a question the guru could not answer"),
            Column("source", "str", "display label: Gurubase UI, Widget, Api, Slack, Discord, GitHub, ..."),
            Column("question", "str", "the user's text"),
            Column("trust_score", "float", "trust score 0-1; empty for unanswered questions"),
            Column("follow_up", "bool", "true for a question asked in an existing session"),
            Column(
                "session_id", "str",
                "the session named in the row's URL; empty for first questions of web, widget "
                "and API sessions, questions outside any session and unanswered ones",
            ),
            Column("title", "str", "the linked session's first question, when cached"),
            Column("url", "str", "the question's page; empty for unanswered questions"),
        ),
        _FILTERS | {"tz"},
        needs_questions=True,
        demo=(("questions", {}),),
    ),
    Report(
        "question_sources", "question_sources", "exported questions per bucket per source",
        (
            _BUCKET,
            Column("source", "str", "display label of the source (Gurubase UI, Widget, Slack, ...)"),
            Column("questions", "int", "answered questions from that source in the bucket"),
            Column("follow_ups", "int", "of those, follow-ups in an existing session"),
            Column("unanswered", "int", "questions from that source the guru could not answer"),
        ),
        _BUCKETED,
        needs_questions=True,
        demo=(("question_sources", {"freq": "week"}),),
    ),
    Report(
        "question_trust", "question_trust", "trust scores of exported questions per bucket",
        (
            _BUCKET,
            Column("questions", "int", "answered questions in the bucket"),
            Column("scored", "int", "of those, with a trust score"),
            Column("mean_trust_score", "float", "mean trust score (0-1); empty when none scored"),
            Column("median_trust_score", "float", "median trust score (0-1); empty when none scored"),
            Column("low_trust", "int", "answered questions with a trust score below 0.5"),
        ),
        _BUCKETED,
        needs_questions=True,
    ),
    Report(
        "unanswered", "unanswered", "answered and unable-to-answer questions per bucket",
        (
            _BUCKET,
            Column("questions", "int", "answered questions in the bucket"),
            Column(
                "unanswered", "int",
                "questions the guru could not answer (never linked to a session, so left out "
                "with `users` or `search`)",
            ),
            Column(
                "unanswered_share", "float",
                "unanswered / (questions + unanswered); empty for a bucket with neither",
            ),
        ),
        _BUCKETED,
        needs_questions=True,
        demo=(("unanswered", {"freq": "week"}),),
    ),
)  # fmt: skip

REPORTS: dict[str, Report] = {r.name: r for r in _ENTRIES}
"""Report name -> Report, in the order the CLI and the README list them."""

CHARTS: dict[str, Chart] = {
    c.name: c
    for c in (
        Chart("activity", "activity", "plot_activity",
              frozenset({"metric", "kind", "top", "title"}),
              demo=(("activity", {"freq": "week", "by": "user", "top": 6}),)),
        Chart("users", "users", "plot_users", frozenset({"metric", "top", "title"}),
              demo=(("users", {"top": 20}),)),
        Chart("heatmap", "heatmap", "plot_heatmap", frozenset({"metric", "title"}),
              demo=(("heatmap", {"metric": "active_sessions"}),)),
        Chart("lifecycle", "lifecycle", "plot_lifecycle", frozenset({"title"}),
              demo=(("lifecycle", {"freq": "week"}),)),
        Chart("retention", "retention", "plot_retention",
              frozenset({"value", "title", "annotate"}),
              demo=(("retention", {"freq": "week", "periods": 8}),)),
        Chart("sources", "sources", "plot_sources", frozenset({"kind", "top", "title"}),
              needs_messages=True, demo=(("sources", {"freq": "week"}),)),
        Chart("binge_length", "sessions", "plot_binge_length", frozenset({"bins", "title"}),
              needs_messages=True, demo=(("binge_length", {}),)),
        Chart("trust", "votes", "plot_trust", frozenset({"title"}), needs_messages=True),
        Chart("question_sources", "question_sources", "plot_question_sources",
              frozenset({"kind", "top", "title"}), needs_questions=True,
              demo=(("question_sources", {"freq": "week"}),)),
        Chart("question_trust", "question_trust", "plot_question_trust", frozenset({"title"}),
              needs_questions=True, demo=(("question_trust", {"freq": "week"}),)),
        Chart("unanswered", "unanswered", "plot_unanswered", frozenset({"title"}),
              needs_questions=True, demo=(("unanswered", {"freq": "week"}),)),
    )
}  # fmt: skip
"""Chart name -> Chart."""


def report(name: str) -> Report:
    """The catalogue entry of report ``name`` (ConfigError naming the choices otherwise)."""
    try:
        return REPORTS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown report {name!r}: use one of {', '.join(REPORTS)}") from None


def chart(name: str) -> Chart:
    """The catalogue entry of chart ``name`` (ConfigError naming the choices otherwise)."""
    try:
        return CHARTS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown chart {name!r}: use one of {', '.join(CHARTS)}") from None


def chart_options(name: str) -> frozenset[str]:
    """Frame options chart ``name`` takes: those of the report it draws."""
    return REPORTS[chart(name).report].options


def columns_markdown() -> str:
    """The README's column list, one bullet per report (a test keeps the README equal to it)."""
    lines = []
    for r in REPORTS.values():
        needs = _needs(r)
        cols = "; ".join(f"`{c.name}` {c.doc}" for c in r.columns)
        lines.append(f"- **{r.name}**{needs}: {cols}.")
    return "\n".join(lines)


def reports_markdown() -> str:
    """The README's report table: name, what it is, the options it takes, its chart."""
    charts: dict[str, list[str]] = {}
    for c in CHARTS.values():
        charts.setdefault(c.report, []).append(c.name)
    lines = ["| report | what | options | charts |", "|---|---|---|---|"]
    for r in REPORTS.values():
        options = ", ".join(f"`{o}`" for o in OPTIONS if o in r.options)
        drawn = ", ".join(f"`{c}`" for c in charts.get(r.name, [])) or "-"
        needs = _needs(r)
        lines.append(f"| `{r.name}` | {r.doc}{needs} | {options} | {drawn} |")
    return "\n".join(lines)


def _needs(r: Report) -> str:
    """The README's note of what a report needs beyond the listings."""
    if r.needs_messages:
        return " (needs messages)"
    return " (needs questions)" if r.needs_questions else ""
