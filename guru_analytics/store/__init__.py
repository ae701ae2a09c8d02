"""The local DuckDB cache: ``Store``, the one face of a small package split by responsibility.

One file holds many gurus. Every timestamp column is TIMESTAMPTZ and every connection runs
with ``TimeZone='UTC'``, so values come back tz-aware UTC. The modules behind the facade:

- ``_connection``: opening the file, its lock, transactions, readers (``Database``);
- ``_schema``: tables, the listing fingerprint, migrations;
- ``_validate``: checks on what users hand the store (frames, instants, keys);
- ``_sessions``: listing pages (typed, batched, from the sync) and bulk loads (frames);
- ``_runs``: the run ledger and every listing's sync state;
- ``_messages``: Get Session answers and what is still pending;
- ``_questions``: Export Analytics rows (exported questions) and the ledger of exports;
- ``_unattributed``: the attribution queue (sessions no user listing attributed yet);
- ``_overview``: counts, extremes and the last run of one guru.

Every write method is one transaction: a crash or an exception at any point leaves the cache
as it was before that call. Bulk data moves through set-based SQL, never row by row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from ..timestamps import utc_now
from ._connection import (
    MAX_LOCK_BACKOFF,
    NO_EXTENSIONS,
    READER_WAIT,
    ConnectFactory,
    Database,
    default_cache_path,
)
from ._messages import FETCH_STATUSES, Messages
from ._overview import Overview
from ._questions import (
    QUESTION_KINDS,
    QuestionExportRecord,
    Questions,
    QuestionWrite,
    question_row_key,
)
from ._runs import RUN_COUNTS, UNSET, RunLedger, SyncState, _Unset
from ._schema import (
    LISTING_COLUMNS,
    LISTING_FINGERPRINT_SQL,
    MESSAGE_COLUMNS,
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_VERSION,
    Migration,
    check_migrations,
    listing_fingerprint,
)
from ._sessions import (
    _PAGE_READ_SQL,
    _PAGE_READ_USERS_SQL,
    _PAGE_TOUCH_SQL,
    ListedPage,
    ListedRow,
    LoadResult,
    PageWrite,
    Sessions,
)
from ._unattributed import Unattributed

if TYPE_CHECKING:
    from ..wire import QuestionExport

# Listing keys in sync_state / sync_runs: '' is the guru-wide listing.
UNATTRIBUTED = "(unattributed)"

__all__ = [
    "FETCH_STATUSES",
    "LISTING_COLUMNS",
    "LISTING_FINGERPRINT_SQL",
    "MAX_LOCK_BACKOFF",
    "MESSAGE_COLUMNS",
    "MIGRATIONS",
    "NO_EXTENSIONS",
    "QUESTION_KINDS",
    "READER_WAIT",
    "RUN_COUNTS",
    "SCHEMA_V1",
    "SCHEMA_V2",
    "SCHEMA_V3",
    "SCHEMA_V4",
    "SCHEMA_V5",
    "SCHEMA_VERSION",
    "UNATTRIBUTED",
    "UNSET",
    "_PAGE_READ_SQL",
    "_PAGE_READ_USERS_SQL",
    "_PAGE_TOUCH_SQL",
    "ConnectFactory",
    "ListedPage",
    "ListedRow",
    "LoadResult",
    "Migration",
    "PageWrite",
    "QuestionExportRecord",
    "QuestionWrite",
    "Store",
    "SyncState",
    "default_cache_path",
    "listing_fingerprint",
    "question_row_key",
]


class Store:
    """The DuckDB cache of one or many gurus.

    ``path`` is a file (created with its directory if missing) or ``":memory:"`` (one
    connection for the Store's life). ``connect(path, read_only)`` opens connections (a seam
    for tests); ``clock`` stamps runs; ``lock_timeout`` is how long to wait for another
    process's lock. ``migrations`` replaces the upgrade steps (tests use it to build an older
    cache or add a future step). The file is opened read-write only while writing (see
    ``_connection``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        connect: ConnectFactory | None = None,
        clock: Callable[[], datetime] = utc_now,
        lock_timeout: float = 10.0,
        migrations: Iterable[Migration] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        steps = check_migrations(MIGRATIONS if migrations is None else migrations)
        self._db = Database(
            path,
            connect=connect,
            lock_timeout=lock_timeout,
            migrations=steps,
            monotonic=monotonic,
            sleep=sleep,
        )
        self._sessions = Sessions(self._db, clock)
        self._runs = RunLedger(self._db, clock)
        self._messages = Messages(self._db)
        self._questions = Questions(self._db)
        self._unattributed = Unattributed(self._db)
        self._overview = Overview(self._db, self._runs)

    # --- the file -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The resolved cache file path, or ``':memory:'``."""
        return self._db.path

    @property
    def schema_version(self) -> int:
        """The schema version this Store reads and writes."""
        return self._db.target

    def __repr__(self) -> str:
        state = "closed" if self._db.closed else ("open" if self._db.is_open else "released")
        return f"Store({self._db.path!r}, {state})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def release(self) -> None:
        """Close the read-write connection so other processes can open the file.

        The next write reopens it. No-op for ``:memory:`` (closing would lose the data).
        """
        self._db.release()

    def yield_file(self, pause: float = 2 * MAX_LOCK_BACKOFF) -> None:
        """Release the file and keep it free for ``pause`` seconds, so a reader waiting for
        the lock gets in (a long sync does this at short intervals)."""
        self._db.yield_file(pause)

    @contextmanager
    def waiting_for_readers(self, seconds: float = READER_WAIT) -> Iterator[None]:
        """In the block, a write that finds the file held by a reader waits up to
        ``seconds`` for it (with a log line) instead of ``lock_timeout``; a file held by a
        sync still fails after ``lock_timeout``. A sync runs inside this."""
        with self._db.waiting_for_readers(seconds):
            yield

    @contextmanager
    def capped(self, **settings: str) -> Iterator[None]:
        """DuckDB settings (``memory_limit='128MB'``, ``threads='1'``) on this Store's
        read-write connections for the block, so a long write keeps its memory flat."""
        with self._db.capped(dict(settings)):
            yield

    def close(self) -> None:
        """Release the file (or drop the in-memory database); the Store cannot be used again.

        Runs begun here and never ended read as ``interrupted`` from now on."""
        with self._db.lock:
            if self._db.closed:
                return
            self._runs.forget()
            self._db.close()

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The Store's own read-write connection, for ad-hoc SQL.

        It stays open (holding the file's lock) until ``release()``; prefer ``reader()`` for
        reads that other processes should not block on.
        """
        return self._db.connection()

    def writer(self, *, keep_open: bool = False) -> Any:
        """Hold the read-write connection for a block (a context manager); on exit the file
        is released again unless ``keep_open`` or it was already open."""
        return self._db.writer(keep_open=keep_open)

    def reader(self) -> Any:
        """A connection for reading (a context manager), closed when the block ends: a
        cursor on the Store's own connection when it is open, else a read-only one."""
        return self._db.reader()

    # --- sessions -----------------------------------------------------------------------

    def write_pages(
        self,
        guru: str,
        pages: Sequence[ListedPage],
        seen_at: datetime,
        state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[PageWrite]:
        """Listing pages (typed rows) and the listings' sync state in one transaction; see
        ``_sessions.Sessions.write_pages``."""
        return self._sessions.write_pages(guru, pages, seen_at, state)

    def write_page(
        self,
        guru: str,
        rows: pd.DataFrame,
        seen_at: datetime,
        *,
        external_user_id: str | None = None,
    ) -> PageWrite:
        """One listing page given as a DataFrame (validated), in one transaction; see
        ``_sessions.Sessions.write_page`` for the upsert rules."""
        return self._sessions.write_page(guru, rows, seen_at, external_user_id=external_user_id)

    def load_frame(
        self,
        guru: str,
        sessions_df: pd.DataFrame,
        observations_df: pd.DataFrame | None = None,
        users_df: pd.DataFrame | None = None,
        *,
        seen_at: datetime | None = None,
    ) -> LoadResult:
        """Bulk-load whole frames with the page rules (no HTTP), in one transaction; see
        ``_sessions.Sessions.load_frame``."""
        return self._sessions.load_frame(
            guru, sessions_df, observations_df, users_df, seen_at=seen_at
        )

    def unseen_since(self, guru: str, since: datetime) -> pd.DataFrame:
        """Non-deleted sessions not seen since ``since`` (deletion candidates of a full pass)."""
        return self._sessions.unseen_since(guru, since)

    def mark_deleted(self, guru: str, ids: Iterable[str], at: datetime) -> int:
        """Flag sessions deleted (rows are kept); returns how many were not flagged before."""
        return self._sessions.mark_deleted(guru, ids, at)

    # --- runs and sync state ------------------------------------------------------------

    def begin_run(
        self, guru: str, mode: str, listings: Sequence[str], search_query: str | None = None
    ) -> int:
        """Record a sync run as ``running``; returns its id (see ``_runs.RunLedger``)."""
        return self._runs.begin_run(guru, mode, listings, search_query)

    def end_run(self, run_id: int, outcome: str, error: str | None = None, **counts: int) -> None:
        """Close a run with its outcome (e.g. 'ok', 'partial', 'failed'), error text and counts."""
        self._runs.end_run(run_id, outcome, error, **counts)

    def runs(self, guru: str | None = None) -> pd.DataFrame:
        """All sync runs (oldest first); a run whose process is gone reads as 'interrupted'."""
        return self._runs.runs(guru)

    def get_state(self, guru: str, listing: str) -> SyncState | None:
        """The stored progress of one listing ('' guru-wide, 'user:<id>', 'search:<q>')."""
        return self._runs.get_state(guru, listing)

    def save_state(
        self,
        guru: str,
        listing: str,
        *,
        watermark: datetime | None | _Unset = UNSET,
        completed_at: datetime | None | _Unset = UNSET,
        pass_mode: str | None | _Unset = UNSET,
        pass_started_at: datetime | None | _Unset = UNSET,
        pass_top: datetime | None | _Unset = UNSET,
        pass_next_page: int | None | _Unset = UNSET,
    ) -> SyncState:
        """Upsert a listing's state: only the fields given change; ``None`` clears one."""
        return self._runs.save_state(
            guru,
            listing,
            watermark=watermark,
            completed_at=completed_at,
            pass_mode=pass_mode,
            pass_started_at=pass_started_at,
            pass_top=pass_top,
            pass_next_page=pass_next_page,
        )

    # --- messages -----------------------------------------------------------------------

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
        """Store one Get Session answer in one transaction; see ``_messages.Messages``."""
        return self._messages.write_messages(
            guru,
            session_id,
            messages,
            fetched_last_used=fetched_last_used,
            fetched_at=fetched_at,
            status=status,
            date_created=date_created,
        )

    def write_conversations(
        self, guru: str, fetches: pd.DataFrame, messages: pd.DataFrame | None
    ) -> int:
        """Store many Get Session answers in one transaction; see ``_messages.Messages``."""
        return self._messages.write_conversations(guru, fetches, messages)

    def pending_message_fetches(self, guru: str, limit: int | None = None) -> pd.DataFrame:
        """Sessions whose messages are missing or older than their ``last_used``, newest
        first (columns ``id``, ``last_used``, ``fetched_last_used``, ``root_question_slug``)."""
        return self._messages.pending_message_fetches(guru, limit)

    def count_pending(self, guru: str) -> int:
        """How many sessions ``pending_message_fetches`` would return without a limit."""
        return self._messages.count_pending(guru)

    # --- questions (issue 15) -----------------------------------------------------------

    def write_questions(
        self,
        guru: str,
        export: QuestionExport,
        exported_at: datetime,
        *,
        covers_from: datetime | None = None,
    ) -> QuestionWrite:
        """Store one Export Analytics answer (rows not stored before, and the export in the
        ledger) in one transaction; see ``_questions.Questions``."""
        return self._questions.write_questions(guru, export, exported_at, covers_from=covers_from)

    def last_question_export(self, guru: str) -> QuestionExportRecord | None:
        """The newest question export of ``guru`` (None before the first)."""
        return self._questions.last_question_export(guru)

    # --- the attribution queue (issue 13) -----------------------------------------------

    def pending_attribution(
        self, guru: str, moved_since: datetime | None = None
    ) -> list[tuple[str, datetime]]:
        """Sessions queued for the attribution sweep and still unattributed, newest first:
        ``(id, cached last_used)``; with ``moved_since`` every live unattributed session with a
        later ``last_used``, queued or not. See ``_unattributed``."""
        return self._unattributed.pending(guru, moved_since)

    def unattributed_counts(self, guru: str) -> dict[str, int]:
        """How many sessions are ``pending`` and ``proven`` unattributed."""
        return self._unattributed.counts(guru)

    def settle_attribution(self, guru: str, proven: Sequence[str], at: datetime) -> None:
        """Drop attributed sessions from the queue and mark ``proven`` ones (one transaction)."""
        self._unattributed.settle(guru, proven, at)

    def requeue_unattributed(self, guru: str, checked_before: datetime) -> int:
        """Proven-unattributed sessions checked before ``checked_before`` that moved since
        go back to pending; returns how many."""
        return self._unattributed.requeue_changed(guru, checked_before)

    def user_activity(self, guru: str, users: Sequence[str]) -> dict[str, datetime]:
        """The newest cached ``last_used`` attributed to each of ``users`` (absent: none)."""
        return self._unattributed.user_activity(guru, users)

    # --- overview -----------------------------------------------------------------------

    def gurus(self) -> list[str]:
        """Every guru slug the cache knows (from sessions, runs or sync state), sorted."""
        return self._overview.gurus()

    def summary(self, guru: str) -> dict[str, Any]:
        """Counts and extremes for a one-line repr of a guru's cache."""
        return self._overview.summary(guru)

    def status(self, guru: str) -> dict[str, Any]:
        """``summary()`` plus ``first_event``/``last_event``: the span of live activity."""
        return self._overview.status(guru)

    def listing_sizes(self, guru: str) -> dict[str, int]:
        """Live cached sessions: ``''`` all of the guru's, ``'user:<id>'`` per attributed user."""
        return self._overview.listing_sizes(guru)
