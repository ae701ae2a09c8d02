"""The contender under test: one full ``guru_analytics.sync`` into a fresh cache file.

Kept apart from the benchmark drivers so the fresh process that runs it imports only what
the package itself needs (its peak memory is the package's, not the harness's).
"""

from __future__ import annotations

import time
from typing import Any

from guru_analytics.client import GurubaseClient
from guru_analytics.store import Store
from guru_analytics.sync import sync


def package_load(
    base_url: str, api_key: str, slug: str, db_path: str, expected: int
) -> dict[str, Any]:
    """Full sync with the client-side limit off; return timing, counts and coverage."""
    started = time.perf_counter()
    store = Store(db_path)
    client = GurubaseClient(api_key, base_url, rate_limit=None)
    try:
        summary = sync(slug, client=client, store=store, full=True, progress=False)
        elapsed = time.perf_counter() - started
        with store.reader() as con:
            distinct = con.execute(
                "SELECT count(*) FROM sessions WHERE guru = ? AND NOT deleted", [slug]
            ).fetchone()[0]
    finally:
        client.close()
        store.close()
    return {
        "elapsed": elapsed,
        "requests": summary.requests,
        "pages": summary.pages,
        "distinct": distinct,
        "expected": expected,
        "complete": distinct == expected,
    }


def http_only(base_url: str, api_key: str, slug: str, expected: int) -> dict[str, Any]:
    """Fetch every page with one keep-alive session and discard it: the server's ceiling.

    Not a contender: it shows how much of any loader's time the local server itself takes.
    """
    import requests

    started = time.perf_counter()
    seen = 0
    page = 1
    with requests.Session() as http:
        while True:
            body = http.post(
                f"{base_url}/{slug}/sessions/",
                json={"page_num": page},
                headers={"x-api-key": api_key},
                timeout=30,
            ).json()
            seen += len(body["today"]) + len(body["last_week"]) + len(body["older"])
            if not body["has_more"]:
                break
            page += 1
    elapsed = time.perf_counter() - started
    return {
        "elapsed": elapsed,
        "requests": page,
        "distinct": seen,
        "expected": expected,
        "complete": seen == expected,
    }
