"""Shared helpers for the sync tests: a real LocalGurubase, a real client, a real DuckDB file,
and comparisons of the cache with the server's truth."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from guru_analytics.client import GurubaseClient
from guru_analytics.server import LocalGurubase
from guru_analytics.store import Store
from guru_analytics.sync import SyncSummary, sync

PAGE = 30


def pages_for(n: int, page_size: int = PAGE) -> int:
    """Pages a complete listing of n sessions costs (an empty listing still costs one)."""
    return max(1, math.ceil(n / page_size))


def full_budget(n: int, page_size: int = PAGE) -> int:
    """Main pass + one top-up when the main pass took more than one request."""
    p = pages_for(n, page_size)
    return p + (1 if p > 1 else 0)


def incremental_budget(k: int, page_size: int = PAGE) -> int:
    """k sessions above the watermark, then the watermark row, then a strictly older row."""
    p = math.ceil((k + 2) / page_size)
    return p + (1 if p > 1 else 0)


def demo_server(n: int = 300, users: int = 8, **kwargs: Any) -> LocalGurubase:
    kwargs.setdefault("rate_limit", None)
    return LocalGurubase.demo(n, users, days=30, **kwargs).start()


def client_for(srv: LocalGurubase, **kwargs: Any) -> GurubaseClient:
    kwargs.setdefault("rate_limit", None)
    return GurubaseClient(srv.api_key, srv.base_url, **kwargs)


def list_requests(srv: LocalGurubase, slug: str | None = None) -> int:
    return srv.request_count(path_contains=f"/{slug or srv.guru_slug}/sessions/")


def get_requests(srv: LocalGurubase) -> int:
    return srv.request_count(path_contains="/conversation/")


def cache(store: Store, guru: str) -> pd.DataFrame:
    """id, last_used, deleted of every cached session of the guru (id order)."""
    with store.reader() as con:
        return con.execute(
            "SELECT id, last_used, deleted FROM sessions WHERE guru = ? ORDER BY id", [guru]
        ).df()


def live(store: Store, guru: str) -> dict[str, pd.Timestamp]:
    frame = cache(store, guru)
    frame = frame[~frame["deleted"]]
    return dict(zip(frame["id"], pd.to_datetime(frame["last_used"], utc=True), strict=True))


def truth(srv: LocalGurubase, slug: str, external_user_id: str | None = None) -> dict[str, Any]:
    frame = srv.truth(slug, external_user_id=external_user_id)
    return dict(zip(frame["id"], pd.to_datetime(frame["last_used"], utc=True), strict=True))


def diff(store: Store, srv: LocalGurubase, slug: str) -> dict[str, set[str]]:
    """Where the cache's live sessions differ from the server's listable ones."""
    have, want = live(store, slug), truth(srv, slug)
    return {
        "missing": set(want) - set(have),
        "extra": set(have) - set(want),
        "stale": {i for i in set(have) & set(want) if have[i] != want[i]},
    }


def assert_exact(store: Store, srv: LocalGurubase, slug: str) -> None:
    d = diff(store, srv, slug)
    assert d == {"missing": set(), "extra": set(), "stale": set()}, {
        k: sorted(v)[:5] for k, v in d.items()
    }
    assert len(live(store, slug)) == len(srv.truth(slug))


def run(
    srv: LocalGurubase, store: Store, client: GurubaseClient | None = None, **kwargs: Any
) -> SyncSummary:
    kwargs.setdefault("progress", False)
    own = client is None
    c = client or client_for(srv)
    try:
        return sync(kwargs.pop("guru", srv.guru_slug), client=c, store=store, **kwargs)
    finally:
        if own:
            c.close()


def at_request(srv: LocalGurubase, k: int, fn: Callable[[LocalGurubase], Any]) -> None:
    """Run fn just before the k-th request from now (1 = the next request)."""
    srv.on_request(srv.requests_received + k, fn)


def top_ids(srv: LocalGurubase, slug: str, start: int, stop: int) -> list[str]:
    """Ids at list positions [start, stop) right now (ties in truth order)."""
    return list(srv.truth(slug)["id"].iloc[start:stop])


def new_store(tmp_path: Path, name: str = "cache.duckdb") -> Store:
    return Store(tmp_path / name)


def attribution(store: Store, slug: str) -> dict[str, set[str]]:
    """The cache's attribution: external user id -> its session ids."""
    with store.reader() as con:
        rows = con.execute(
            "SELECT external_user_id, id FROM session_users WHERE guru = ?", [slug]
        ).fetchall()
    out: dict[str, set[str]] = {}
    for user, sid in rows:
        out.setdefault(user, set()).add(sid)
    return out
