"""The loop a user would write first: POST page after page, insert row by row, stop on empty.

This is the baseline the package must beat by 10x when the rate limit is off. It is written
the way the API reference invites: plain ``requests.post`` per page, the three lists joined,
one ``INSERT`` per session into DuckDB, and "an empty page means the end" (which the API
contract warns is wrong: a page can be empty while ``has_more`` is still true).
"""

from __future__ import annotations

import time
from typing import Any

import duckdb
import requests


def naive_load(
    base_url: str, api_key: str, slug: str, db_path: str, expected: int
) -> dict[str, Any]:
    """Page the guru's sessions into ``db_path`` the naive way; return timing and coverage."""
    started = time.perf_counter()
    con = duckdb.connect(db_path)
    con.execute("SET TimeZone='UTC'")
    con.execute(
        "CREATE TABLE IF NOT EXISTS sessions (id VARCHAR, last_used TIMESTAMPTZ, "
        "guru_type_slug VARCHAR, guru_type_name VARCHAR, root_question_name VARCHAR, "
        "root_question_slug VARCHAR, root_question_link VARCHAR)"
    )
    page = 1
    n_requests = 0
    while True:
        response = requests.post(
            f"{base_url}/{slug}/sessions/",
            json={"page_num": page},
            headers={"x-api-key": api_key},
            timeout=30,
        )
        n_requests += 1
        response.raise_for_status()
        body = response.json()
        sessions = body["today"] + body["last_week"] + body["older"]
        if not sessions:
            break
        for s in sessions:
            con.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    s["id"],
                    s["last_used"],
                    s["guru_type_slug"],
                    s["guru_type_name"],
                    s["root_question_name"],
                    s["root_question_slug"],
                    s["root_question_link"],
                ],
            )
        page += 1
    elapsed = time.perf_counter() - started
    rows, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM sessions").fetchone()
    con.close()
    return {
        "elapsed": elapsed,
        "requests": n_requests,
        "rows": rows,
        "distinct": distinct,
        "expected": expected,
        "complete": distinct == expected,
    }
