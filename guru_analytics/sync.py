"""Sync a guru's sessions into the cache: the only module that knows client *and* store.

One sync walks one or more *listings* (guru-wide ``''``, per external user ``user:<id>``,
per search ``search:<q>``; a user+search listing is ``user:<id>|search:<q>``). Each listing:

1. resumes an interrupted pass (from the page before the last one written), or runs a full
   pass (first time, or ``full=True``), or an incremental pass that stops at the first row
   strictly older than the listing's committed watermark;
2. writes every page as it arrives (one bulk upsert each) and records the pass's position,
   so a kill loses at most one page of work; memory stays flat (no rows are kept);
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
stores every question since the last export (``sync_questions``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .errors import ConfigError, GuruAnalyticsError, NotFoundError
from .paging import DEFAULT_TIE_REREAD_BUDGET, PageView, Pass, Row
from .store import LISTING_COLUMNS, MESSAGE_COLUMNS
from .timestamps import utc_now
from .wire import export_range

if TYPE_CHECKING:
    from .client import Conversation, GurubaseClient, Message, Page
    from .store import QuestionWrite, Store

_log = logging.getLogger("guru_analytics.sync")

# Waits longer than this release the cache file first, so other processes can read it.
RELEASE_BEFORE_WAIT = 1.0
DEFAULT_VERIFY_BUDGET = 20
DEFAULT_MAX_TOP_UPS = 5
# Pending message fetches are read from the cache this many at a time.
MESSAGE_CHUNK = 500
# Get Session answers are written this many to a transaction: a transaction costs milliseconds
# whatever its size, so one per answer dominated a fast (local or lightly limited) messages
# phase. Answers are also written before any wait that releases the cache file and when the
# phase ends or fails, so a kill loses at most this many (they stay pending, fetched again).
MESSAGE_BATCH = 50


# --- the summary ----------------------------------------------------------------------------


@dataclass
class SyncSummary:
    """What one ``sync()`` did; ``str()`` renders a small table."""

    guru: str
    mode: str
    listings: list[str]
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    pages: int = 0
    sessions_new: int = 0
    sessions_changed: int = 0
    sessions_deleted: int = 0
    tie_rereads: int = 0
    top_ups: int = 0
    verified: int = 0
    unverified: int = 0
    messages_fetched: int = 0
    messages_remaining: int = 0
    questions_exported: int = 0
    questions_new: int = 0
    seconds: float = 0.0
    outcome: str = "running"
    run_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        names = _listings_text(self.listings)
        rows = [
            ("listings", names),
            (
                "requests",
                f"{self.requests} (pages {self.pages}, tie re-reads {self.tie_rereads}, "
                f"top-ups {self.top_ups}; 429s {self.throttled}, retries {self.retries})",
            ),
            (
                "sessions",
                f"{self.sessions_new} new, {self.sessions_changed} changed, "
                f"{self.sessions_deleted} deleted",
            ),
            ("verified", f"{self.verified} kept by Get Session, {self.unverified} unverified"),
            (
                "messages",
                f"{self.messages_fetched} sessions fetched, {self.messages_remaining} remaining",
            ),
        ]
        if self.questions_exported or self.questions_new:
            rows.append(
                ("questions", f"{self.questions_exported} exported, {self.questions_new} new")
            )
        run = f"run {self.run_id}" if self.run_id is not None else "no run"
        head = f"sync {self.guru}: {self.mode}, {self.outcome} ({run}, {self.seconds:.1f} s)"
        width = max(len(k) for k, _ in rows)
        lines = [head, *(f"  {k:<{width}}  {v}" for k, v in rows)]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _listing_label(key: str) -> str:
    return "guru-wide" if key == "" else key


def _listings_text(keys: Sequence[str], shown: int = 4) -> str:
    """Name a few listings and count the rest, so 50 users stay one readable line."""
    labels = [_listing_label(k) for k in keys]
    if len(labels) <= shown:
        return ", ".join(labels)
    return f"{', '.join(labels[:shown])} and {len(labels) - shown} more ({len(labels)} listings)"


# --- listings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One filtered view of a guru's sessions, with its own watermark in ``sync_state``."""

    key: str
    external_user_id: str | None = None
    search_query: str = ""

    @property
    def guru_wide(self) -> bool:
        return self.external_user_id is None and not self.search_query


def listings_for(users: Iterable[str] | None, search: str | None) -> list[Listing]:
    """The listings a sync walks: one per user (or the guru-wide one), narrowed by search."""
    query = _check_search(search)
    tail = f"search:{query}" if query else ""
    if users is None:
        return [Listing(tail, None, query)]
    if isinstance(users, str):
        raise ConfigError("users must be a list of external user ids, not one string")
    out: list[Listing] = []
    seen: set[str] = set()
    for user in users:
        if not isinstance(user, str) or not user.strip():
            raise ConfigError(f"external user id {user!r} is not valid: use a non-empty string")
        user = user.strip()
        if user in seen:
            continue
        seen.add(user)
        key = f"user:{user}" + (f"|{tail}" if tail else "")
        out.append(Listing(key, user, query))
    if not out:
        raise ConfigError("users is empty: pass at least one external user id, or users=None")
    return out


def _check_search(search: str | None) -> str:
    if search is None:
        return ""
    if not isinstance(search, str):
        raise ConfigError(f"search {search!r} is not valid: pass a string")
    return search.strip()  # the API strips it too


def read_users_file(path: str | Path) -> list[str]:
    """External user ids from a file: one per line, blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"users file {str(p)!r} not found: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"users file {str(p)!r} cannot be read ({type(exc).__name__})") from None
    users = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            users.append(line)
    if not users:
        raise ConfigError(f"users file {str(p)!r} holds no user ids: one id per line")
    return users


# --- the engine -----------------------------------------------------------------------------


@dataclass
class _Plan:
    listing: Listing
    mode: str  # 'full' | 'incremental' | 'resume'
    state: Any


class _Syncer:
    """State of one sync() call: the client, the store, counters and the progress bar."""

    def __init__(
        self,
        guru: str,
        client: GurubaseClient,
        store: Store,
        clock: Callable[[], datetime],
        summary: SyncSummary,
        bar: Any,
        verify_budget: int,
        tie_reread_budget: int,
        max_top_ups: int,
    ) -> None:
        self.guru = guru
        self.client = client
        self.store = store
        self.clock = clock
        self.summary = summary
        self.bar = bar
        self.verify_budget = verify_budget
        self.tie_reread_budget = tie_reread_budget
        self.max_top_ups = max_top_ups
        self.base = _counters(client)
        self.chained_hook: Callable[[float], None] | None = None
        self.answers = _Answers(store, guru)

    # --- bookkeeping ---

    def refresh_counts(self) -> None:
        now = _counters(self.client)
        s = self.summary
        s.requests, s.throttled, s.retries = (now[i] - self.base[i] for i in range(3))

    def before_wait(self, seconds: float) -> None:
        """Limiter hook: write buffered answers and release the cache file before a long
        wait; show the wait."""
        if seconds > RELEASE_BEFORE_WAIT:
            self.answers.flush()
            self.store.release()
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(f"waiting {seconds:.1f} s"), refresh=True)
        if self.chained_hook is not None:
            self.chained_hook(seconds)

    def _pace(self) -> float:
        """Seconds a page costs under the client's rate limit (0 when unlimited)."""
        lim = getattr(self.client, "limiter", None)
        if lim is None or lim.max_requests is None:
            return 0.0
        return max(lim.next_delay(), lim.window / lim.max_requests)

    def _postfix(self, extra: str = "") -> str:
        s = self.summary
        pace = self._pace()
        parts = [
            f"new {s.sessions_new}",
            f"changed {s.sessions_changed}",
            f"req {s.requests}",
        ]
        if pace:
            parts.append(f"≈{pace:.1f} s/page (rate limit)")
        if extra:
            parts.append(extra)
        return ", ".join(parts)

    def tick(self, desc: str) -> None:
        self.refresh_counts()
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=False)
            self.bar.update(1)
            self.bar.set_postfix_str(self._postfix(), refresh=True)

    # --- one listing ---

    def run_listing(self, plan: _Plan) -> None:
        listing, state = plan.listing, plan.state
        label = f"{self.guru} {_listing_label(listing.key)}"
        watermark = _field(state, "watermark")
        if plan.mode == "resume":
            start = max(1, int(_field(state, "pass_next_page") or 1) - 1)
            pass_mode = _field(state, "pass_mode") or "full"
            stop_below = watermark if pass_mode == "incremental" else None
            started_at = _field(state, "pass_started_at") or self.clock()
            saved_top = _field(state, "pass_top") if start > 1 else None
            main = self._new_pass(stop_below, start, saved_top)
        else:
            pass_mode = plan.mode
            stop_below = watermark if plan.mode == "incremental" else None
            started_at = self.clock()
            main = self._new_pass(stop_below, 1, None)
        self.store.save_state(
            self.guru,
            listing.key,
            pass_mode=pass_mode,
            pass_started_at=started_at,
            pass_top=main.top,
            pass_next_page=main.start_page,
        )
        self._walk(main, listing, label, save=True)
        passes = [main]
        prev = main
        while (prev.stats.requests > 1 or prev is main and plan.mode == "resume") and (
            prev.top is not None
        ):
            if len(passes) > self.max_top_ups:
                self.summary.notes.append(
                    f"{_listing_label(listing.key)}: the list kept moving after "
                    f"{self.max_top_ups} top-up passes; the next sync picks up the rest"
                )
                break
            top_up = self._new_pass(prev.top, 1, None)
            self._walk(top_up, listing, f"{label} (top-up)", save=False)
            self.summary.top_ups += 1
            passes.append(top_up)
            prev = top_up
        newest = [p.max_seen for p in passes if p.max_seen is not None]
        if pass_mode == "incremental" and watermark is not None:
            newest.append(watermark)  # never move an incremental watermark back
        if plan.mode == "full" and listing.guru_wide:
            self._mark_deletions(main, started_at)
        elif plan.mode == "resume" and listing.guru_wide and pass_mode == "full":
            self.summary.notes.append(
                "resumed an interrupted full pass: deletions are not marked this time "
                "(run --full again to mark them)"
            )
        self.store.save_state(
            self.guru,
            listing.key,
            watermark=max(newest) if newest else None,
            completed_at=self.clock(),
            pass_mode=None,
            pass_started_at=None,
            pass_top=None,
            pass_next_page=None,
        )

    def _new_pass(self, stop_below: datetime | None, start: int, top: datetime | None) -> Pass:
        return Pass(
            stop_below=stop_below,
            start_page=start,
            top=top,
            tie_reread_budget=self.tie_reread_budget,
            remember_ids=False,
        )

    def _walk(self, p: Pass, listing: Listing, label: str, *, save: bool) -> None:
        """Drive one pass: fetch, write (one upsert per page), feed, checkpoint."""
        while (n := p.next_page()) is not None:
            page = self.client.list_sessions(
                self.guru,
                n,
                search_query=listing.search_query,
                external_user_id=listing.external_user_id,
            )
            self._write(page, listing.external_user_id)
            p.feed(
                PageView(
                    page.page_num, page.has_more, [Row(s.id, s.last_used) for s in page.sessions]
                )
            )
            self.summary.pages += 1
            if save:
                self.store.save_state(
                    self.guru,
                    listing.key,
                    pass_top=p.top,
                    pass_next_page=p.resume_page,
                )
            self.tick(f"{label} p{n}")
        self.summary.tie_rereads += p.stats.tie_rereads
        if p.stats.ties_unresolved:
            self.summary.notes.append(
                f"{_listing_label(listing.key)}: {p.stats.tie_members_missing} session(s) of "
                f"{p.stats.ties_unresolved} tie group(s) stayed hidden after re-reads"
            )

    def _write(self, page: Page, external_user_id: str | None) -> None:
        if not page.sessions:
            return
        written = self.store.write_page(
            self.guru,
            listing_frame(page.sessions),
            self.clock(),
            external_user_id=external_user_id,
        )
        self.summary.sessions_new += int(_field(written, "new") or 0)
        self.summary.sessions_changed += int(_field(written, "changed") or 0)

    # --- deletions ---

    def _mark_deletions(self, main: Pass, started_at: datetime) -> None:
        unseen = self.store.unseen_since(self.guru, started_at)
        if unseen is None or unseen.empty:
            return
        unseen = unseen.sort_values("last_used", ascending=False)
        gone: list[str] = []
        suspects = 0
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
        row = {c: cached.get(c) for c in LISTING_COLUMNS}
        row["last_used"] = conv.last_used
        frame = pd.DataFrame([row], columns=list(LISTING_COLUMNS))
        frame["last_used"] = pd.to_datetime(frame["last_used"], utc=True)
        self._write_frame(frame)
        self._store_conversation(str(cached["id"]), conv)

    def _store_conversation(self, sid: str, conv: Conversation) -> None:
        self.store.write_messages(
            self.guru,
            sid,
            message_frame(conv),
            fetched_last_used=conv.last_used,
            fetched_at=self.clock(),
            status="ok",
            date_created=conv.date_created,
        )

    def _write_frame(self, frame: pd.DataFrame) -> None:
        written = self.store.write_page(self.guru, frame, self.clock())
        self.summary.sessions_changed += int(_field(written, "changed") or 0)

    # --- messages ---

    def fetch_messages(self, max_requests: int | None) -> None:
        """Get Session for pending sessions, newest first, in chunks (memory stays flat)."""
        total = self.store.count_pending(self.guru)
        if total and max_requests != 0:
            if self.bar is not None:
                planned = total if max_requests is None else min(total, max_requests)
                self.bar.reset(total=planned)
                self.bar.set_description_str(f"{self.guru} messages", refresh=False)
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
            fresh = [r for r in batch.itertuples(index=False) if str(r.id) not in tried]
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
                self.tick(f"{self.guru} messages")


def _counters(client: Any) -> tuple[int, int, int]:
    st = client.stats
    return (int(st.requests), int(st.throttled), int(st.retries))


def _field(obj: Any, name: str) -> Any:
    """Read a field of a state/result record whether it is a mapping or an object."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _to_datetime(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.tz_convert("UTC").to_pydatetime()


# --- frames for the store -------------------------------------------------------------------


def listing_frame(sessions: Sequence[Any]) -> pd.DataFrame:
    """The store's listing frame for one page (``extra`` as JSON text or None)."""
    frame = pd.DataFrame(
        {
            "id": pd.Series([s.id for s in sessions], dtype="str"),
            "last_used": pd.to_datetime(
                pd.Series([s.last_used for s in sessions], dtype="object"), utc=True
            ).astype("datetime64[us, UTC]"),
            "guru_type_name": pd.Series([s.guru_type_name for s in sessions], dtype="object"),
            "root_question_name": pd.Series(
                [s.root_question_name for s in sessions], dtype="object"
            ),
            "root_question_slug": pd.Series(
                [s.root_question_slug for s in sessions], dtype="object"
            ),
            "root_question_link": pd.Series(
                [s.root_question_link for s in sessions], dtype="object"
            ),
            "extra": pd.Series(
                [json.dumps(s.extra, sort_keys=True) if s.extra else None for s in sessions],
                dtype="object",
            ),
        }
    )
    return frame


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


# --- entry points ---------------------------------------------------------------------------


def _progress_wanted(progress: bool | None) -> bool:
    """``None``: a bar when a person is watching (stderr is a terminal, or a Jupyter kernel)."""
    if progress is not None:
        return bool(progress)
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return _in_jupyter_kernel()


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (not merely when ipykernel was imported somewhere)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _make_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # heavy-ish: imported only when a bar is wanted

    return tqdm(total=None, unit="page", dynamic_ncols=True, leave=True)


def sync(
    guru: str,
    *,
    client: GurubaseClient,
    store: Store,
    users: Iterable[str] | None = None,
    search: str | None = None,
    full: bool = False,
    messages: bool = False,
    max_requests: int | None = None,
    progress: bool | None = None,
    clock: Callable[[], datetime] = utc_now,
    questions: bool = False,
    verify_budget: int = DEFAULT_VERIFY_BUDGET,
    tie_reread_budget: int = DEFAULT_TIE_REREAD_BUDGET,
    max_top_ups: int = DEFAULT_MAX_TOP_UPS,
    monotonic: Callable[[], float] = time.monotonic,
) -> SyncSummary:
    """Bring the cache up to date with the guru's listings; see the module docstring.

    ``users``: external user ids (the API cannot list them); each gets its own listing,
    watermark and attribution. ``search``: sync only sessions matching it. ``full``: re-read
    every listing to the end (and mark deletions, guru-wide). ``messages``: then fetch the
    messages of new/changed sessions, at most ``max_requests`` requests (None = all).
    ``questions``: after the listings, one Export Analytics request for every question since
    the last export (``sync_questions``).
    ``progress``: a tqdm bar (None = when stderr is a terminal or in Jupyter).
    The run is recorded in ``sync_runs``; interrupts (KeyboardInterrupt) are recorded as
    ``interrupted`` and re-raised; package errors as ``error`` and re-raised.
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
    listings = listings_for(users, search)
    plans = []
    for listing in listings:
        state = store.get_state(guru, listing.key)
        if _field(state, "pass_next_page") is not None and not (
            full and _field(state, "pass_mode") == "incremental"
        ):
            mode = "resume"
        elif full or _field(state, "watermark") is None:
            mode = "full"
        else:
            mode = "incremental"
        plans.append(_Plan(listing, mode, state))
    modes = {p.mode for p in plans}
    run_mode = "resume" if "resume" in modes else "full" if "full" in modes else "incremental"
    keys = [lst.key for lst in listings]
    summary = SyncSummary(guru=guru, mode=run_mode, listings=keys)
    t0 = monotonic()
    summary.run_id = store.begin_run(guru, run_mode, keys, listings[0].search_query or None)
    bar = _make_bar(_progress_wanted(progress))
    syncer = _Syncer(
        guru, client, store, clock, summary, bar, verify_budget, tie_reread_budget, max_top_ups
    )
    limiter = getattr(client, "limiter", None)
    previous_hook = getattr(limiter, "before_wait", None)
    syncer.chained_hook = previous_hook
    if limiter is not None:
        limiter.before_wait = syncer.before_wait
    error: str | None = None
    try:
        for plan in plans:
            syncer.run_listing(plan)
        if questions:
            sync_questions(guru, client=client, store=store, clock=clock, summary=summary)
        if messages:
            syncer.fetch_messages(max_requests)
        summary.outcome = "ok"
    except KeyboardInterrupt:
        summary.outcome = "interrupted"
        error = "interrupted (KeyboardInterrupt)"
        raise
    except GuruAnalyticsError as exc:
        summary.outcome = "error"
        error = str(exc)
        raise
    except Exception as exc:  # recorded, then re-raised unchanged: never swallowed
        summary.outcome = "error"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if limiter is not None:
            limiter.before_wait = previous_hook
        if bar is not None:
            bar.close()
        syncer.refresh_counts()
        summary.seconds = monotonic() - t0
        try:
            _end_run(store, summary, error)
        except GuruAnalyticsError as exc:
            if error is None:
                raise
            # keep the original error propagating: it says what went wrong first
            _log.warning("could not record the end of sync run %s: %s", summary.run_id, exc)
        store.release()  # let other processes read the finished cache
    return summary


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
    idempotently (``Store.write_questions``); adds ``questions_exported`` (rows in the
    export) and ``questions_new`` to ``summary``, and a note when a gap could not be covered."""
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


def _end_run(store: Store, s: SyncSummary, error: str | None) -> None:
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
    from .client import GurubaseClient
    from .store import Store

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
