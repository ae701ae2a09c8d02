"""Analytics DataFrames over the DuckDB cache: sessions, activity, users, lifecycle, retention.

Every function here is a pure read of the cache (it never fetches) and does its work in one
DuckDB SQL statement, so a million sessions cost one query, not a Python loop. The query
builder is in ``_query``; the frames by subject in ``activity``, ``people`` and ``messages``;
what exists (names, columns, options) in ``guru_analytics.catalog``.

Definitions (the README's Metrics section repeats them):

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
  says otherwise. Every bucketed report, message-based ones included, covers every bucket
  from ``start`` (or the first activity event) to ``end`` (or the last activity event);
  buckets with no activity are present with zeros.
- A bucket is **complete** once its end is at or before the data's **horizon**: ``now`` where
  given, else the end of the last successful sync, and never before just after the newest
  event (a cache with no sync run: just after the newest event).
- ``now`` reads ``"now"`` (the current UTC instant), ``"today"`` (local midnight in ``tz``),
  ``"latest"`` (just after the newest event) or an instant (``parse_now``).
- ``start`` is inclusive and ``end`` exclusive (``end="2025-04-01"`` covers all of March);
  naive times and dates are read in ``tz``. The buckets holding ``start`` and ``end`` are
  shown whole, but only events inside the range are counted.
- A session with no known external user counts under the label ``"(unattributed)"``; it is
  never dropped. A session attributed to several users counts once for each of them in
  per-user figures (per-user sums can exceed the total), and once in totals.
- A **user** is a known external user id; ``active_users`` never counts ``"(unattributed)"``
  (one label stands for any number of anonymous visitors), and ``users`` ranks known users
  only.
- Deleted sessions are left out unless ``include_deleted=True``.

Each result carries ``df.attrs`` with ``basis`` (``"observations"``, plus ``+messages``
and/or ``+questions``: whether message times and exported questions could be used; the
export's minute-resolution questions count once with an observation or message of the same
session in the same minute), ``guru``, ``tz`` and,
where relevant, ``freq``, ``week_start`` and ``horizon``. ``COLUMNS`` documents every column.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .. import catalog
from . import activity as _activity_module
from . import messages as _messages_module
from . import people as _people_module
from . import questions as _questions_module
from ._query import (
    BASIS_MESSAGES,
    BASIS_MESSAGES_QUESTIONS,
    BASIS_OBSERVATIONS,
    BASIS_QUESTIONS,
    COLUMNS,
    FREQ_NAMES,
    NOW_WORDS,
    UNKNOWN_SOURCE,
    Column,
    Source,
    SupportsReader,
    TimeLike,
    bucket_end,
    bucket_sql,
    complete_until,
    normalize_freq,
    normalize_week_start,
    parse_now,
    reading,
    to_instant,
)
from .activity import (
    OTHER,
    activity,
    parse_period,
    pivot_activity,
    sessions,
    summary,
    top_n,
    weekday_hour,
)
from .messages import binge_length, sources, votes
from .people import lifecycle, retention, retention_matrix, users
from .questions import question_sources, question_trust, questions, unanswered


def _frame_function(name: str) -> Callable[..., pd.DataFrame]:
    """The frame function called ``name`` in one of the subject modules: a new report needs
    its catalogue entry and its function, and no import line here."""
    for module in (_activity_module, _people_module, _messages_module, _questions_module):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    raise ImportError(f"catalog names frame function {name!r}, which no frames module defines")


FRAMES: dict[str, Callable[..., pd.DataFrame]] = {
    name: _frame_function(r.function) for name, r in catalog.REPORTS.items()
}
"""Report name -> frame function (a view of ``catalog.REPORTS``)."""


def __getattr__(name: str) -> Callable[..., pd.DataFrame]:
    """``frames.<function>`` for a catalogue report's function not imported above."""
    if any(r.function == name for r in catalog.REPORTS.values()):
        return _frame_function(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASIS_MESSAGES", "BASIS_MESSAGES_QUESTIONS", "BASIS_OBSERVATIONS", "BASIS_QUESTIONS", "COLUMNS", "FRAMES", "FREQ_NAMES", "NOW_WORDS",
    "OTHER", "UNKNOWN_SOURCE", "Column", "Source", "SupportsReader", "TimeLike", "activity",
    "binge_length", "bucket_end", "bucket_sql", "complete_until", "lifecycle",
    "normalize_freq", "normalize_week_start", "parse_now", "parse_period", "pivot_activity",
    "reading", "retention", "retention_matrix", "sessions", "sources", "summary", "to_instant",
    "top_n", "users", "votes", "weekday_hour", "questions", "question_sources",
    "question_trust", "unanswered",
]  # fmt: skip
