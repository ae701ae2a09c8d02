"""What the cache holds for one guru, at a glance: counts, extremes, the last run, the span.

Read-only questions behind ``repr(Guru)`` and ``Guru.status()``; each opens a reader for the
length of one call.
"""

from __future__ import annotations

from typing import Any

from ._connection import Database, count, first_row
from ._messages import PENDING_FROM
from ._runs import RunLedger
from ._validate import check_guru, py_utc

_EVENT_SPAN_SQL = """
SELECT min(ts), max(ts) FROM (
    SELECT o.last_used AS ts FROM observations o
    JOIN sessions s ON s.guru = o.guru AND s.id = o.id
    WHERE o.guru = $g AND NOT s.deleted
    UNION ALL
    SELECT m.date_created FROM messages m
    JOIN sessions s ON s.guru = m.guru AND s.id = m.session_id
    WHERE m.guru = $g AND NOT s.deleted)
"""


class Overview:
    """Summaries of one cache file."""

    def __init__(self, db: Database, runs: RunLedger) -> None:
        self._db = db
        self._runs = runs

    def gurus(self) -> list[str]:
        """Every guru slug the cache knows (from sessions, runs or sync state), sorted."""
        with self._db.reader() as conn:
            rows = conn.execute(
                "SELECT guru FROM sessions UNION SELECT guru FROM sync_runs "
                "UNION SELECT guru FROM sync_state ORDER BY guru"
            ).fetchall()
        return [row[0] for row in rows]

    def summary(self, guru: str) -> dict[str, Any]:
        """Counts and extremes for a one-line repr of a guru's cache."""
        check_guru(guru)
        with self._db.reader() as conn:
            sessions_row = first_row(
                conn.execute(
                    "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted), "
                    "min(last_used) FILTER (WHERE NOT deleted), "
                    "max(last_used) FILTER (WHERE NOT deleted) FROM sessions WHERE guru = ?",
                    [guru],
                )
            )
            users = count(
                conn.execute(
                    "SELECT count(DISTINCT external_user_id) FROM session_users WHERE guru = ?",
                    [guru],
                )
            )
            messages = count(conn.execute("SELECT count(*) FROM messages WHERE guru = ?", [guru]))
            pending = count(conn.execute(f"SELECT count(*) {PENDING_FROM}", [guru]))
            run = first_row(
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
            if outcome == "running" and self._runs.is_orphan(run_id, pid, host):
                outcome = "interrupted"
            last_run = {
                "run_id": int(run_id),
                "mode": mode,
                "outcome": outcome,
                "started_at": py_utc(started),
                "ended_at": py_utc(ended),
            }
        return {
            "guru": guru,
            "sessions": int(sessions_row[0]),
            "deleted": int(sessions_row[1]),
            "users": users,
            "messages": messages,
            "pending_messages": pending,
            "first_last_used": py_utc(sessions_row[2]),
            "last_last_used": py_utc(sessions_row[3]),
            "last_run": last_run,
        }

    def status(self, guru: str) -> dict[str, Any]:
        """``summary()`` plus the first and last activity instant of live sessions
        (``first_event``/``last_event``, observations and messages alike; None if none)."""
        info = self.summary(guru)
        with self._db.reader() as conn:
            row = first_row(conn.execute(_EVENT_SPAN_SQL, {"g": guru}))
        first, last = row if row is not None else (None, None)
        return {**info, "first_event": py_utc(first), "last_event": py_utc(last)}

    def listing_sizes(self, guru: str) -> dict[str, int]:
        """Live cached sessions per listing key: ``''`` (all of the guru's) and
        ``'user:<id>'`` for each attributed user (a sync's progress estimate)."""
        check_guru(guru)
        with self._db.reader() as conn:
            total = count(
                conn.execute("SELECT count(*) FROM sessions WHERE guru = ? AND NOT deleted", [guru])
            )
            rows = conn.execute(
                "SELECT u.external_user_id, count(*) FROM session_users u "
                "JOIN sessions s ON s.guru = u.guru AND s.id = u.id "
                "WHERE u.guru = ? AND NOT s.deleted GROUP BY 1",
                [guru],
            ).fetchall()
        return {"": total, **{f"user:{user}": int(n) for user, n in rows}}
