"""One pass over an offset-paged, last_used-ordered listing, as a pure state machine.

List Sessions pages by offset over a list that moves while we read it: touched and new
sessions jump to the top (rows below shift down: duplicates), deleted ones vanish (rows
below shift up: a row at a page boundary is skipped), and sessions with equal ``last_used``
come in a fresh random order on every request. A :class:`Pass` decides which page to ask
for next, when the listing is complete (``has_more`` false, or a row older than
``stop_below``), re-reads pages around tie groups that straddle a page boundary until every
member has shown up (bounded), and records the page-boundary *gaps* where a deletion-shift
could have hidden a row, so the caller can verify exactly those sessions.

A row whose ``last_used`` cannot be true (``is_suspect``: after the server's clock plus a
day, or before Gurubase existed) is kept but never timed: it sets no ``max_seen`` (so no
watermark), no ``top``, no stop and no gap, or one session stamped 9999 would end every
later incremental pass at page 1.

No HTTP and no database here, and no import of the client or the store: the caller turns
its pages into :class:`PageView` s, so this logic is tested with scripted pages and a
paging bug cannot hide on both sides of the wire.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .errors import ConfigError, EndlessListingError
from .timestamps import CLOCK_SKEW, EARLIEST_PLAUSIBLE


def is_suspect(last_used: datetime, now: datetime) -> bool:
    """Whether a ``last_used`` is outside ``[EARLIEST_PLAUSIBLE, now + CLOCK_SKEW]`` (``now``:
    the server's clock when it answered, else ours)."""
    return last_used < EARLIEST_PLAUSIBLE or last_used > now + CLOCK_SKEW


# Re-reads allowed per page boundary inside a tie group (a group over k+1 pages gets k×this).
DEFAULT_TIE_REREAD_BUDGET = 8
# Forward pages in a row that may bring nothing new (empty, or only rows already passed)
# before a listing is declared endless: this many, plus half the pages that did bring
# something. Sessions without a first question are cut after the page, so a real listing
# can show a few empty pages in a row; a server repeating itself cannot keep going for ever.
STALL_SLACK = 16


@dataclass(frozen=True, slots=True)
class Row:
    """What paging needs of a listed session: its id and its ``last_used`` (tz-aware);
    ``suspect``: that instant cannot be true (``is_suspect``), so it is never timed."""

    id: str
    last_used: datetime
    suspect: bool = False


@dataclass(frozen=True)
class PageView:
    """One answered page: its number, the ``has_more`` flag and its rows in server order."""

    page_num: int
    has_more: bool
    rows: Sequence[Row]


@dataclass(frozen=True, slots=True)
class Gap:
    """The ``last_used`` range between two consecutive non-empty forward pages.

    ``low`` is the newest row of the lower page, ``high`` the oldest row of the upper one. A
    row skipped at this boundary (because something above the offset was deleted between the
    two requests) has its ``last_used`` inside ``[low, high]``. Recorded only when the pages
    do not overlap (``low <= high``): an overlap means the list shifted down, never up.
    """

    upper_page: int
    lower_page: int
    low: datetime
    high: datetime

    def contains(self, ts: datetime) -> bool:
        return self.low <= ts <= self.high


@dataclass
class TieSpan:
    """A group of rows sharing one ``last_used`` that straddles one or more page boundaries.

    The server reshuffles the group on every request, so two reads of adjacent pages can
    show the same member twice and hide another. ``counts`` holds how many group rows each
    page showed on its latest read (the group's slots); the group is fully seen when the
    union of members reaches the sum of those slots. If a re-read shows a page's slot count
    changed, the list moved under us: every other page's count is stale until re-read.
    """

    value: datetime
    pages: list[int]
    counts: dict[int, int]
    last_read: dict[int, int]
    members: set[str]
    budget: int = 0
    rereads: int = 0
    fresh_since: int = 0

    @property
    def target(self) -> int:
        return sum(self.counts.values())

    def stale(self) -> list[int]:
        return [p for p in self.pages if self.last_read.get(p, 0) < self.fresh_since]

    @property
    def resolved(self) -> bool:
        return not self.stale() and len(self.members) >= self.target

    def choose_page(self) -> int:
        """The next page to re-read: a stale one first (stalest), else the page showing most
        group slots (most new members per request), stalest on equal counts."""
        stale = self.stale()
        if stale:
            return min(stale, key=lambda p: self.last_read.get(p, 0))
        return max(self.pages, key=lambda p: (self.counts.get(p, 0), -self.last_read.get(p, 0)))


@dataclass
class _Anchor:
    """The previous non-empty forward page: what a boundary check needs of it."""

    page_num: int
    oldest: datetime
    oldest_ids: set[str]
    read_at: int


@dataclass
class PassStats:
    """Counters of one pass, for summaries and tests."""

    requests: int = 0
    pages: int = 0
    rows: int = 0
    duplicates: int = 0
    tie_rereads: int = 0
    tie_spans: int = 0
    ties_unresolved: int = 0
    tie_members_missing: int = 0
    empty_pages: int = 0
    shift_duplicates: int = 0
    stale_pages: int = 0
    suspect: int = 0  # rows whose last_used cannot be true (counted on every read)


@dataclass
class Pass:
    """Read a listing from ``start_page`` until it is complete.

    Drive it with ``while (n := p.next_page()) is not None: p.feed(view_of(fetch(n)))``.

    - ``stop_below``: complete at the first forward page holding a row strictly older than
      this (an incremental pass stops at the previous watermark). ``None`` reads to the end.
    - ``has_more`` false is the only other end: short and empty pages mean nothing.
    - ``top``: newest ``last_used`` of the first non-empty forward page (or the value given,
      for a resumed pass); the next top-up pass stops below it.
    - ``remember_ids``: keep ``seen`` (id → newest ``last_used``). Off, memory stays flat
      for any listing size (counters, gaps and tie groups only).
    - A forward page brings something new when it holds a row below the oldest one passed
      so far (or a tie member not seen at that instant). ``stall_slack`` + half the pages
      that did are allowed in a row without; one more raises ``EndlessListingError``.
    """

    stop_below: datetime | None = None
    start_page: int = 1
    top: datetime | None = None
    tie_reread_budget: int = DEFAULT_TIE_REREAD_BUDGET
    remember_ids: bool = True
    stall_slack: int = STALL_SLACK
    stats: PassStats = field(default_factory=PassStats)
    seen: dict[str, datetime] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    max_seen: datetime | None = None
    forward_done: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.start_page, bool) or not isinstance(self.start_page, int):
            raise ConfigError(f"start_page {self.start_page!r} is not valid: use a page number")
        if self.start_page < 1:
            raise ConfigError(f"start_page {self.start_page} is not valid: pages start at 1")
        if self.tie_reread_budget < 0:
            raise ConfigError("tie_reread_budget must be 0 or more")
        if self.stall_slack < 0:
            raise ConfigError("stall_slack must be 0 or more")
        self._next_forward = self.start_page
        self._anchor: _Anchor | None = None
        self._open: TieSpan | None = None
        self._resolving: list[TieSpan] = []
        self._asked: int | None = None
        self._asked_reread = False
        self._merged: tuple[list[datetime], list[datetime]] | None = None
        # Set once this listing shows two sessions sharing a last_used: from then on a lone
        # repeated row at a boundary may be a two-member tie and is re-read, not assumed.
        self._ties_seen = False
        # The forward walk's frontier: the oldest last_used passed so far and the ids seen
        # at exactly that instant (a tie group's size at most), to tell progress from repeats.
        self._frontier: datetime | None = None
        self._frontier_ids: set[str] = set()
        self._progress_pages = 0
        self._stale_from: int | None = None

    # --- driving ----------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.forward_done and not self._resolving

    @property
    def resume_page(self) -> int:
        """The first page not fully settled: an unresolved tie group's first page, else the next
        forward page. Persist this so a killed pass can resume without losing a tie group."""
        pages = [s.pages[0] for s in self._resolving]
        if self._open is not None:
            pages.append(self._open.pages[0])
        if self._stale_from is not None:
            pages.append(self._stale_from)  # do not carry a run of empty repeats over a restart
        return min([*pages, self._next_forward])

    def next_page(self) -> int | None:
        """The page to request next (a tie re-read or the next forward page), None when done."""
        if self._resolving:
            self._asked, self._asked_reread = self._resolving[0].choose_page(), True
        elif not self.forward_done:
            self._asked, self._asked_reread = self._next_forward, False
        else:
            self._asked = None
        return self._asked

    def feed(self, view: PageView) -> None:
        """Consume the answer to the page ``next_page()`` returned."""
        if self._asked is None or view.page_num != self._asked:
            raise ConfigError(
                f"page {view.page_num} was fed but page {self._asked} was asked for: feed the "
                "answer to next_page()"
            )
        self._asked = None
        self.stats.requests += 1
        self._observe(view.rows)
        if self._asked_reread:
            self._feed_reread(_timed(view))
        else:
            self._feed_forward(view)

    # --- questions for the caller ----------------------------------------------------

    def in_gap(self, ts: datetime) -> bool:
        """Whether ``ts`` lies in a page-boundary gap (a row there may have been skipped)."""
        if not self.gaps:
            return False
        if self._merged is None:
            spans = sorted((g.low, g.high) for g in self.gaps)
            lows: list[datetime] = []
            highs: list[datetime] = []
            for low, high in spans:
                if highs and low <= highs[-1]:
                    highs[-1] = max(highs[-1], high)
                else:
                    lows.append(low)
                    highs.append(high)
            self._merged = (lows, highs)
        lows, highs = self._merged
        i = bisect.bisect_right(lows, ts) - 1
        return i >= 0 and ts <= highs[i]

    # --- internals --------------------------------------------------------------------

    def _observe(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self.stats.rows += 1
            if row.suspect:
                self.stats.suspect += 1
            elif self.max_seen is None or row.last_used > self.max_seen:
                self.max_seen = row.last_used
            if self.remember_ids:
                before = self.seen.get(row.id)
                if before is not None:
                    self.stats.duplicates += 1
                if before is None or row.last_used > before:
                    self.seen[row.id] = row.last_used

    def _feed_forward(self, view: PageView) -> None:
        self.stats.pages += 1
        self._next_forward = view.page_num + 1
        timed = _timed(view)
        # progress is judged on timed rows too: one year-1 row out of order must not freeze
        # the frontier (a listing showing nothing but suspect rows for pages is not real)
        self._check_progress(timed)
        rows = timed.rows
        if rows and not self._ties_seen:
            self._ties_seen = len({r.last_used for r in rows}) < len({r.id for r in rows})
        if rows:
            newest = max(r.last_used for r in rows)
            oldest = min(r.last_used for r in rows)
            if self.top is None:
                self.top = newest
            self._boundary(view.page_num, rows, newest, oldest)
            self._anchor = _Anchor(
                view.page_num,
                oldest,
                {r.id for r in rows if r.last_used == oldest},
                self.stats.requests,
            )
        elif not view.rows:
            self.stats.empty_pages += 1
        stop = self.stop_below
        if not view.has_more or (stop is not None and any(r.last_used < stop for r in rows)):
            self.forward_done = True
            if self._open is not None:
                self._close(self._open)

    def _check_progress(self, view: PageView) -> None:
        """Count forward pages that bring nothing new; raise once a run of them outgrows what
        the listing has shown (a server repeating a page or sending empty pages for ever)."""
        new = False
        for r in view.rows:
            if self._frontier is None or r.last_used < self._frontier:
                self._frontier, self._frontier_ids = r.last_used, {r.id}
                new = True
            elif r.last_used == self._frontier and r.id not in self._frontier_ids:
                self._frontier_ids.add(r.id)
                new = True
        if new or not view.has_more:
            self._progress_pages += new
            self._stale_from = None
            return
        self.stats.stale_pages += 1
        if self._stale_from is None:
            self._stale_from = view.page_num
        run = view.page_num - self._stale_from + 1
        allowed = self.stall_slack + self._progress_pages // 2
        if run > allowed:
            raise EndlessListingError(
                f"the listing kept answering has_more=true for {run} pages in a row (pages "
                f"{self._stale_from}-{view.page_num}) without a session it had not shown "
                "already; stopped so the sync does not run for ever: check the base URL, or "
                "report the server's behaviour",
                status=200,
            )

    def _boundary(self, page: int, rows: Sequence[Row], newest: datetime, oldest: datetime) -> None:
        """Record the gap to the previous non-empty page and follow tie groups across it."""
        prev = self._anchor
        if prev is None:
            return
        if newest <= prev.oldest:
            self.gaps.append(Gap(prev.page_num, page, newest, prev.oldest))
            self._merged = None
        t = prev.oldest
        tied = {r.id for r in rows if r.last_used == t}
        n_tied = sum(1 for r in rows if r.last_used == t)
        span = self._open
        if newest > t:
            # Rows newer than the group came again: the list shifted down by more than the
            # group's slots on the previous page, so this page holds the group's start and
            # whatever it had there: no member can hide across this boundary.
            self._open = None
            n_tied = 0
            if oldest == t:
                self._open = TieSpan(
                    t, [page], {page: len(tied)}, {page: self.stats.requests}, tied
                )
            return
        if not n_tied:
            if span is not None:
                self._close(span)
            return
        if (span is None or span.value != t) and self._lone_repeat(prev, tied, n_tied):
            # One row, the same on both sides: in a listing with no ties so far that is a
            # shift down by one (a session touched or created between the two requests),
            # the commonest drift there is. Re-reading it would cost two requests per
            # follow-up question during a crawl; the boundary stays a gap, so a cached
            # session hiding there is still verified before it could be marked deleted.
            if span is not None:
                self._close(span)
            self.stats.shift_duplicates += 1
            return
        if span is None or span.value != t:
            if span is not None:
                self._close(span)
            span = TieSpan(
                value=t,
                pages=[prev.page_num],
                counts={prev.page_num: len(prev.oldest_ids)},
                last_read={prev.page_num: prev.read_at},
                members=set(prev.oldest_ids),
            )
            self._open = span
        span.pages.append(page)
        span.counts[page] = n_tied
        span.last_read[page] = self.stats.requests
        span.members |= tied
        if oldest != t:
            self._close(span)

    def _lone_repeat(self, prev: _Anchor, tied: set[str], n_tied: int) -> bool:
        """Whether the boundary shows one row on each side, the same one, in tie-free data."""
        if self._ties_seen:
            return False
        if n_tied == 1 and len(prev.oldest_ids) == 1 and tied == prev.oldest_ids:
            return True
        self._ties_seen = True  # distinct ids share the boundary's last_used: a real tie
        return False

    def _close(self, span: TieSpan) -> None:
        """A tie group's last page is known: queue re-reads if members may be hidden."""
        if self._open is span:
            self._open = None
        if self.stop_below is not None and span.value < self.stop_below:
            return
        self.stats.tie_spans += 1
        span.budget = self.tie_reread_budget * (len(span.pages) - 1)
        self._settle(span)

    def _settle(self, span: TieSpan) -> None:
        if span in self._resolving:
            self._resolving.remove(span)
        if span.resolved:
            return
        if span.rereads >= span.budget:
            self.stats.ties_unresolved += 1
            self.stats.tie_members_missing += span.target - len(span.members)
            return
        self._resolving.append(span)

    def _feed_reread(self, view: PageView) -> None:
        span = self._resolving[0]
        span.rereads += 1
        self.stats.tie_rereads += 1
        page, now, t = view.page_num, self.stats.requests, span.value
        tied = [r.id for r in view.rows if r.last_used == t]
        if len(tied) != span.counts.get(page, 0):
            # the list moved: every other page's slot count is stale until re-read
            span.fresh_since = now
        span.counts[page] = len(tied)
        span.last_read[page] = now
        span.members.update(tied)
        # The group may have moved past the span's ends: take the neighbour page in.
        reaches_end = bool(view.rows) and min(r.last_used for r in view.rows) == t
        reaches_top = bool(view.rows) and max(r.last_used for r in view.rows) == t
        below, above = page + 1, page - 1
        if reaches_end and page == span.pages[-1] and below < self._next_forward:
            span.pages.append(below)
            span.fresh_since = now
        if reaches_top and page == span.pages[0] and above >= self.start_page:
            span.pages.insert(0, above)
            span.fresh_since = now
        self._settle(span)


def _timed(view: PageView) -> PageView:
    """The page without its suspect rows: what the time-ordered logic may rely on."""
    if not any(r.suspect for r in view.rows):
        return view
    return PageView(view.page_num, view.has_more, [r for r in view.rows if not r.suspect])
