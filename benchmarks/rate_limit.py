"""2. Rate-limit obedience: a sync paced by the client against a server that enforces R/W.

The server allows R requests in any sliding W seconds per key owner (a short window scaled
from the API's per-minute limit keeps the run short: 10 per 2 s is 300 a minute). Figures:

- wall time / (requests x W/R): 1.00 means the sync ran exactly at the limit's pace; the
  sliding window lets the first R go at once, so a perfect pacer lands slightly under 1;
- 429s received (target zero with one client);
- with a second client of the same owner spending part of the budget at the same time, the
  429s the sync absorbs and whether the cache still ends exact.

The wall time includes the package's own work per page (parse, upsert, checkpoint): at a
scaled-up pace a slow page shows up as a ratio above 1, which at the API's real 10 a minute
(6 s a page) it would not.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from guru_analytics.client import GurubaseClient
from guru_analytics.errors import GuruAnalyticsError
from guru_analytics.store import Store
from guru_analytics.sync import sync

from .fixture import Exactness, demo_server, guru_exactness
from .plan import Plan
from .table import Row, fmt_seconds

SECTION = "2. Rate limit"


@dataclass
class RateRun:
    """One sync under the limit: wall time, what the server answered, and the end state."""

    wall: float
    total: int  # requests the server answered (both clients)
    throttled: int  # 429s the server sent (both clients)
    sync_throttled: int  # 429s the syncing client received
    other_requests: int  # requests of the second client (0 without one)
    exact: Exactness
    error: str

    @property
    def accepted(self) -> int:
        return self.total - self.throttled


def _one_run(plan: Plan, db: Path, second_client: bool) -> RateRun:
    """One full sync of a fresh guru under the limit, optionally beside a second client."""
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
        if other_errors:
            error += f" second client gave up {len(other_errors)} time(s)"
        return RateRun(
            wall=wall,
            total=len(srv.log),
            throttled=srv.request_count(status=429),
            sync_throttled=client.stats.throttled,
            other_requests=other_requests[0],
            exact=guru_exactness(srv, store, slug),
            error=error.strip(),
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
    med = statistics.median
    rows: list[Row] = []
    for second in (False, True):
        runs: list[RateRun] = []
        for rep in range(plan.repeats):
            who = "two clients" if second else "one client"
            say(f"rate limit: {who}, run {rep + 1}/{plan.repeats}")
            runs.append(_one_run(plan, workdir / f"rl-{int(second)}-{rep}.duckdb", second))
        ratio = med([x.wall / (x.accepted * per_request) for x in runs])
        wall = med([x.wall for x in runs])
        accepted = med([x.accepted for x in runs])
        exact = all(x.exact.exact for x in runs)
        errors = [x.error for x in runs if x.error]
        tail = f"; cache {runs[-1].exact}" + (f"; {'; '.join(errors)}" if errors else "")
        if not second:
            worst = max(x.throttled for x in runs)
            rows.append(
                Row(
                    SECTION,
                    f"one client, {plan.rate_sessions:,} sessions, limit {limit}",
                    f"wall {fmt_seconds(wall)}; {worst} x 429",
                    f"{accepted:.0f} accepted requests x {per_request:g} s = "
                    f"{accepted * per_request:.1f} s",
                    f"{ratio:.2f}x",
                    "<= 1.10x, zero 429s",
                    ratio <= 1.10 and worst == 0 and exact and not errors,
                    f"median of {len(runs)}; 429s summed over runs "
                    f"{sum(x.throttled for x in runs)}" + tail,
                )
            )
        else:
            rows.append(
                Row(
                    SECTION,
                    f"two clients sharing the budget (second reads at {max(1, r // 2)} per {w:g} s)",
                    f"wall {fmt_seconds(wall)}; sync absorbed "
                    f"{med([x.sync_throttled for x in runs]):.0f} x 429 (all clients: "
                    f"{med([x.throttled for x in runs]):.0f})",
                    f"{accepted:.0f} accepted requests of both clients x {per_request:g} s",
                    f"{ratio:.2f}x",
                    "429s absorbed, cache exact",
                    exact and not errors,
                    f"median of {len(runs)}; second client made "
                    f"{med([x.other_requests for x in runs]):.0f} requests" + tail,
                )
            )
    return rows
