"""The guru-wide listing as the change feed (issue 13): user listings are read only to attribute
sessions the feed showed new, most recently active users first, only as deep as needed.

Real HTTP to LocalGurubase on loopback and real DuckDB files; request counts come from the
server's log, attribution is compared with the server's filtered listings (``truth``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sync_fixtures import (
    assert_exact,
    at_request,
    attribution,
    demo_server,
    list_requests,
    new_store,
    run,
    truth,
)

from guru_analytics.errors import ConfigError
from guru_analytics.server import FaultConfig, LocalGurubase
from guru_analytics.store import Store
from guru_analytics.timestamps import utc_now


def _assert_attributed(
    store: Store, srv: LocalGurubase, slug: str, users: list[str], among: set[str] | None = None
) -> None:
    """Each user's attributed sessions equal the server's filtered listing (restricted to
    ``among``, the sessions that existed when the sync started, when given)."""
    got = attribution(store, slug)
    for u in users:
        want = set(truth(srv, slug, u))
        have = got.get(u, set())
        if among is not None:
            want, have = want & among, have & among
        assert have == want, u


def _activity_rank(srv: LocalGurubase, slug: str, users: list[str], user: str) -> int:
    """1-based position of ``user`` when users are ordered by their newest session."""
    newest = {u: max(truth(srv, slug, u).values()) for u in users}
    return sorted(users, key=lambda u: newest[u], reverse=True).index(user) + 1


def _synced(srv: LocalGurubase, tmp_path: Path, n_users: int) -> tuple[Store, list[str]]:
    slug = srv.guru_slug
    users = srv.users(slug)[:n_users]
    store = new_store(tmp_path)
    run(srv, store, users=users)
    _assert_attributed(store, srv, slug, users)
    return store, users


def test_idle_sync_with_users_is_one_request(tmp_path: Path) -> None:
    with demo_server(300, users=8) as srv:
        store, users = _synced(srv, tmp_path, 6)
        srv.clear_log()
        summary = run(srv, store, users=users)
        assert list_requests(srv) == 1 and summary.listings_skipped == 6
        assert "skipped" in str(summary)
        runs = store.runs(srv.guru_slug)
        assert int(runs["listings_skipped"].iloc[-1]) == 6
        assert_exact(store, srv, srv.guru_slug)
        _assert_attributed(store, srv, srv.guru_slug, users)


def test_new_sessions_of_given_users_read_only_the_users_needed(tmp_path: Path) -> None:
    with demo_server(300, users=8) as srv:
        slug = srv.guru_slug
        store, users = _synced(srv, tmp_path, 6)
        a, b = users[1], users[4]
        deepest = max(_activity_rank(srv, slug, users, u) for u in (a, b))
        srv.create(slug, 2, external_user_id=a)
        srv.create(slug, 3, external_user_id=b)
        srv.clear_log()
        summary = run(srv, store, users=users)
        # one guru-wide page, then one page per user up to the later of the two owners
        assert list_requests(srv) == 1 + deepest
        assert summary.sessions_new == 5 and summary.listings_skipped == len(users) - deepest
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)
        assert store.unattributed_counts(slug)["pending"] == 0
        srv.clear_log()
        run(srv, store, users=users)
        assert list_requests(srv) == 1


def test_sessions_of_nobody_cost_one_sweep_once(tmp_path: Path) -> None:
    with demo_server(300, users=8) as srv:
        slug = srv.guru_slug
        store, users = _synced(srv, tmp_path, 5)
        proven_before = store.unattributed_counts(slug)["proven"]
        nobody = srv.create(slug, 3)
        srv.clear_log()
        summary = run(srv, store, users=users)
        assert list_requests(srv) == 1 + len(users)  # every user read once, one page each
        assert any("belong to none of the given users" in n for n in summary.notes)
        assert store.unattributed_counts(slug) == {"pending": 0, "proven": proven_before + 3}
        _assert_attributed(store, srv, slug, users)
        srv.clear_log()
        run(srv, store, users=users)  # remembered: no sweep again
        assert list_requests(srv) == 1
        # a touched proven session is not swept again by default ...
        srv.touch(slug, nobody[:1])
        srv.clear_log()
        run(srv, store, users=users)
        assert list_requests(srv) == 1
        # ... but 'daily' re-checks it once the day has passed, then settles again
        srv.touch(slug, nobody[:1])
        later = utc_now() + timedelta(days=2)
        srv.clear_log()
        run(srv, store, users=users, recheck_unattributed="daily", clock=lambda: later)
        assert list_requests(srv) == 1 + len(users)
        srv.clear_log()
        run(srv, store, users=users, recheck_unattributed="daily", clock=lambda: later)
        assert list_requests(srv) == 1
        with pytest.raises(ConfigError, match="recheck_unattributed"):
            run(srv, store, users=users, recheck_unattributed="weekly")


def test_a_user_added_later_gets_its_whole_listing_and_the_others_stay_idle(
    tmp_path: Path,
) -> None:
    with demo_server(300, users=8) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:4]
        store = new_store(tmp_path)
        run(srv, store, users=users[:3])
        srv.clear_log()
        summary = run(srv, store, users=users)
        n = len(srv.truth(slug, external_user_id=users[3]))
        assert list_requests(srv) == 1 + (n + 29) // 30 + (1 if n > 30 else 0)
        assert summary.listings_skipped == 3
        _assert_attributed(store, srv, slug, users)


def test_drift_during_the_sweep_is_exact_for_sessions_that_existed(tmp_path: Path) -> None:
    with demo_server(300, users=8) as srv:
        slug = srv.guru_slug
        store, users = _synced(srv, tmp_path, 5)
        owner = users[-1]
        srv.create(slug, 2, external_user_id=owner)
        srv.create(slug, 1)  # nobody's: the sweep reads every user
        existed = set(srv.truth(slug)["id"])
        # while the sweep runs: a new session of the first user, and a follow-up in a
        # pending session (it jumps to the top of its owner's listing)
        pending = list(truth(srv, slug, owner))[:1]
        at_request(srv, 2, lambda s: s.create(slug, 1, external_user_id=users[0]))
        at_request(srv, 3, lambda s: s.touch(slug, pending))
        summary = run(srv, store, users=users)
        _assert_attributed(store, srv, slug, users, among=existed)
        assert summary.sessions_new >= 3
        run(srv, store, users=users)  # the next run settles what was created meanwhile
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)


def _cli(srv: LocalGurubase, db: Path, users: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "GURUBASE_API_KEY": srv.api_key or "", "PYTHONUNBUFFERED": "1"}
    args = [srv.guru_slug, "--db", str(db), "--base-url", srv.base_url]
    args += ["--rate-limit", "none", "--no-progress"]
    for u in users:
        args += ["--user", u]
    return subprocess.Popen(
        [sys.executable, "-m", "guru_analytics", "sync", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for the subprocess"
        time.sleep(0.01)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_kill_9_during_the_attribution_sweep_then_the_next_run_finishes_it(
    tmp_path: Path,
) -> None:
    with demo_server(300, users=8) as srv:
        slug = srv.guru_slug
        store, users = _synced(srv, tmp_path, 6)
        store.close()
        srv.create(slug, 2)  # nobody's: the sweep must read all six users
        srv.faults = FaultConfig(slow_rate=1.0, slow_seconds=0.3)
        srv.clear_log()
        proc = _cli(srv, tmp_path / "cache.duckdb", users)
        try:
            # the feed (1 request) and two user listings answered: mid-sweep
            _wait_for(lambda: list_requests(srv) >= 3 or proc.poll() is not None)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        srv.faults = FaultConfig()
        store = new_store(tmp_path)
        # the queue survived the kill
        assert store.unattributed_counts(slug)["pending"] == 2
        srv.clear_log()
        run(srv, store, users=users)
        assert store.unattributed_counts(slug)["pending"] == 0
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)
        srv.clear_log()
        run(srv, store, users=users)
        assert list_requests(srv) == 1


def test_first_full_sync_with_users_takes_one_top_up_for_the_whole_run(tmp_path: Path) -> None:
    with demo_server(400, users=8) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:6]
        minimum = sum(
            max(1, -(-len(srv.truth(slug, external_user_id=u)) // 30)) for u in [None, *users]
        )
        store = new_store(tmp_path)
        summary = run(srv, store, users=users)
        assert list_requests(srv) == minimum + 1 and summary.top_ups == 1
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)


def test_first_full_sync_with_users_under_drift_is_exact(tmp_path: Path) -> None:
    with demo_server(400, users=8) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:6]
        existed = set(srv.truth(slug)["id"])
        owned = list(truth(srv, slug, users[0]))
        # during user listings: follow-ups in sessions of users[0] deep in its listing, and
        # new sessions of users[1] and of nobody
        for k in (16, 19, 22):
            at_request(srv, k, lambda s, k=k: s.touch(slug, owned[k : k + 1] + owned[-k:][:1]))
            at_request(srv, k + 1, lambda s: s.create(slug, 1, external_user_id=users[1]))
            at_request(srv, k + 2, lambda s: s.create(slug, 1))
        run(srv, store := new_store(tmp_path), users=users)
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users, among=existed)
        run(srv, store, users=users)
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)


def test_a_cached_session_touched_during_a_new_users_listing_is_still_attributed(
    tmp_path: Path,
) -> None:
    with demo_server(400, users=8) as srv:
        slug = srv.guru_slug
        by_size = sorted(srv.users(slug), key=lambda u: -len(truth(srv, slug, u)))
        users = by_size[:3]  # the biggest first: its listing is read right after the feed
        store = new_store(tmp_path)
        run(srv, store)  # guru-wide only: every session cached, none attributed or queued
        owned = list(truth(srv, slug, users[0]))
        assert len(owned) > 30
        # request 1 is the guru-wide page, 2 the user's page 1: before its page 2 is read, its
        # last session gets a follow-up and jumps to the top (page 2 no longer shows it)
        at_request(srv, 3, lambda s: s.touch(slug, owned[-1:]))
        summary = run(srv, store, users=users)
        assert summary.top_ups == 1
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)
