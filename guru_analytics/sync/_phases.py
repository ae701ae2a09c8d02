"""The phases after the listings: Export Analytics questions and Get Session answers (the
frames the store takes, and the buffer that writes them in batches)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd

from ..store import MESSAGE_COLUMNS
from ..timestamps import utc_now
from ..wire import export_range
from ._summary import SyncSummary

if TYPE_CHECKING:
    from ..client import Conversation, GurubaseClient, Message
    from ..store import QuestionWrite, Store


def message_frame(conv: Conversation | None) -> pd.DataFrame:
    """The store's messages frame for one Get Session answer (empty for None)."""
    msgs = conv.messages if conv is not None else []
    return _messages_frame(msgs).drop(columns="session_id")


def _messages_frame(msgs: Sequence[Message], session_ids: Sequence[str] = ()) -> pd.DataFrame:
    """Messages of one or more answers as the store's frame, ``session_id`` first."""
    frame = pd.DataFrame(
        {
            "session_id": pd.Series(session_ids or [""] * len(msgs), dtype="str"),
            "id": pd.Series([m.id for m in msgs], dtype="str"),
            "slug": pd.Series([m.slug for m in msgs], dtype="object"),
            "parent_slug": pd.Series([m.parent_slug for m in msgs], dtype="object"),
            "question": pd.Series([m.question for m in msgs], dtype="object"),
            "user_question": pd.Series([m.user_question for m in msgs], dtype="object"),
            "date_created": pd.to_datetime(
                pd.Series([m.date_created for m in msgs], dtype="object"), utc=True
            ),
            "date_updated": pd.to_datetime(
                pd.Series([m.date_updated for m in msgs], dtype="object"), utc=True
            ),
            "source": pd.Series([m.source for m in msgs], dtype="object"),
            "trust_score": pd.Series([m.trust_score for m in msgs], dtype="Int64"),
            "user_vote": pd.Series([m.user_vote for m in msgs], dtype="object"),
            "answer": pd.Series([m.answer for m in msgs], dtype="object"),
            "n_references": pd.Series([m.n_references for m in msgs], dtype="Int64"),
            "extra": pd.Series(
                [json.dumps(m.extra, sort_keys=True) if m.extra else None for m in msgs],
                dtype="object",
            ),
        },
        columns=["session_id", *MESSAGE_COLUMNS],
    )
    return frame


class _Answers:
    """Get Session answers fetched but not yet written (see ``MESSAGE_BATCH``)."""

    def __init__(self, store: Store, guru: str) -> None:
        self.store = store
        self.guru = guru
        self._fetches: list[tuple[str, str, datetime, datetime, datetime | None]] = []
        self._messages: list[Message] = []
        self._message_sessions: list[str] = []

    def __len__(self) -> int:
        return len(self._fetches)

    def add(
        self,
        sid: str,
        conv: Conversation | None,
        fetched_last_used: datetime,
        fetched_at: datetime,
    ) -> None:
        """Buffer one answer: ``conv`` None is a 404 (the session is gone upstream)."""
        if conv is None:
            self._fetches.append((sid, "not_found", fetched_last_used, fetched_at, None))
            return
        self._fetches.append((sid, "ok", fetched_last_used, fetched_at, conv.date_created))
        self._messages.extend(conv.messages)
        self._message_sessions.extend([sid] * len(conv.messages))

    def flush(self) -> None:
        """Write the buffered answers in one transaction. The buffer is emptied first: answers
        a failed write loses stay pending in the cache and are fetched again."""
        if not self._fetches:
            return
        fetches, msgs, sessions = self._fetches, self._messages, self._message_sessions
        self._fetches, self._messages, self._message_sessions = [], [], []
        sid, status, last_used, at, created = zip(*fetches, strict=True)
        frame = pd.DataFrame(
            {
                "session_id": pd.Series(sid, dtype="str"),
                "status": pd.Series(status, dtype="str"),
                "fetched_last_used": _utc_times(last_used),
                "fetched_at": _utc_times(at),
                "date_created": _utc_times(created),
            }
        )
        self.store.write_conversations(self.guru, frame, _messages_frame(msgs, sessions))


def _utc_times(values: Sequence[datetime | None]) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="object"), utc=True)


# --- questions (issue 15) -----------------------------------------------------------------

QUESTION_INTERVALS = ("today", "7d", "30d", "3m", "6m", "12m")
"""The intervals ``question_interval`` chooses from, shortest first. ``yesterday`` is never
chosen: it ends at the last UTC midnight, so it misses today's questions."""
EXPORT_OVERLAP = timedelta(hours=1)
"""How far before the last export the next one must start: room for clock skew between this
machine and the server, and for a question saved a little after its minute. Rows exported
twice are stored once (``Store.write_questions``), so the overlap costs nothing."""


def question_interval(
    last_export: datetime | None, now: datetime, overlap: timedelta = EXPORT_OVERLAP
) -> str:
    """The smallest interval asked at ``now`` that starts at or before ``last_export -
    overlap`` (so it covers everything since the last export); ``12m`` the first time, and
    when the last export is older than the 365 days the API keeps (the gap is lost)."""
    if last_export is None:
        return "12m"
    since = last_export - overlap
    for interval in QUESTION_INTERVALS:
        if export_range(interval, now)[0] <= since:
            return interval
    return "12m"


def sync_questions(
    guru: str,
    *,
    client: GurubaseClient,
    store: Store,
    clock: Callable[[], datetime] = utc_now,
    summary: SyncSummary | None = None,
) -> QuestionWrite:
    """One Export Analytics request for every question since the last export, stored
    idempotently in one transaction (``Store.write_questions``); adds ``questions_exported``
    (rows in the export) and ``questions_new`` to ``summary``, and a note when a gap could not
    be covered."""
    last = store.last_question_export(guru)
    now = clock()
    interval = question_interval(None if last is None else last.exported_at, now)
    covers_from = export_range(interval, now)[0]
    export = client.export_questions(guru, interval)
    written = store.write_questions(guru, export, now, covers_from=covers_from)
    if summary is not None:
        summary.questions_exported += written.questions + written.unanswered
        summary.questions_new += written.new
        if last is not None and covers_from > last.exported_at:
            summary.notes.append(
                f"questions between {last.exported_at:%Y-%m-%d} and {covers_from:%Y-%m-%d} "
                "are older than the 12 months Export Analytics covers: they are not stored"
            )
    return written
