"""The attribution sweep: user listings read only to attribute sessions the feed showed new.

A session's external user never changes, so once the guru-wide listing (the change feed) is
read, the only thing user listings still add is the user of sessions the cache had never
seen. Those are queued as ``pending`` by the feed's page writes (``store._unattributed``), in
the same transaction, so a kill during the sweep loses nothing.

A user is *in step* when its listing completed after the guru-wide listing last did: every
session of that user the cache holds is then attributed or pending (the run that cached it
read this user afterwards, or queued it). Only in-step users are swept; the rest (new users,
``--full``, resumes, users absent from earlier runs, searches) are read as whole listings, or
down to their own watermark, before the sweep, which is enough to put them in step again.

The sweep visits in-step users most recently active first (newest cached session attributed
to each; users with none after, in the given order). Each is read newest first only down to
the first row strictly older than ``max(own watermark, oldest still-pending last_used)``: a
pending session's ``last_used`` only grows, so it cannot sit below that. The sweep stops as
soon as nothing is pending. What is still pending when every in-step user was read belongs to
none of the given users: it is marked ``proven`` (``Store.settle_attribution``), so it costs
one sweep once, not one per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..client import Page
    from . import _Plan, _Syncer

RECHECK_CHOICES = ("full", "daily", "never")
"""``recheck_unattributed``: when a session proven unattributed is swept again (the API does
not say whether a session created without an external user can gain one later).
``full``: only a ``--full`` run, which reads every user listing whole anyway; ``daily``: also,
at most once a day, those whose ``last_used`` moved since their check; ``never``: no re-check
is scheduled (a ``--full`` run's whole listings still attribute whatever they show)."""
RECHECK_AFTER = timedelta(days=1)


def users_in_step(feed: _Plan | None, plans: Sequence[_Plan]) -> list[_Plan]:
    """User listings the sweep may handle: incremental, no search, completed after the
    guru-wide listing last completed, in a run whose guru-wide pass is incremental (a resume
    may carry pages an earlier run wrote without queueing them; a full pass re-reads all)."""
    if (
        feed is None
        or feed.mode != "incremental"
        or feed.state is None
        or feed.state.completed_at is None
    ):
        return []
    since = feed.state.completed_at
    return [
        p
        for p in plans
        if p.listing.external_user_id is not None
        and not p.listing.search_query
        and p.mode == "incremental"
        and p.state is not None
        and p.state.completed_at is not None
        and p.state.completed_at >= since
    ]


class Sweep:
    """One run's attribution sweep over the in-step user listings (see the module docstring)."""

    def __init__(
        self,
        syncer: _Syncer,
        plans: Sequence[_Plan],
        feed_watermark: datetime | None,
        *,
        since: datetime | None = None,
    ) -> None:
        self.syncer = syncer
        self.plans = list(plans)
        self.feed = feed_watermark
        # the sweep after the run's final top-up: unattributed sessions (queued or not) above
        # the guru-wide main pass's top, i.e. moved during the run, which a user listing read
        # without its own top-up may have missed; among the users read this run
        self.since = since
        self.read = 0
        self.skipped = 0

    def run(self) -> None:
        s = self.syncer
        pending = dict(s.store.pending_attribution(s.guru, self.since))
        wanted = len(pending)
        if self.since is not None and not pending:
            return
        new_before = s.summary.sessions_new
        for plan in self._order():
            if pending:
                self._read(plan, pending)
                self.read += 1
            elif self.since is not None:
                break  # these users' listings were read this run: nothing to move
            else:
                # This user owns none of the new sessions: each was attributed to another
                # user (a session has one external user), or there were none. Every other
                # session of theirs in the cache is attributed (in step), so their listing
                # holds nothing unattributed down to the feed's watermark, and a later read
                # may stop there.
                s.skip_listing(plan, self.feed)
                self.skipped += 1
        s.summary.listings_skipped += self.skipped
        if self.skipped:
            why = (
                "the guru-wide listing showed no new session to attribute"
                if not wanted
                else f"the {wanted} new session(s) were attributed before reaching them"
            )
            s.summary.notes.append(f"skipped {self.skipped} user listing(s) at no request: {why}")
        if self.read:
            what = (
                "unattributed session(s) that moved during the run"
                if self.since
                else ("new session(s)")
            )
            s.summary.notes.append(
                f"read {self.read} user listing(s) only as deep as needed to attribute "
                f"{wanted} {what}"
            )
        late = s.summary.sessions_new - new_before
        if late:
            s.summary.notes.append(
                f"{late} session(s) created during this run were first seen in a user listing "
                "(attributed; the guru-wide listing counts them on the next run)"
            )

    def _order(self) -> list[_Plan]:
        """Most recently active first; users with no attributed session after, as given."""
        s = self.syncer
        users = [p.listing.external_user_id or "" for p in self.plans]
        activity = s.store.user_activity(s.guru, users)
        ranked = sorted(
            range(len(self.plans)),
            key=lambda i: (
                users[i] not in activity,
                -activity[users[i]].timestamp() if users[i] in activity else i,
            ),
        )
        return [self.plans[i] for i in ranked]

    def _read(self, plan: _Plan, pending: dict[str, datetime]) -> None:
        """Read one user's listing newest first until nothing pending can be below."""
        s = self.syncer
        listing = plan.listing
        state = s.store.get_state(s.guru, listing.key)  # this run may have moved it already
        own = state.watermark if state is not None else None

        def stop() -> datetime:
            oldest = min(pending.values())
            return max(own, oldest) if own is not None else oldest

        def after(page: Page) -> bool:
            for row in page.sessions:
                pending.pop(row.id, None)
            if not pending:
                return True
            passes[-1].stop_below = stop()  # only rises: the pass may end sooner
            return False

        s.progress.start_listing(listing.key)
        p = s._new_pass(stop(), 1, None)
        passes = [p]
        s._walk(p, listing, save=False, after_page=after)
        # A pending session touched while this listing was paged jumped above the pass's
        # top: re-read page 1 down to that top while something is still pending.
        prev = p
        while pending and prev.stats.requests > 1 and prev.top is not None:
            if len(passes) > s.max_top_ups:
                break
            top_up = s._new_pass(prev.top, 1, None)
            passes.append(top_up)
            s._walk(top_up, listing, save=False, after_page=after)
            s.summary.top_ups += 1
            prev = top_up
        marks = [m for m in (own, self.feed, *(q.max_seen for q in passes)) if m is not None]
        s.batch.add(
            listing.key, None, watermark=max(marks) if marks else None, completed_at=s.clock()
        )
        s.batch.flush()
        s.progress.end_listing()


def check_recheck(recheck: object) -> str:
    """``recheck_unattributed`` checked: one of ``RECHECK_CHOICES``."""
    if recheck not in RECHECK_CHOICES:
        raise ConfigError(
            f"recheck_unattributed {recheck!r} is not valid: use one of {', '.join(RECHECK_CHOICES)}"
        )
    return str(recheck)
