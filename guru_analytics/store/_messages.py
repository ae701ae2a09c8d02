"""Get Session answers in the cache: messages, fetch records and what is still pending.

A session's messages are fetched (opt-in) when it is new or changed since its last fetch;
``write_conversations`` stores many answers in one transaction (the sync batches them), and
``pending_message_fetches`` lists the sessions still to fetch, newest first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ._connection import Database, count
from ._schema import MESSAGE_INT, MESSAGE_TEXT
from ._validate import (
    as_utc,
    check_guru,
    column_values,
    id_column,
    int_column,
    json_column,
    opt_utc,
    optional_utc_column,
    require,
    text_column,
    utc_column,
)

FETCH_STATUSES = ("ok", "not_found")


def _message_frame(messages: pd.DataFrame, *, session_ids: bool = False) -> pd.DataFrame:
    """Messages in the shape the SQL expects (with ``session_id`` first if ``session_ids``);
    message ids unique per session."""
    what = "messages"
    require(
        messages,
        ("session_id", "id", "date_created") if session_ids else ("id", "date_created"),
        what,
    )
    ids = messages["id"]
    if pd.api.types.infer_dtype(ids, skipna=False) == "integer":
        ids = ids.astype(str)
    out = pd.DataFrame(
        {
            **({"session_id": id_column(messages, "session_id", what)} if session_ids else {}),
            "id": id_column(pd.DataFrame({"id": ids}), "id", what),
            **{c: text_column(messages, c, what) for c in MESSAGE_TEXT},
            "date_created": utc_column(messages, "date_created", what, required=True),
            "date_updated": optional_utc_column(messages, "date_updated", what),
            **{c: int_column(messages, c, what) for c in MESSAGE_INT},
            "extra": json_column(messages, "extra", what),
        }
    )
    ids = out["id"].tolist()
    keys: list[Any] = (
        list(zip(out["session_id"].tolist(), ids, strict=True)) if session_ids else ids
    )
    counts = Counter(keys)
    dupes = sorted({ids[k] for k, key in enumerate(keys) if counts[key] > 1})
    if dupes:
        raise ConfigError(
            f"messages repeat id(s) {', '.join(map(str, dupes[:5]))}: pass each message once"
        )
    return out


@dataclass(frozen=True)
class _Fetches:
    """Validated fetch records of ``write_conversations``, one entry per session."""

    session_id: list[str]
    status: list[str]
    fetched_last_used: list[datetime | None]
    fetched_at: list[datetime]
    date_created: list[datetime | None]

    @classmethod
    def from_frame(cls, fetches: pd.DataFrame) -> _Fetches:
        what = "fetches"
        require(fetches, ("session_id", "status", "fetched_at"), what)
        n = len(fetches)
        if not n:
            return cls([], [], [], [], [])
        ids = list(id_column(fetches, "session_id", what))
        if not all(ids):
            raise ConfigError("fetches column 'session_id' has an empty id: pass each session's id")
        dupes = sorted(sid for sid, count in Counter(ids).items() if count > 1)
        if dupes:
            raise ConfigError(
                f"fetches repeat session(s) {', '.join(dupes[:5])}: pass each session once per call"
            )
        status = fetches["status"].tolist()
        bad = sorted({str(s) for s in status if s not in FETCH_STATUSES})
        if bad:
            raise ConfigError(
                f"fetch status {', '.join(bad)} is not valid: use {' or '.join(FETCH_STATUSES)}"
            )

        def times(column: str) -> list[datetime | None]:
            return column_values(optional_utc_column(fetches, column, what).to_pydatetime(), n)

        fetched_at = list(utc_column(fetches, "fetched_at", what, required=True).to_pydatetime())
        return cls(ids, status, times("fetched_last_used"), fetched_at, times("date_created"))


# --- Get Session answers (write_conversations), set-based per batch ---------------------------

_DELETE_MESSAGES_SQL = """
DELETE FROM messages WHERE guru = $guru AND session_id IN (SELECT unnest($id::VARCHAR[]))
"""

_INSERT_MESSAGES_SQL = """
INSERT INTO messages (guru, session_id, id, slug, parent_slug, question, user_question,
                      date_created, date_updated, source, trust_score, user_vote, answer,
                      n_references, extra)
SELECT $guru, session_id, id, slug, parent_slug, question, user_question, date_created,
       date_updated, source, trust_score, user_vote, answer, n_references, extra::JSON
FROM _ga_messages
"""

_DATE_CREATED_SQL = """
UPDATE sessions SET date_created = f.at
FROM (SELECT unnest($id::VARCHAR[]) AS id, unnest($at::TIMESTAMPTZ[]) AS at) AS f
WHERE sessions.guru = $guru AND sessions.id = f.id
"""

_MARK_NOT_FOUND_SQL = """
UPDATE sessions SET deleted = true, deleted_at = f.at
FROM (SELECT unnest($id::VARCHAR[]) AS id, unnest($at::TIMESTAMPTZ[]) AS at) AS f
WHERE sessions.guru = $guru AND sessions.id = f.id AND NOT sessions.deleted
"""

_RECORD_FETCHES_SQL = """
INSERT INTO message_fetches (guru, session_id, fetched_last_used, fetched_at, status)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]),
       unnest($at::TIMESTAMPTZ[]), unnest($status::VARCHAR[])
ON CONFLICT (guru, session_id) DO UPDATE SET
    fetched_last_used = excluded.fetched_last_used,
    fetched_at = excluded.fetched_at,
    status = excluded.status
"""

# Pending = no fetch at least as new as the session's last_used. Written as NOT EXISTS: the
# equivalent LEFT JOIN with "f.session_id IS NULL OR f.fetched_last_used < s.last_used" loses
# its LIMIT in DuckDB 2.0.1 when message_fetches is empty (Top N planned as a plain sort).
PENDING_FROM = """
FROM sessions AS s
WHERE s.guru = ? AND NOT s.deleted
  AND NOT EXISTS (
      SELECT 1 FROM message_fetches AS f
      WHERE f.guru = s.guru AND f.session_id = s.id AND f.fetched_last_used >= s.last_used
  )
"""


# --- messages -----------------------------------------------------------------------


class Messages:
    """The messages part of one cache file."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def write_messages(
        self,
        guru: str,
        session_id: str,
        messages: pd.DataFrame | None,
        *,
        fetched_last_used: datetime | None,
        fetched_at: datetime,
        status: str = "ok",
        date_created: datetime | None = None,
    ) -> int:
        """Store one Get Session answer in one transaction; returns the messages stored.

        ``'ok'`` replaces the session's messages and sets ``sessions.date_created`` (given,
        else the first message's). ``'not_found'`` (404) keeps stored messages and marks the
        session deleted. Either way the fetch is recorded, so the session leaves
        ``pending_message_fetches`` until its ``last_used`` passes ``fetched_last_used``.
        ``write_conversations`` stores many answers in one transaction (far cheaper each).
        """
        check_guru(guru)
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"session_id {session_id!r} is not valid: pass the session's id")
        if status not in FETCH_STATUSES:
            raise ConfigError(
                f"fetch status {status!r} is not valid: use {' or '.join(FETCH_STATUSES)}"
            )
        fetch = _Fetches(
            [session_id],
            [status],
            [opt_utc(fetched_last_used, "fetched_last_used")],
            [as_utc(fetched_at, "fetched_at")],
            [opt_utc(date_created, "date_created")],
        )
        frame = None
        if status == "ok":
            if messages is None:
                raise ConfigError(
                    "messages is None for status 'ok': pass the session's messages frame"
                )
            require(messages, ("id", "date_created"), "messages")
            frame = _message_frame(messages.assign(session_id=session_id), session_ids=True)
        elif messages is not None and len(messages):
            raise ConfigError(
                "status 'not_found' comes with no messages: pass None or an empty frame"
            )
        return self._write_conversations(guru, fetch, frame)

    def write_conversations(
        self, guru: str, fetches: pd.DataFrame, messages: pd.DataFrame | None
    ) -> int:
        """Store many Get Session answers in one transaction; returns the messages stored.

        ``fetches``: one row per session with ``session_id``, ``status`` (``'ok'`` or
        ``'not_found'``), ``fetched_at`` and optionally ``fetched_last_used`` (the answer's
        ``last_used``) and ``date_created``. ``messages``: the messages of the ``'ok'``
        sessions, ``session_id`` plus the ``write_messages`` columns (an ``'ok'`` session
        without rows has no messages; None only when no session is ``'ok'``). Each session
        gets exactly what ``write_messages`` would do for it; all of them or none are stored.
        """
        check_guru(guru)
        fetch = _Fetches.from_frame(fetches)
        frame = None if messages is None else _message_frame(messages, session_ids=True)
        ok = {
            sid
            for sid, status in zip(fetch.session_id, fetch.status, strict=True)
            if status == "ok"
        }
        if frame is None and ok:
            raise ConfigError(
                "messages is None but some fetches have status 'ok': pass their messages "
                "(an empty frame if they have none)"
            )
        if frame is not None and len(frame):
            stray = set(frame["session_id"]) - ok
            if stray & set(fetch.session_id):
                raise ConfigError(
                    "status 'not_found' comes with no messages: pass messages only for 'ok' "
                    "sessions"
                )
            if stray:
                raise ConfigError(
                    f"messages of session(s) {', '.join(sorted(stray)[:5])} have no fetches "
                    "row: add one row per session to fetches"
                )
        return self._write_conversations(guru, fetch, frame)

    def _write_conversations(self, guru: str, fetch: _Fetches, frame: pd.DataFrame | None) -> int:
        """The transaction behind ``write_messages`` and ``write_conversations`` (validated
        input). Sessions are matched on (guru, id) with plain joins: a scan of the narrow key
        columns once per batch, which stays cheap next to one Get Session request each."""
        if not fetch.session_id:
            return 0
        stored = 0 if frame is None else len(frame)
        first: dict[str, datetime] = {}  # each session's first message
        if stored and frame is not None:
            for sid, at in zip(
                frame["session_id"].tolist(),
                frame["date_created"].array.to_pydatetime(),
                strict=True,
            ):
                if sid not in first or at < first[sid]:
                    first[sid] = at
        created = {  # the one given, else the first message's
            sid: given if given is not None else first.get(sid)
            for sid, given in zip(fetch.session_id, fetch.date_created, strict=True)
        }
        ok = [k for k, status in enumerate(fetch.status) if status == "ok"]
        gone = [k for k, status in enumerate(fetch.status) if status != "ok"]
        dated = [k for k in ok if created[fetch.session_id[k]] is not None]
        what = f"storing the messages of {len(fetch.session_id)} session(s) of {guru!r}"
        g = {"guru": guru}
        with self._db.transaction(what, {"_ga_messages": frame if stored else None}) as conn:
            if ok:
                conn.execute(_DELETE_MESSAGES_SQL, {**g, "id": [fetch.session_id[k] for k in ok]})
            if stored:
                conn.execute(_INSERT_MESSAGES_SQL, g)
            if dated:
                sids = [fetch.session_id[k] for k in dated]
                conn.execute(
                    _DATE_CREATED_SQL, {**g, "id": sids, "at": [created[sid] for sid in sids]}
                )
            if gone:
                conn.execute(
                    _MARK_NOT_FOUND_SQL,
                    {
                        **g,
                        "id": [fetch.session_id[k] for k in gone],
                        "at": [fetch.fetched_at[k] for k in gone],
                    },
                )
            conn.execute(
                _RECORD_FETCHES_SQL,
                {
                    **g,
                    "id": fetch.session_id,
                    "last_used": fetch.fetched_last_used,
                    "at": fetch.fetched_at,
                    "status": fetch.status,
                },
            )
        return stored

    def pending_message_fetches(self, guru: str, limit: int | None = None) -> pd.DataFrame:
        """Non-deleted sessions whose messages were never fetched or are older than their
        ``last_used``; newest ``last_used`` first (the sessions users touched last).

        Columns: ``id``, ``last_used``, ``fetched_last_used`` (NaT if never fetched),
        ``root_question_slug``."""
        check_guru(guru)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ConfigError(f"limit {limit!r} is not valid: pass an integer >= 0 or None")
        sql = (
            "SELECT s.id, s.last_used, "
            "(SELECT f.fetched_last_used FROM message_fetches AS f "
            " WHERE f.guru = s.guru AND f.session_id = s.id) AS fetched_last_used, "
            "s.root_question_slug "
            f"{PENDING_FROM} ORDER BY s.last_used DESC, s.id"
        )
        params: list[Any] = [guru]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._db.reader() as conn:
            return conn.execute(sql, params).df()

    def count_pending(self, guru: str) -> int:
        """How many sessions ``pending_message_fetches`` would return without a limit."""
        check_guru(guru)
        with self._db.reader() as conn:
            return count(conn.execute(f"SELECT count(*) {PENDING_FROM}", [guru]))
