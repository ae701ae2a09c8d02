"""Sync a guru's sessions into the cache: the only module that knows client *and* store.

One sync walks every *listing* asked for in one run with one summary: the guru-wide one
(``''``, or ``search:<q>``) and one per given external user (``user:<id>``, or
``user:<id>|search:<q>``); ``guru_wide=False`` skips the guru-wide one (a partial cache, and the
summary says so). Each listing:

1. resumes an interrupted pass (from the page before the last one written), or runs a full
   pass (first time, or ``full=True``), or an incremental pass that stops at the first row
   strictly older than the listing's committed watermark;
2. writes the pages (the client's typed rows, no DataFrame) in batches, each one transaction
   with the pass's position: several pages per transaction when they arrive fast (every
   ``BATCH_PAGES`` pages or ``BATCH_SECONDS``), and always before any wait, so a throttled
   sync commits each page before sleeping and a kill loses at most one batch, which the
   resume reads again; memory stays flat (no rows are kept, DuckDB's memory is capped);
3. re-reads from page 1 down to the previous pass's top while the previous pass took more
   than one request (sessions touched or created meanwhile sit above that top; a one-request
   pass is an atomic snapshot), at most ``max_top_ups`` times;
4. commits the watermark (newest ``last_used`` seen) only once all that is complete;
5. after a complete, not resumed, guru-wide full pass without search, marks sessions it did
   not see as deleted, except those whose ``last_used`` lies in a page-boundary gap: a
   deletion above the offset can hide such a row, so they are checked with Get Session
   (``verify_budget`` requests; over budget they stay unmarked and are counted).

With ``messages=True`` sessions that are new or changed since their messages were fetched
get one Get Session each (newest first, at most ``max_requests`` requests).

With ``questions=True`` (after the listings, before messages) one Export Analytics request
stores every question since the last export (``sync_questions``), committed at once.

The package, by responsibility: ``_listings`` (the listings, the users file, the page batch),
``_users`` (the attribution sweep: the guru-wide listing as the change feed, issue 13),
``_phases`` (the questions export and Get Session answers), ``_summary`` (``SyncSummary``);
this module holds the engine (``_Syncer``: passes, top-ups, deletions, messages) and the entry
points. Every public name is importable from ``guru_analytics.sync``.

Progress reaches callers through ``on_progress`` (``progress.SyncProgress``, see the contract
there) and pre-wait flushing through the limiter's observers; the tqdm bar is one consumer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import ConfigError, GuruAnalyticsError, NotFoundError
from ..interrupts import is_interrupt, sigint_held_off
from ..paging import DEFAULT_TIE_REREAD_BUDGET, PageView, Pass, Row, is_suspect
from ..progress import ProgressCallback, ProgressEstimator, TqdmProgress, bar_wanted
from ..store import LISTING_COLUMNS, ListedPage, SyncState
from ..timestamps import instant, utc_now
from ._listings import (
    BATCH_PAGES,
    BATCH_SECONDS,
    MAX_USERS_FILE_BYTES,
    YIELD_EVERY,
    Listing,
    _PageBatch,
    listings_for,
    read_users_file,
)
from ._phases import (
    EXPORT_OVERLAP,
    QUESTION_INTERVALS,
    _Answers,
    message_frame,
    question_interval,
    sync_questions,
)
from ._summary import SyncSummary, _listing_label
from ._users import RECHECK_AFTER, RECHECK_CHOICES, Sweep, check_recheck, users_in_step

__all__ = [
    "BATCH_PAGES",
    "BATCH_SECONDS",
    "EXPORT_OVERLAP",
    "MAX_USERS_FILE_BYTES",
    "QUESTION_INTERVALS",
    "RECHECK_CHOICES",
    "YIELD_EVERY",
    "Listing",
    "SyncSummary",
    "listings_for",
    "message_frame",
    "question_interval",
    "read_users_file",
    "sync",
    "sync_guru",
    "sync_questions",
]

if TYPE_CHECKING:
    from ..client import Conversation, GurubaseClient, Page
    from ..store import Store

_log = logging.getLogger("guru_analytics.sync")

# Waits longer than this release the cache file first, so other processes can read it.
RELEASE_BEFORE_WAIT = 1.0
# DuckDB settings of the sync's connection. One thread: a page batch is small, and every extra
# thread keeps its own buffers (measured: ~40 MB less peak RSS at 100k sessions, about the same
# speed). No memory_limit: DuckDB keeps a table's ART indexes resident and cannot evict them,
# so a cap below the indexes' size fails the write with "Out of Memory" (seen at 100k sessions
# with 32 MB) instead of bounding anything; benchmarks/scaling.py shows what remains.
SYNC_SETTINGS = {"threads": "1"}
# Sessions per listing page (the API's page size): the progress estimate of a full pass.
PAGE_SIZE = 30
DEFAULT_VERIFY_BUDGET = 20
DEFAULT_MAX_TOP_UPS = 5
# Pending message fetches are read from the cache this many at a time.
MESSAGE_CHUNK = 500
# Get Session answers are written this many to a transaction: a transaction costs milliseconds
# whatever its size, so one per answer dominated a fast (local or lightly limited) messages
# phase. Answers are also written before any wait that releases the cache file and when the
# phase ends or fails, so a kill loses at most this many (they stay pending, fetched again).
MESSAGE_BATCH = 50
# Distinct ids kept per kind of odd row (suspect last_used, repaired text) for the summary's
# notes: such rows are rare, and a hostile listing of nothing else must not fill memory.
ODD_IDS_KEPT = 10_000


# --- progress -------------------------------------------------------------------------------


# --- the engine -----------------------------------------------------------------------------


@dataclass
class _Plan:
    listing: Listing
    mode: str  # 'full' | 'incremental' | 'resume'
    state: SyncState | None


@dataclass
class _Deferred:
    """The guru-wide main pass whose top-up waits for the end of the run (one for all)."""

    plan: _Plan
    main: Pass
    started_at: datetime


class _CachedRow(NamedTuple):
    """A cached session re-written with the ``last_used`` Get Session showed (``ListedRow``)."""

    id: str
    last_used: datetime
    guru_type_name: str | None
    root_question_name: str | None
    root_question_slug: str | None
    root_question_link: str | None
    extra: str | None


class _OddIds:
    """Distinct ids of rare rows, for a note; counts past ``ODD_IDS_KEPT`` are a lower bound."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.more = False

    def add(self, sid: str) -> None:
        if len(self.ids) < ODD_IDS_KEPT:
            self.ids.add(sid)
        elif sid not in self.ids:
            self.more = True

    def __bool__(self) -> bool:
        return bool(self.ids)

    def __str__(self) -> str:
        return f"{len(self.ids)}{'+' if self.more else ''}"


class _Syncer:
    """State of one sync() call: the client, the store, counters, the page batch, progress."""

    def __init__(
        self,
        guru: str,
        client: GurubaseClient,
        store: Store,
        clock: Callable[[], datetime],
        summary: SyncSummary,
        progress: ProgressEstimator,
        batch: _PageBatch,
        verify_budget: int,
        tie_reread_budget: int,
        max_top_ups: int,
    ) -> None:
        self.guru = guru
        self.client = client
        self.store = store
        self.clock = clock
        self.summary = summary
        self.progress = progress
        self.batch = batch
        self.verify_budget = verify_budget
        self.tie_reread_budget = tie_reread_budget
        self.max_top_ups = max_top_ups
        self.base = _counters(client)
        self.answers = _Answers(store, guru)
        self.suspect = _OddIds()  # listed with a last_used that cannot be true
        self.repaired = _OddIds()  # listed with undecodable text, stored repaired
        self.queue_feed = False  # guru-wide pages queue new sessions for attribution
        self.deferred: _Deferred | None = None  # the guru-wide top-up left for the run's end
        self.top_up_owed = False  # a user listing skipped its own top-up
        self.owed: list[str] = []  # user listings whose completion waits for the run's end

    # --- bookkeeping ---

    def refresh_counts(self) -> None:
        now = _counters(self.client)
        s = self.summary
        s.requests, s.throttled, s.retries = (now[i] - self.base[i] for i in range(3))

    def on_wait(self, seconds: float) -> None:
        """Limiter observer: commit what was read before any wait, and release the cache
        file before a long one (other processes read it meanwhile)."""
        self.batch.flush()
        if seconds > RELEASE_BEFORE_WAIT:
            self.answers.flush()
            self.store.release()
            self.batch.released()

    def on_tick(self, left: float) -> None:
        """Limiter observer: a wait's countdown, at least once a second."""
        self.refresh_counts()
        self.progress.emit("wait", left)

    # --- one listing ---

    def run_listing(self, plan: _Plan, *, defer_top_up: bool = False) -> datetime | None:
        """Read one listing (see the module docstring); returns its committed watermark."""
        listing, state = plan.listing, plan.state
        key = listing.key
        self.progress.start_listing(_listing_label(key))
        watermark = state.watermark if state is not None else None
        if plan.mode == "resume" and state is not None:
            start = max(1, int(state.pass_next_page or 1) - 1)
            pass_mode = state.pass_mode or "full"
            stop_below = watermark if pass_mode == "incremental" else None
            started_at = state.pass_started_at or self.clock()
            saved_top = state.pass_top if start > 1 else None
            main = self._new_pass(stop_below, start, saved_top)
        else:
            pass_mode = plan.mode
            stop_below = watermark if plan.mode == "incremental" else None
            started_at = self.clock()
            main = self._new_pass(stop_below, 1, None)
        self.batch.add(
            key,
            None,
            pass_mode=pass_mode,
            pass_started_at=started_at,
            pass_top=main.top,
            pass_next_page=main.start_page,
        )
        self._walk(main, listing, save=True)
        if defer_top_up and plan.mode != "resume":
            # one top-up for the whole run, after the user listings (``finish_top_up``)
            passes = [main]
            if listing.guru_wide:
                self.deferred = _Deferred(plan, main, started_at)
            elif main.stats.requests > 1:
                self.top_up_owed = True
        else:
            passes = self._top_ups(main, listing, resumed=plan.mode == "resume")
        newest = [p.max_seen for p in passes if p.max_seen is not None]
        if pass_mode == "incremental" and watermark is not None:
            newest.append(watermark)  # never move an incremental watermark back
        self.batch.flush()  # deletions are judged against every row written
        if plan.mode == "full" and listing.guru_wide and self.deferred is None:
            self._mark_deletions(main, started_at)
        elif plan.mode == "resume" and listing.guru_wide and pass_mode == "full":
            self.summary.notes.append(
                "resumed an interrupted full pass: deletions are not marked this time "
                "(run --full again to mark them)"
            )
        committed = max(newest) if newest else None
        # A user listing read without its own top-up is complete only once the run's top-up
        # and sweep are (``complete_owed``): killed before that, it is read again next run.
        owed = defer_top_up and plan.mode != "resume" and not listing.guru_wide
        if owed:
            self.owed.append(key)
        finished = {} if owed else {"completed_at": self.clock()}
        self.batch.add(
            key,
            None,
            watermark=committed,
            **finished,
            pass_mode=None,
            pass_started_at=None,
            pass_top=None,
            pass_next_page=None,
        )
        self.batch.flush()
        self.progress.end_listing()
        return committed

    def _top_ups(
        self, main: Pass, listing: Listing, *, resumed: bool, force: bool = False
    ) -> list[Pass]:
        """Re-read page 1 down to the previous pass's top while that pass took more than one
        request (a resumed or ``force``d pass always gets one); returns every pass."""
        key = listing.key
        passes = [main]
        prev = main
        while (prev.stats.requests > 1 or prev is main and (resumed or force)) and (
            prev.top is not None
        ):
            if len(passes) > self.max_top_ups:
                self.summary.notes.append(
                    f"{_listing_label(key)}: the list kept moving after "
                    f"{self.max_top_ups} top-up passes; the next sync picks up the rest"
                )
                break
            top_up = self._new_pass(prev.top, 1, None)
            self._walk(top_up, listing, save=False)
            self.summary.top_ups += 1
            passes.append(top_up)
            prev = top_up
        return passes

    def finish_top_up(self) -> datetime | None:
        """The run's one deferred top-up of the guru-wide listing: page 1 down to its main
        pass's top, when that pass or a user listing took more than one request (sessions
        touched or created meanwhile sit above it). Then deletions (a full pass) and the
        watermark. Returns the main pass's top: cached sessions at or above it changed
        during the run, so a user listing read earlier may have missed them."""
        d = self.deferred
        self.deferred = None
        if d is None:
            return None
        listing = d.plan.listing
        force = d.main.stats.requests > 1 or self.top_up_owed
        self.progress.start_listing(_listing_label(listing.key))
        passes = self._top_ups(d.main, listing, resumed=False, force=force)
        self.batch.flush()
        if d.plan.mode == "full":
            self._mark_deletions(d.main, d.started_at)
        newest = [p.max_seen for p in passes[1:] if p.max_seen is not None]
        state = self.store.get_state(self.guru, listing.key)
        if state is not None and state.watermark is not None:
            newest.append(state.watermark)
        if newest:
            self.batch.add(listing.key, None, watermark=max(newest))
            self.batch.flush()
        self.progress.end_listing()
        return d.main.top if len(passes) > 1 else None

    def complete_owed(self) -> None:
        """The run's top-up and sweep are done: the user listings read without their own
        top-up are complete now (they count as in step from here on)."""
        for key in self.owed:
            self.batch.add(key, None, completed_at=self.clock())
        self.owed = []
        self.batch.flush()

    def skip_listing(self, plan: _Plan, feed_watermark: datetime | None) -> None:
        """A user listing with nothing to attribute (see ``_users.Sweep``): no request; its
        watermark moves up to the guru-wide one, which already covers its sessions."""
        assert plan.state is not None
        marks = [w for w in (plan.state.watermark, feed_watermark) if w is not None]
        self.batch.add(
            plan.listing.key,
            None,
            watermark=max(marks) if marks else None,
            completed_at=self.clock(),
        )
        self.batch.flush()
        self.progress.end_listing()

    def _new_pass(self, stop_below: datetime | None, start: int, top: datetime | None) -> Pass:
        return Pass(
            stop_below=stop_below,
            start_page=start,
            top=top,
            tie_reread_budget=self.tie_reread_budget,
            remember_ids=False,
        )

    def _walk(
        self,
        p: Pass,
        listing: Listing,
        *,
        save: bool,
        after_page: Callable[[Page], bool] | None = None,
    ) -> None:
        """Drive one pass: fetch, buffer (with the pass's position), feed, flush when due.

        ``after_page(page)`` True ends the pass early (the attribution sweep found what it
        was looking for). Guru-wide pages of a sync with users queue their new sessions for
        attribution (``queue_new``)."""
        user = listing.external_user_id
        queue_new = self.queue_feed and listing.guru_wide
        while (n := p.next_page()) is not None:
            page = self.client.list_sessions(
                self.guru,
                n,
                search_query=listing.search_query,
                external_user_id=user,
            )
            now = page.date or self.clock()  # the server's clock, else ours
            rows = [Row(s.id, s.last_used, is_suspect(s.last_used, now)) for s in page.sessions]
            for s, row in zip(page.sessions, rows, strict=True):
                if row.suspect:
                    self.suspect.add(s.id)
                if s.repaired:
                    self.repaired.add(s.id)
            p.feed(PageView(page.page_num, page.has_more, rows))
            state = {"pass_top": p.top, "pass_next_page": p.resume_page} if save else {}
            self.batch.add(listing.key, ListedPage(page.sessions, user, queue_new), **state)
            if self.batch.due() or (save and p.stats.requests == 1):
                self.batch.flush()  # a pass's first page at once: its position is on disk
            self.summary.pages += 1
            self.progress.pages += 1
            self.progress.sessions += len(page.sessions)
            self.refresh_counts()
            self.progress.emit("listing")
            if after_page is not None and after_page(page):
                break
        self.summary.tie_rereads += p.stats.tie_rereads
        if p.stats.ties_unresolved:
            self.summary.notes.append(
                f"{_listing_label(listing.key)}: {p.stats.tie_members_missing} session(s) of "
                f"{p.stats.ties_unresolved} tie group(s) stayed hidden after re-reads"
            )

    def note_odd_rows(self) -> None:
        """Say in the summary how many sessions came with suspect or repaired fields."""
        if self.suspect:
            self.summary.notes.append(
                f"{self.suspect} suspect session(s): last_used later than the server's clock "
                "+ 1 day or before 2023; kept, but never used as a watermark"
            )
        if self.repaired:
            self.summary.notes.append(
                f"{self.repaired} session(s) had undecodable text (lone UTF-16 surrogates), "
                "stored with U+FFFD in its place"
            )

    # --- deletions ---

    def _mark_deletions(self, main: Pass, started_at: datetime) -> None:
        unseen = self.store.unseen_since(self.guru, started_at)
        if unseen is None or unseen.empty:
            return
        unseen = unseen.sort_values("last_used", ascending=False)
        gone: list[str] = []
        suspects = 0
        row: Any  # a pandas row tuple with the frame's column names
        for row in unseen.itertuples(index=False):
            sid = str(row.id)
            if not main.in_gap(_to_datetime(row.last_used)):
                gone.append(sid)
                continue
            suspects += 1
            if suspects > self.verify_budget:
                self.summary.unverified += 1
                continue
            try:
                conv = self.client.get_session(sid)
            except NotFoundError:
                gone.append(sid)
            else:
                self.summary.verified += 1
                self._keep(row._asdict(), conv)
            self.refresh_counts()
        if self.summary.unverified:
            self.summary.notes.append(
                f"{self.summary.unverified} unseen session(s) near page boundaries were left "
                "unmarked (verify budget spent); the next full sync checks them again"
            )
        if gone:
            self.store.mark_deleted(self.guru, gone, self.clock())
            self.summary.sessions_deleted += len(gone)

    def _keep(self, cached: dict[str, Any], conv: Conversation) -> None:
        """A session hidden by a deletion-shift: record it as seen with its current last_used,
        and keep the messages the check fetched anyway."""
        row = _CachedRow(
            str(cached["id"]),
            conv.last_used,
            *(_text(cached.get(c)) for c in LISTING_COLUMNS[2:]),
        )
        (written,) = self.store.write_pages(self.guru, [ListedPage([row])], self.clock())
        self.summary.sessions_changed += written.changed
        self.store.write_messages(
            self.guru,
            row.id,
            message_frame(conv),
            fetched_last_used=conv.last_used,
            fetched_at=self.clock(),
            status="ok",
            date_created=conv.date_created,
        )

    # --- questions ---

    def export_questions(self) -> None:
        """The questions phase: one export request, its rows committed before anything else
        (the next wait, the messages phase), then one ``"questions"`` report."""
        self.progress.listing = ""
        sync_questions(
            self.guru, client=self.client, store=self.store, clock=self.clock, summary=self.summary
        )
        self.progress.questions_planned = 0
        self.refresh_counts()
        self.progress.emit("questions")

    # --- messages ---

    def fetch_messages(self, max_requests: int | None) -> None:
        """Get Session for pending sessions, newest first, in chunks (memory stays flat)."""
        total = self.store.count_pending(self.guru)
        if total and max_requests != 0:
            self.progress.messages_planned = (
                total if max_requests is None else min(total, max_requests)
            )
            self.progress.listing = ""
            self._fetch_pending(max_requests)
        self.summary.messages_remaining = self.store.count_pending(self.guru)

    def _fetch_pending(self, max_requests: int | None) -> None:
        try:
            self._fetch_loop(max_requests)
        except BaseException:
            self._flush_after_error()
            raise
        self.answers.flush()

    def _flush_after_error(self) -> None:
        """Keep what was fetched when the phase fails; the first error is the one raised."""
        try:
            self.answers.flush()
        except GuruAnalyticsError as exc:
            _log.warning("could not store fetched messages after an error: %s", exc)

    def _fetch_loop(self, max_requests: int | None) -> None:
        start = _counters(self.client)[0]
        tried: set[str] = set()
        stuck = 0  # tried this run yet still pending (the server's last_used lags the list)
        while True:
            self.answers.flush()  # written answers are no longer pending
            limit = MESSAGE_CHUNK + stuck
            batch = self.store.pending_message_fetches(self.guru, limit=limit)
            rows: list[Any] = list(batch.itertuples(index=False))  # tuples named by column
            fresh = [r for r in rows if str(r.id) not in tried]
            stuck = len(batch) - len(fresh)
            if not fresh:
                if len(batch) < limit:
                    return
                continue
            for row in fresh:
                if max_requests is not None and _counters(self.client)[0] - start >= max_requests:
                    return
                sid = str(row.id)
                tried.add(sid)
                try:
                    conv = self.client.get_session(sid)
                except NotFoundError:
                    self.answers.add(sid, None, _to_datetime(row.last_used), self.clock())
                else:
                    self.answers.add(sid, conv, conv.last_used, self.clock())
                if len(self.answers) >= MESSAGE_BATCH:
                    self.answers.flush()
                self.summary.messages_fetched += 1
                self.progress.messages_planned = max(0, self.progress.messages_planned - 1)
                self.refresh_counts()
                self.progress.emit("messages")


def _text(value: Any) -> str | None:
    """A cached text value as str or None (pandas hands missing values back as NaN/None)."""
    return value if isinstance(value, str) else None


def _counters(client: Any) -> tuple[int, int, int]:
    st = client.stats
    return (int(st.requests), int(st.throttled), int(st.retries))


def _to_datetime(value: Any) -> datetime:
    ts = instant(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.tz_convert("UTC").to_pydatetime()


# --- entry points ---------------------------------------------------------------------------


def sync(
    guru: str,
    *,
    client: GurubaseClient,
    store: Store,
    users: Iterable[str] | None = None,
    guru_wide: bool = True,
    search: str | None = None,
    full: bool = False,
    messages: bool = False,
    max_requests: int | None = None,
    progress: bool | None = None,
    on_progress: ProgressCallback | None = None,
    clock: Callable[[], datetime] = utc_now,
    questions: bool = False,
    verify_budget: int = DEFAULT_VERIFY_BUDGET,
    tie_reread_budget: int = DEFAULT_TIE_REREAD_BUDGET,
    max_top_ups: int = DEFAULT_MAX_TOP_UPS,
    monotonic: Callable[[], float] = time.monotonic,
    recheck_unattributed: str = "full",
) -> SyncSummary:
    """Bring the cache up to date with the guru's listings; see the module docstring.

    Reads the guru-wide listing and, for each of ``users`` (external user ids: the API cannot
    list them), that user's listing, with its own watermark and attribution, in one run.
    ``guru_wide=False`` reads the user listings only (the cache then holds only their
    sessions: the summary says it is partial). ``search``: only sessions matching it.
    ``full``: re-read every listing to the end (and mark deletions, guru-wide).
    ``messages``: then fetch the messages of new/changed sessions, at most ``max_requests``
    requests (None = all). ``questions``: after the listings, one Export Analytics request for
    every question since the last export (``sync_questions``).
    ``on_progress(SyncProgress)``: called after every page and answer, after the export
    (phase ``"questions"``), each second of a wait, and once at the end (phase ``"done"``). ``progress``: a tqdm bar,
    one more consumer of the same reports (None = when stderr is a terminal or in Jupyter).
    The run is recorded in ``sync_runs``; interrupts (KeyboardInterrupt, or DuckDB's
    interrupt: ``interrupts.is_interrupt``) are recorded as ``interrupted`` and re-raised; package errors as ``error`` and re-raised.
    """
    if not isinstance(guru, str) or not guru.strip():
        raise ConfigError(f"guru slug {guru!r} is not valid: pass the slug from the guru's URL")
    guru = guru.strip()
    if max_requests is not None and (
        isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 0
    ):
        raise ConfigError(f"max_requests {max_requests!r} is not valid: use 0 or more, or None")
    if isinstance(verify_budget, bool) or not isinstance(verify_budget, int) or verify_budget < 0:
        raise ConfigError(f"verify_budget {verify_budget!r} is not valid: use 0 or more")
    if on_progress is not None and not callable(on_progress):
        raise ConfigError("on_progress must be a callable taking a SyncProgress, or None")
    if users is None and not guru_wide:
        raise ConfigError("nothing to sync: pass users=[...] or keep guru_wide=True")
    recheck = check_recheck(recheck_unattributed)
    listings = listings_for(users, search, guru_wide=guru_wide)
    plans = [_plan(store, guru, listing, full, clock) for listing in listings]
    modes = {p.mode for p in plans}
    run_mode = "resume" if "resume" in modes else "full" if "full" in modes else "incremental"
    keys = [lst.key for lst in listings]
    summary = SyncSummary(guru=guru, mode=run_mode, listings=keys)
    if not any(lst.guru_wide or lst.external_user_id is None for lst in listings):
        summary.notes.append(
            "per-user listings only (guru_wide=False): the cache holds only these users' "
            "sessions, so reports are partial"
        )
    t0 = monotonic()
    callbacks: list[ProgressCallback] = [on_progress] if on_progress is not None else []
    bar = TqdmProgress() if bar_wanted(progress) else None
    if bar is not None:
        callbacks.append(bar)
    base = _counters(client)
    limiter = getattr(client, "limiter", None)
    reports = ProgressEstimator(
        callbacks,
        lambda: _counters(client)[0] - base[0],
        getattr(limiter, "seconds_per_request", None),
        monotonic,
    )
    if callbacks:
        _estimate(reports, store, guru, plans, messages, max_requests, questions=questions)
    summary.run_id = store.begin_run(guru, run_mode, keys, listings[0].search_query or None)
    batch = _PageBatch(store, guru, clock, monotonic, summary)
    syncer = _Syncer(
        guru,
        client,
        store,
        clock,
        summary,
        reports,
        batch,
        verify_budget,
        tie_reread_budget,
        max_top_ups,
    )
    observing: AbstractContextManager[Any] = (
        limiter.observe(on_wait=syncer.on_wait, on_tick=syncer.on_tick if callbacks else None)
        if limiter is not None
        else nullcontext()
    )
    error: str | None = None
    feed_plan = plans[0] if plans[0].listing.guru_wide else None
    # users the attribution sweep handles (judged on the state before this run); see _users
    in_step = users_in_step(feed_plan, plans)
    with_users = feed_plan is not None and any(
        p.listing.external_user_id is not None for p in plans
    )
    syncer.queue_feed = with_users
    # one top-up for the whole run (after the user listings), unless the guru-wide pass resumes
    defer = with_users and feed_plan is not None and feed_plan.mode != "resume"
    try:
        with store.capped(**SYNC_SETTINGS), store.waiting_for_readers(), observing:
            try:
                feed: datetime | None = None  # the guru-wide watermark this run committed
                for plan in plans:
                    if plan in in_step:
                        continue
                    watermark = syncer.run_listing(plan, defer_top_up=defer)
                    if plan is feed_plan:
                        feed = watermark
                        if with_users and recheck == "daily" and not full:
                            store.requeue_unattributed(guru, clock() - RECHECK_AFTER)
                if in_step:
                    Sweep(syncer, in_step, feed).run()
                moved_since = syncer.finish_top_up()
                if with_users and moved_since is not None:
                    # sessions touched or created during the run: a user listing read before
                    # may have missed them; sweep the users read this run for them
                    read = [p for p in plans if p.listing.external_user_id is not None]
                    Sweep(syncer, read, None, since=moved_since).run()
                syncer.complete_owed()
                if with_users:
                    # every given user was read deep enough (or proven idle): what is still
                    # pending belongs to none of them
                    left = [sid for sid, _at in store.pending_attribution(guru)]
                    store.settle_attribution(guru, left, clock())
                    if left and in_step:
                        summary.notes.append(
                            f"{len(left)} new session(s) belong to none of the given users: "
                            "remembered, so later runs do not sweep for them again"
                        )
            except BaseException:
                batch.flush_after_error()
                raise
            syncer.note_odd_rows()
            if questions:
                syncer.export_questions()
            if messages:
                syncer.fetch_messages(max_requests)
        summary.outcome = "ok"
    except GuruAnalyticsError as exc:
        summary.outcome = "error"
        error = str(exc)
        raise
    except BaseException as exc:  # recorded, then re-raised unchanged: never swallowed
        if is_interrupt(exc):  # a Ctrl-C, also as DuckDB raises it inside a query
            summary.outcome = "interrupted"
            error = f"interrupted ({type(exc).__name__})"
        elif isinstance(exc, Exception):
            summary.outcome = "error"
            error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        syncer.refresh_counts()
        summary.seconds = monotonic() - t0
        try:
            with sigint_held_off():  # a few ms: a Ctrl-C now must not lose the run's record
                _end_run(store, summary, error)
        except GuruAnalyticsError as exc:
            if error is None:
                raise
            # keep the original error propagating: it says what went wrong first
            _log.warning("could not record the end of sync run %s: %s", summary.run_id, exc)
        finally:
            store.release()  # let other processes read the finished cache
            if bar is not None and error is not None:
                bar.close()
    reports.emit("done")
    return summary


def _plan(
    store: Store, guru: str, listing: Listing, full: bool, clock: Callable[[], datetime]
) -> _Plan:
    """How one listing is read: resume its interrupted pass, a full pass, or incremental.
    A watermark that cannot be true (written before suspect rows were recognised) is
    ignored: a full pass replaces it."""
    state = store.get_state(guru, listing.key)
    if state is not None and state.watermark is not None and is_suspect(state.watermark, clock()):
        state = dataclasses.replace(state, watermark=None)
    if (
        state is not None
        and state.pass_next_page is not None
        and not (full and state.pass_mode == "incremental")
    ):
        mode = "resume"
    elif full or state is None or state.watermark is None:
        mode = "full"
    else:
        mode = "incremental"
    return _Plan(listing, mode, state)


def _estimate(
    reports: ProgressEstimator,
    store: Store,
    guru: str,
    plans: Sequence[_Plan],
    messages: bool,
    max_requests: int | None,
    *,
    questions: bool = False,
) -> None:
    """The run's expected requests, known only when every listing was synced before."""
    if not all(p.state is not None and p.state.watermark is not None for p in plans):
        return
    sizes = store.listing_sizes(guru)
    reports.known = True
    reports.total_sessions = sizes.get("", 0)
    for p in plans:
        user = p.listing.external_user_id
        size = sizes.get(f"user:{user}" if user is not None else "", 0)
        pages = -(-size // PAGE_SIZE)
        resumed_full = p.mode == "resume" and p.state is not None and p.state.pass_mode == "full"
        if p.mode == "full" or resumed_full:
            start = (p.state.pass_next_page or 1) if resumed_full and p.state is not None else 1
            # the pages left (a resume re-reads the page before its position) and a top-up
            reports.plan.append(max(1, pages - start + 2) + (1 if pages > 1 else 0))
        else:
            reports.plan.append(1)
    if questions:
        reports.questions_planned = 1
    if messages and max_requests != 0:
        pending = store.count_pending(guru)
        reports.messages_planned = pending if max_requests is None else min(pending, max_requests)


def _end_run(store: Store, s: SyncSummary, error: str | None) -> None:
    if s.run_id is None:  # begin_run failed: there is no run to close
        return
    store.end_run(
        s.run_id,
        outcome=s.outcome,
        error=error,
        requests=s.requests,
        throttled=s.throttled,
        retries=s.retries,
        pages=s.pages,
        sessions_new=s.sessions_new,
        sessions_changed=s.sessions_changed,
        sessions_deleted=s.sessions_deleted,
        messages_fetched=s.messages_fetched,
        messages_remaining=s.messages_remaining,
        listings_skipped=s.listings_skipped,
    )


def sync_guru(
    guru: str,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    db: str | os.PathLike[str] | None = None,
    rate_limit: int | None = 10,
    rate_window: float = 60.0,
    timeout: float = 30.0,
    max_retries: int = 5,
    **options: Any,
) -> SyncSummary:
    """``sync()`` with a client and a store built here and closed afterwards.

    ``api_key``/``base_url`` fall back to ``GURUBASE_API_KEY``/``GURUBASE_BASE_URL``; ``db``
    to ``store.default_cache_path()``. Other keywords go to ``sync()``.
    """
    from ..client import GurubaseClient
    from ..store import Store

    client = GurubaseClient(
        api_key,
        base_url,
        rate_limit=rate_limit,
        rate_window=rate_window,
        timeout=timeout,
        max_retries=max_retries,
    )
    try:
        store = Store(db)
        try:
            return sync(guru, client=client, store=store, **options)
        finally:
            store.close()
    finally:
        client.close()
