"""2. Rate-limit obedience: a sync paced by the client against a server that enforces R/W.

The server allows R requests in any sliding W seconds per key owner (a short window scaled
from the API's per-minute limit keeps the run short: 10 per 2 s is 300 a minute). Figures:

- wall time / (requests x W/R): 1.00 means the sync ran exactly at the limit's pace; the
  sliding window lets the first R go at once, so a perfect pacer lands slightly under 1;
- 429s received (target zero with one client);
- with a second client of the same owner spending part of the budget at the same time, the
  429s the sync absorbs and whether the cache still ends exact.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from guru_analytics.client import GurubaseClient
from guru_analytics.errors import GuruAnalyticsError
from guru_analytics.store import Store
from guru_analytics.sync import sync

from .fixture import Exactness, demo_server, guru_exactness
from .plan import Plan
from .table import Row, fmt_seconds

SECTION = "2. Rate limit"


def _one_run(
    plan: Plan, db: Path, second_client: bool
) -> tuple[float, int, int, int, int, Exactness, str]:
    """One full sync under the limit: (wall, requests, 429s, sync's 429s, other's, exact, err)."""
    r, w = plan.rate_limit, plan.rate_window
    srv = demo_server(plan.rate_sessions, rate_limit=r, rate_window=w)
    slug = srv.guru_slug or ""
    store = Store(db)
    client = GurubaseClient(srv.api_key, srv.base_url, rate_limit=r, rate_window=w, max_retries=8)
    stop = threading.Event()
    other_requests = [0]
    other_errors: list[str] = []

    def other() -> None:
        # A second tool of the same owner reading page 1 at half the budget until told to stop.
        with GurubaseClient(
            srv.api_key, srv.base_url, rate_limit=max(1, r // 2), rate_window=w, max_retries=8
        ) as c2:
            while not stop.is_set():
                try:
                    c2.list_sessions(slug, 1)
                except GuruAnalyticsError as exc:
                    other_errors.append(type(exc).__name__)
                other_requests[0] = c2.stats.requests

    thread = threading.Thread(target=other, daemon=True) if second_client else None
    error = ""
    try:
        if thread is not None:
            thread.start()
        started = time.perf_counter()
        try:
            sync(slug, client=client, store=store, full=True, progress=False)
        except GuruAnalyticsError as exc:
            error = f"sync failed: {type(exc).__name__}: {exc}"
        wall = time.perf_counter() - started
        stop.set()
        if thread is not None:
            thread.join(timeout=2 * w + 30)
        total = len(srv.log)
        throttled = srv.request_count(status=429)
        exact = guru_exactness(srv, store, slug)
        if other_errors:
            error += f" second client gave up {len(other_errors)} time(s)"
        return (
            wall,
            total,
            throttled,
            client.stats.throttled,
            other_requests[0],
            exact,
            error.strip(),
        )
    finally:
        stop.set()
        client.close()
        store.close()
        srv.stop()


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    workdir.mkdir(parents=True, exist_ok=True)
    r, w = plan.rate_limit, plan.rate_window
    per_request = w / r
    limit = f"{r} per {w:g} s (= {r * 60 / w:g}/min)"
    rows: list[Row] = []

    for second in (False, True):
        walls, ratios, total_429, sync_429, totals, others = [], [], [], [], [], []
        exacts: list[Exactness] = []
        errors: list[str] = []
        for rep in range(plan.repeats):
            say(f"rate limit: {'two clients' if second else 'one client'}, run {rep + 1}/{plan.repeats}")
            wall, total, t429, s429, other, exact, err = _one_run(
                plan, workdir / f"rl-{int(second)}-{rep}.duckdb", second
            )
            accepted = total - t429
            walls.append(wall)
            ratios.append(wall / (accepted * per_request))
            total_429.append(t429)
            sync_429.append(s429)
            totals.append(total)
            others.append(other)
            exacts.append(exact)
            if err:
                errors.append(err)
        ratio = statistics.median(ratios)
        all_exact = all(e.exact for e in exacts)
        if not second:
            rows.append(
                Row(
                    SECTION,
                    f"one client, {plan.rate_sessions:,} sessions, limit {limit}",
                    f"wall {fmt_seconds(statistics.median(walls))}; {max(total_429)} x 429",
                    f"{statistics.median(totals):.0f} requests x {per_request:g} s = "
                    f"{statistics.median(totals) * per_request:.1f} s",
                    f"{ratio:.2f}x",
                    "<= 1.10x, zero 429s",
                    ratio <= 1.10 and max(total_429) == 0 and all_exact and not errors,
                    f"median of {len(walls)}; 429s summed over runs {sum(total_429)}; "
                    f"cache {exacts[-1]}" + (f"; {'; '.join(errors)}" if errors else ""),
                )
            )
        else:
            rows.append(
                Row(
                    SECTION,
                    f"two clients sharing the budget (second reads at {max(1, r // 2)} per {w:g} s)",
                    f"wall {fmt_seconds(statistics.median(walls))}; sync absorbed "
                    f"{statistics.median(sync_429):.0f} x 429 (all clients: "
                    f"{statistics.median(total_429):.0f})",
                    f"{statistics.median(totals) - statistics.median(total_429):.0f} accepted "
                    f"requests of both clients x {per_request:g} s",
                    f"{ratio:.2f}x",
                    "429s absorbed, cache exact",
                    all_exact and not errors,
                    f"median of {len(walls)}; second client made {statistics.median(others):.0f} "
                    f"requests; cache {exacts[-1]}" + (f"; {'; '.join(errors)}" if errors else ""),
                )
            )
    return rows
