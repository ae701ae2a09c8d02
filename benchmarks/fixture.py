"""The guru every benchmark talks to: a ``LocalGurubase`` on loopback with synthetic data.

Also the exactness check shared by the request and rate-limit benchmarks: after a sync, the
cache must hold exactly the server's live sessions with their current ``last_used``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from guru_analytics.server import DriftConfig, LocalGurubase
from guru_analytics.store import Store

# A fixed end for the synthetic history keeps every run's data identical. Sessions still
# sort and group the same way the API's do; they simply all fall in ``older``.
END = datetime(2025, 11, 1, tzinfo=UTC)


def demo_server(
    n_sessions: int,
    n_users: int = 50,
    *,
    rate_limit: int | None = None,
    rate_window: float = 60.0,
    drift: DriftConfig | None = None,
    seed: int = 0,
) -> LocalGurubase:
    """A started server with one synthetic guru and one key (limit off unless given)."""
    return LocalGurubase.demo(
        n_sessions,
        n_users,
        seed=seed,
        end=END,
        rate_limit=rate_limit,
        rate_window=rate_window,
        drift=drift,
    ).start()


@dataclass(frozen=True)
class Exactness:
    """Cache versus server truth: sessions missing from the cache, extra in it, and stale."""

    expected: int
    missing: int
    extra: int
    stale: int

    @property
    def exact(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.stale == 0

    def __str__(self) -> str:
        if self.exact:
            return f"exact ({self.expected} sessions)"
        return (
            f"NOT exact: {self.missing} missing, {self.extra} extra, {self.stale} stale "
            f"of {self.expected}"
        )


def _compare(truth: pd.DataFrame, cached: pd.DataFrame) -> Exactness:
    want = dict(
        zip(truth["id"].tolist(), pd.to_datetime(truth["last_used"], utc=True), strict=True)
    )
    have = dict(
        zip(cached["id"].tolist(), pd.to_datetime(cached["last_used"], utc=True), strict=True)
    )
    missing = sum(1 for sid in want if sid not in have)
    extra = sum(1 for sid in have if sid not in want)
    stale = sum(1 for sid, t in want.items() if sid in have and have[sid] != t)
    return Exactness(len(want), missing, extra, stale)


def guru_exactness(srv: LocalGurubase, store: Store, slug: str) -> Exactness:
    """The whole guru: every live session cached (not deleted) with its current last_used."""
    with store.reader() as con:
        cached = con.execute(
            "SELECT id, last_used FROM sessions WHERE guru = ? AND NOT deleted", [slug]
        ).df()
    return _compare(srv.truth(slug), cached)


def users_exactness(
    srv: LocalGurubase,
    store: Store,
    slug: str,
    users: Iterable[str],
    truth_for: Callable[[str], pd.DataFrame] | None = None,
) -> Exactness:
    """Per user: each user's live sessions attributed to them, with their last_used.

    ``truth_for(user)`` gives the sessions the cache should hold for a user (default: the
    server's truth now; under drift, the truth when that user's listing finished).
    """
    truth_for = truth_for or (lambda user: srv.truth(slug, user))
    totals = [0, 0, 0, 0]
    with store.reader() as con:
        for user in users:
            cached = con.execute(
                "SELECT s.id, s.last_used FROM sessions s JOIN session_users u "
                "ON u.guru = s.guru AND u.id = s.id "
                "WHERE s.guru = ? AND u.external_user_id = ? AND NOT s.deleted",
                [slug, user],
            ).df()
            e = _compare(truth_for(user), cached)
            for i, v in enumerate((e.expected, e.missing, e.extra, e.stale)):
                totals[i] += v
    return Exactness(*totals)


def snapshot(srv: LocalGurubase, slug: str) -> dict[str, Any]:
    """id -> last_used of the live sessions now (to count what drift changed)."""
    truth = srv.truth(slug)
    return dict(zip(truth["id"].tolist(), truth["last_used"].tolist(), strict=True))


def drifted(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Sessions created or touched between two snapshots (each counted once)."""
    return sum(1 for sid, t in after.items() if before.get(sid) != t)


class ListingEnds:
    """The server's truth at the moment each external user's listing ended, under drift.

    A per-user sync reads one user after another; a change to user A's sessions made while
    user B is being read is, rightly, left for the next sync. So each user's cache is held
    to the truth right after the last request of that user's listing (drift is applied just
    before a request is answered, so that answer already saw it). A snapshot is taken before
    every request through ``LocalGurubase.on_request``.
    """

    def __init__(self, srv: LocalGurubase, slug: str, max_requests: int) -> None:
        self.srv = srv
        self.slug = slug
        self.base = srv.requests_received
        self.snaps: dict[int, pd.DataFrame] = {}
        for n in range(self.base + 1, self.base + max_requests + 2):
            srv.on_request(n, self._snap)

    def _snap(self, srv: LocalGurubase) -> None:
        self.snaps[srv.requests_received] = srv.truth(self.slug)[
            ["id", "last_used", "external_user_id"]
        ]

    def truth_for(self, user: str) -> pd.DataFrame:
        """Sessions of ``user`` as they stood when the last request listing them was answered."""
        log = self.srv.log
        last = max(
            (i for i, r in enumerate(log) if (r.body or {}).get("external_user_id") == user),
            default=None,
        )
        if last is None or last == len(log) - 1:
            frame = self.srv.truth(self.slug)
        else:
            # The hook for request number base + last + 2 ran right after log[last] was answered.
            frame = self.snaps[self.base + last + 2]
        return frame[frame["external_user_id"] == user]
