"""1. Request efficiency: exact request counts from the server's log against the minimum.

Requests are the scarce resource (10 a minute by default), so every sync is counted against
the fewest requests the API could possibly allow:

- full sync of N sessions: ``ceil(N/30)`` pages;
- incremental sync after k sessions changed: ``ceil(k/30) + 1`` (the issue's reference; the
  true floor is ``floor(k/30) + 1``, since the first unchanged row can share the last page of
  changed ones; both are shown);
- per-user sync: the sum of each user's own minimum (an empty listing still costs one);
- under drift (touches and new sessions while the crawl runs): the extra requests over the
  no-drift minimum, allowed ``+1`` per 30 drifted sessions, and whether the cache ends exact;
- a sync with users (issue 13, the guru-wide listing as the change feed): the first full sync
  against the sum of every listing's minimum plus one top-up; idle, touches only and new
  sessions of a few users against the guru-wide minimum plus the user listings the sweep
  needs (users most recently active first).

Counts come from ``LocalGurubase.log`` (every request the server answered, 429s and Get
Session checks included), not from the client's own bookkeeping.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guru_analytics.client import GurubaseClient
from guru_analytics.server import DriftConfig, LocalGurubase
from guru_analytics.store import Store
from guru_analytics.sync import SyncSummary, sync

from .fixture import (
    Exactness,
    ListingEnds,
    demo_server,
    drifted,
    guru_exactness,
    snapshot,
    users_exactness,
)
from .plan import Plan
from .table import Row, fmt_ratio

SECTION = "1. Requests"
PAGE = 30
# Expected drift per List Sessions request while the measured sync runs.
DRIFT = DriftConfig(touch_per_request=0.3, new_per_request=0.3, new_user_share=0.5, seed=7)


def reference_min(k: int) -> int:
    """The issue's incremental minimum: ``ceil(k/30) + 1``."""
    return math.ceil(k / PAGE) + 1


def floor_min(k: int) -> int:
    """The true incremental floor: the first unchanged row may share the last changed page."""
    return k // PAGE + 1


def full_min(n: int) -> int:
    """A full listing of n sessions: ``ceil(n/30)`` pages, and one even when empty."""
    return max(1, math.ceil(n / PAGE))


class _Bench:
    """One server, one cache file and one unthrottled client; counts one sync at a time."""

    def __init__(self, srv: LocalGurubase, db: Path) -> None:
        self.srv = srv
        self.slug = srv.guru_slug or ""
        self.store = Store(db)
        self.client = GurubaseClient(srv.api_key, srv.base_url, rate_limit=None)

    def sync(self, **kwargs: Any) -> tuple[int, SyncSummary]:
        self.srv.clear_log()
        summary = sync(self.slug, client=self.client, store=self.store, progress=False, **kwargs)
        return len(self.srv.log), summary

    def sync_drifting(self, case: str, minimum: int, **kwargs: Any) -> Row:
        """Sync while the server drifts; the row says the extra requests and the exactness."""
        before = snapshot(self.srv, self.slug)
        self.srv.drift = DRIFT
        try:
            count, summary = self.sync(**kwargs)
        finally:
            self.srv.drift = DriftConfig()
        moved = drifted(before, snapshot(self.srv, self.slug))
        exact = guru_exactness(self.srv, self.store, self.slug)
        return _drift_row(case, count, minimum, moved, exact, _detail(summary, exact))

    def close(self) -> None:
        self.client.close()
        self.store.close()
        self.srv.stop()


def _detail(summary: SyncSummary, exact: Exactness) -> str:
    parts = [f"pages {summary.pages}", f"top-ups {summary.top_ups}"]
    if summary.tie_rereads:
        parts.append(f"tie re-reads {summary.tie_rereads}")
    if summary.verified or summary.unverified:
        parts.append(f"Get Session checks {summary.verified + summary.unverified}")
    return f"{', '.join(parts)}; cache {exact}"


def _ratio_row(case: str, measured: int, minimum: int, label: str, notes: str) -> Row:
    ratio = measured / minimum
    return Row(
        SECTION,
        case,
        f"{measured} request{'' if measured == 1 else 's'}",
        f"{label} = {minimum}",
        fmt_ratio(ratio),
        "1.00x",
        ratio <= 1.0 + 1e-9,
        notes,
    )


def _drift_row(
    case: str, measured: int, minimum: int, n_drifted: int, exact: Exactness, detail: str
) -> Row:
    extra = measured - minimum
    allowed = math.ceil(n_drifted / PAGE)
    return Row(
        SECTION,
        case,
        f"{measured} requests ({extra:+d} over the no-drift minimum)",
        f"minimum {minimum}; {n_drifted} drifted session{'' if n_drifted == 1 else 's'} "
        f"allow{'s' if n_drifted == 1 else ''} +{allowed}",
        fmt_ratio(measured / minimum),
        "extra <= +1 per 30 drifted; cache exact",
        extra <= allowed and exact.exact,
        detail,
    )


def _user_minimums(srv: LocalGurubase, slug: str, users: list[str]) -> dict[str, int]:
    return {u: len(srv.truth(slug, u)) for u in users}


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    workdir.mkdir(parents=True, exist_ok=True)

    # Full syncs.
    for n in plan.full_sizes:
        say(f"requests: full sync of {n:,} sessions")
        bench = _Bench(demo_server(n, plan.n_users), workdir / f"full-{n}.duckdb")
        try:
            count, summary = bench.sync(full=True)
            exact = guru_exactness(bench.srv, bench.store, bench.slug)
            rows.append(
                _ratio_row(
                    f"full sync, N = {n:,}",
                    count,
                    full_min(len(bench.srv.truth(bench.slug))),
                    "ceil(N/30)",
                    _detail(summary, exact),
                )
            )
        finally:
            bench.close()

    # Incremental syncs after k changes.
    n = plan.incremental_base
    bench = _Bench(demo_server(n, plan.n_users), workdir / "incremental.duckdb")
    rng = random.Random(11)
    try:
        bench.sync(full=True)
        for k in plan.incremental_changes:
            say(f"requests: incremental sync after {k} changes")
            ids = bench.srv.truth(bench.slug)["id"].tolist()
            if k:
                bench.srv.touch(bench.slug, rng.sample(ids, k))
            count, summary = bench.sync()
            exact = guru_exactness(bench.srv, bench.store, bench.slug)
            rows.append(
                _ratio_row(
                    f"incremental, k = {k} changed (of {n:,})",
                    count,
                    reference_min(k),
                    "ceil(k/30)+1",
                    f"true floor floor(k/30)+1 = {floor_min(k)}; " + _detail(summary, exact),
                )
            )
        # The same with drift while the incremental sync runs.
        say("requests: incremental sync with drift")
        k = max(plan.incremental_changes)
        bench.srv.touch(bench.slug, rng.sample(bench.srv.truth(bench.slug)["id"].tolist(), k))
        case = f"incremental with drift, k = {k} changed + drift"
        rows.append(bench.sync_drifting(case, reference_min(k)))
    finally:
        bench.close()

    # Full sync with drift.
    n = plan.drift_sessions
    say(f"requests: full sync of {n:,} sessions with drift")
    bench = _Bench(demo_server(n, plan.n_users), workdir / "drift-full.duckdb")
    try:
        minimum = full_min(len(bench.srv.truth(bench.slug)))
        rows.append(bench.sync_drifting(f"full sync with drift, N = {n:,}", minimum, full=True))
    finally:
        bench.close()

    rows += _per_user(plan, workdir, say)
    rows += _change_feed(plan, workdir, say)
    return rows


def _per_user(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    """The user listings' own cost: ``guru_wide=False`` (a sync with users reads the guru-wide
    listing too, whose cost the rows above already show)."""
    rows: list[Row] = []
    n = plan.user_sessions
    say(f"requests: per-user sync of {plan.n_users} users ({n:,} sessions)")
    bench = _Bench(demo_server(n, plan.n_users), workdir / "users.duckdb")
    rng = random.Random(13)
    try:
        slug = bench.slug
        users = bench.srv.users(slug)[: plan.n_users]
        sizes = _user_minimums(bench.srv, slug, users)
        minimum = sum(full_min(s) for s in sizes.values())
        count, summary = bench.sync(users=users, guru_wide=False, full=True)
        exact = users_exactness(bench.srv, bench.store, slug, users)
        rows.append(
            _ratio_row(
                f"per-user full sync, {len(users)} users ({sum(sizes.values()):,} sessions)",
                count,
                minimum,
                "sum of max(1, ceil(n_u/30))",
                _detail(summary, exact),
            )
        )

        # Incremental: change sessions spread over the users.
        say("requests: per-user incremental sync")
        owned = [(u, sid) for u in users for sid in bench.srv.truth(slug, u)["id"].tolist()]
        picked = rng.sample(owned, min(plan.user_changes, len(owned)))
        bench.srv.touch(slug, [sid for _u, sid in picked])
        changed = {u: 0 for u in users}
        for u, _sid in picked:
            changed[u] += 1
        ref = sum(reference_min(k) for k in changed.values())
        floor = sum(floor_min(k) for k in changed.values())
        count, summary = bench.sync(users=users, guru_wide=False)
        exact = users_exactness(bench.srv, bench.store, slug, users)
        rows.append(
            _ratio_row(
                f"per-user incremental, {len(picked)} changed over {len(users)} users",
                count,
                ref,
                "sum of ceil(k_u/30)+1",
                f"true floor {floor}; " + _detail(summary, exact),
            )
        )
    finally:
        bench.close()

    # Per-user full sync with drift, on a fresh server and cache.
    say("requests: per-user full sync with drift")
    bench = _Bench(demo_server(n, plan.n_users), workdir / "users-drift.duckdb")
    try:
        slug = bench.slug
        users = bench.srv.users(slug)[: plan.n_users]
        minimum = sum(full_min(s) for s in _user_minimums(bench.srv, slug, users).values())
        before = snapshot(bench.srv, slug)
        ends = ListingEnds(bench.srv, slug, max_requests=4 * minimum + 100)
        bench.srv.drift = DRIFT
        try:
            count, summary = bench.sync(users=users, guru_wide=False, full=True)
        finally:
            bench.srv.drift = DriftConfig()
        moved = drifted(before, snapshot(bench.srv, slug))
        exact = users_exactness(bench.srv, bench.store, slug, users, ends.truth_for)
        rows.append(
            _drift_row(
                f"per-user full sync with drift, {len(users)} users",
                count,
                minimum,
                moved,
                exact,
                _detail(summary, exact) + " (each user against the truth when its listing ended)",
            )
        )
    finally:
        bench.close()
    return rows


def _feed_exactness(bench: _Bench, users: list[str]) -> Exactness:
    """Guru-wide and per-user exactness together (the sum of both checks)."""
    g = guru_exactness(bench.srv, bench.store, bench.slug)
    u = users_exactness(bench.srv, bench.store, bench.slug, users)
    return Exactness(
        g.expected + u.expected, g.missing + u.missing, g.extra + u.extra, g.stale + u.stale
    )


def _change_feed(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    """A sync with users (guru-wide + one listing per user, the default): the guru-wide
    listing is the change feed and user listings are read only to attribute new sessions."""
    rows: list[Row] = []
    n = plan.user_sessions
    bench = _Bench(demo_server(n, plan.n_users), workdir / "feed.duckdb")
    rng = random.Random(17)
    try:
        slug = bench.slug
        users = bench.srv.users(slug)[: plan.n_users]
        u = len(users)
        say(f"requests: first full sync with {u} users ({n:,} sessions)")
        sizes = _user_minimums(bench.srv, slug, users)
        minimum = full_min(len(bench.srv.truth(slug))) + sum(full_min(x) for x in sizes.values())
        count, summary = bench.sync(users=users)
        exact = _feed_exactness(bench, users)
        rows.append(
            _ratio_row(
                f"first full sync with {u} users ({n:,} sessions)",
                count,
                minimum + 1,
                "sum of every listing's max(1, ceil(n/30)) + 1 top-up",
                f"sum of minimums {minimum}; before issue 13 one top-up per multi-page listing; "
                + _detail(summary, exact)
                + " (guru-wide + per user)",
            )
        )

        say(f"requests: idle incremental with {u} users")
        count, summary = bench.sync(users=users)
        exact = _feed_exactness(bench, users)
        rows.append(
            _ratio_row(
                f"idle incremental with {u} users",
                count,
                1,
                "1 guru-wide page",
                f"before issue 13: {u + 1}; {summary.listings_skipped} user listings skipped; "
                + _detail(summary, exact),
            )
        )

        say(f"requests: 100 touched cached sessions over {u} users")
        owned = [sid for x in users for sid in bench.srv.truth(slug, x)["id"].tolist()]
        bench.srv.touch(slug, rng.sample(owned, min(100, len(owned))))
        count, summary = bench.sync(users=users)
        exact = _feed_exactness(bench, users)
        rows.append(
            _ratio_row(
                f"100 touched cached sessions over {u} users",
                count,
                reference_min(100),
                "ceil(100/30)+1",
                f"before issue 13: {u + 2}; {summary.listings_skipped} user listings skipped; "
                + _detail(summary, exact),
            )
        )

        say(f"requests: 10 new sessions from 3 of {u} users")
        newest = {x: bench.srv.truth(slug, x)["last_used"].max() for x in users}
        order = sorted(users, key=lambda x: newest[x], reverse=True)
        owners = rng.sample(users, 3)
        for owner, k in zip(owners, (4, 3, 3), strict=True):
            bench.srv.create(slug, k, external_user_id=owner)
        deepest = max(order.index(x) + 1 for x in owners)
        count, summary = bench.sync(users=users)
        exact = _feed_exactness(bench, users)
        rows.append(
            _ratio_row(
                f"10 new sessions from 3 of {u} users",
                count,
                floor_min(10) + deepest,
                f"guru-wide {floor_min(10)} + users up to the deepest owner (activity rank "
                f"{deepest} of {u})",
                f"owners' activity ranks {sorted(order.index(x) + 1 for x in owners)}; "
                f"worst case of their order {floor_min(10) + u}; before issue 13: {u + 1}; "
                + _detail(summary, exact),
            )
        )
    finally:
        bench.close()
    return rows
