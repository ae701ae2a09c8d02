"""The attribution queue: sessions no user listing has attributed yet (table ``unattributed``).

The guru-wide listing is the sync's change feed: a session's external user never changes, so
only sessions the cache has never seen need a user listing. The page write that first stores
such a session (a guru-wide page of a sync with users) queues it as ``pending`` in the same
transaction, so a kill during the attribution sweep that follows loses nothing: the next run
finishes the sweep. When a sweep read every given user's listing deep enough and none showed
a pending session, it becomes ``proven`` (with ``checked_at``), so a session nobody owns costs
one sweep once, not one per run. An attributed session is never in the queue (``settle``
drops it). ``requeue_changed`` puts proven sessions that moved since their check back to
pending (the sync's ``recheck_unattributed='daily'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

from ._connection import Database, count
from ._validate import as_utc, check_guru, py_utc

# Queued in the page write's own transaction (``Sessions._write``).
QUEUE_SQL = """
INSERT INTO unattributed (guru, id, state, checked_at)
SELECT $guru, unnest($ids::VARCHAR[]), 'pending', NULL
ON CONFLICT (guru, id) DO UPDATE SET state = 'pending', checked_at = NULL
"""

_PENDING_SQL = """
SELECT s.id, s.last_used FROM unattributed q
JOIN sessions s ON s.guru = q.guru AND s.id = q.id
WHERE q.guru = $guru AND q.state = 'pending' AND NOT s.deleted
  AND NOT EXISTS (SELECT 1 FROM session_users u WHERE u.guru = q.guru AND u.id = q.id)
ORDER BY s.last_used DESC, s.id
"""


# Every live unattributed session that moved past an instant, queued or not (the sessions a
# user listing read during a run may have missed: they jumped above its offset).
_MOVED_SQL = """
SELECT s.id, s.last_used FROM sessions s
WHERE s.guru = $guru AND NOT s.deleted AND s.last_used > $since
  AND NOT EXISTS (SELECT 1 FROM session_users u WHERE u.guru = s.guru AND u.id = s.id)
ORDER BY s.last_used DESC, s.id
"""


def queue(conn: duckdb.DuckDBPyConnection, guru: str, ids: Sequence[str]) -> None:
    """Queue new sessions as pending, inside the caller's transaction."""
    if ids:
        conn.execute(QUEUE_SQL, {"guru": guru, "ids": list(ids)})


class Unattributed:
    """The ``unattributed`` table of one cache file."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def pending(self, guru: str, moved_since: datetime | None = None) -> list[tuple[str, datetime]]:
        """Pending sessions still unattributed and live, newest first: (id, cached last_used).
        With ``moved_since``: every live unattributed session whose ``last_used`` is later,
        queued or not."""
        check_guru(guru)
        with self._db.reader() as conn:
            if moved_since is None:
                rows = conn.execute(_PENDING_SQL, {"guru": guru}).fetchall()
            else:
                since = as_utc(moved_since, "moved_since")
                rows = conn.execute(_MOVED_SQL, {"guru": guru, "since": since}).fetchall()
        return [(str(sid), py_utc(at)) for sid, at in rows]  # type: ignore[misc]

    def counts(self, guru: str) -> dict[str, int]:
        """How many sessions are ``pending`` and ``proven`` unattributed."""
        check_guru(guru)
        with self._db.reader() as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM unattributed WHERE guru = ? GROUP BY state", [guru]
            ).fetchall()
        return {"pending": 0, "proven": 0, **{str(s): int(n) for s, n in rows}}

    def settle(self, guru: str, proven: Sequence[str], at: datetime) -> None:
        """One transaction: attributed sessions leave the queue; ``proven`` become proven."""
        check_guru(guru)
        when = as_utc(at, "at")
        with self._db.transaction(f"settling the attribution queue of {guru!r}") as conn:
            conn.execute(
                "DELETE FROM unattributed q WHERE q.guru = $guru AND EXISTS (SELECT 1 FROM "
                "session_users u WHERE u.guru = q.guru AND u.id = q.id)",
                {"guru": guru},
            )
            if proven:
                conn.execute(
                    "UPDATE unattributed SET state = 'proven', checked_at = $at WHERE guru = $guru "
                    "AND id IN (SELECT unnest($ids::VARCHAR[]))",
                    {"guru": guru, "at": when, "ids": list(proven)},
                )

    def requeue_changed(self, guru: str, checked_before: datetime) -> int:
        """Proven sessions checked before ``checked_before`` whose ``last_used`` moved past
        their check go back to pending; returns how many."""
        check_guru(guru)
        cutoff = as_utc(checked_before, "checked_before")
        with self._db.transaction(f"re-queueing unattributed sessions of {guru!r}") as conn:
            return count(
                conn.execute(
                    "UPDATE unattributed q SET state = 'pending', checked_at = NULL "
                    "FROM sessions s WHERE q.guru = $guru AND q.state = 'proven' "
                    "AND q.checked_at < $cutoff AND s.guru = q.guru AND s.id = q.id "
                    "AND s.last_used > q.checked_at AND NOT s.deleted",
                    {"guru": guru, "cutoff": cutoff},
                )
            )

    def user_activity(self, guru: str, users: Sequence[str]) -> dict[str, datetime]:
        """The newest cached ``last_used`` attributed to each of ``users`` (absent: none)."""
        check_guru(guru)
        if not users:
            return {}
        with self._db.reader() as conn:
            rows = conn.execute(
                "SELECT u.external_user_id, max(s.last_used) FROM session_users u "
                "JOIN sessions s ON s.guru = u.guru AND s.id = u.id "
                "WHERE u.guru = $guru AND u.external_user_id IN (SELECT unnest($users::VARCHAR[])) "
                "GROUP BY u.external_user_id",
                {"guru": guru, "users": list(users)},
            ).fetchall()
        return {str(u): py_utc(at) for u, at in rows if at is not None}  # type: ignore[misc]
