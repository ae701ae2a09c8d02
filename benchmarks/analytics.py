"""4. Analytics at scale: ``guru_analytics.frames`` beside hand-written DuckDB SQL.

A cache of a million sessions (10,000 users) is loaded straight from the synthetic generator
with ``Store.load_frame``: sessions, their external users, and one observation per
synthetic message instant (every ``last_used`` a sync could have seen). Then each frame and
its hand-written twin (``handwritten``) run in their own fresh process on a read-only
connection: one warm-up, then the timed runs (median), peak RSS via ``VmHWM`` (DuckDB's
native memory included). Before comparing speed the benchmark checks both return the same
numbers (row count and the sum of every shared numeric column).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .plan import Plan
from .table import Row, fmt_mb, fmt_seconds
from .worker import run_fresh

SECTION = "4. Analytics"
SLUG = "bench-guru"
TARGET = 1.5

CALLS: dict[str, str] = {
    "activity": "activity(freq='D', by='user')",
    "users": "users()",
    "lifecycle": "lifecycle(freq='W')",
    "retention": "retention(freq='W', periods=8)",
    "sessions": "sessions()",
}


def build_cache(
    db_path: str, n_sessions: int, n_users: int, n_observations: int, seed: int = 0
) -> dict[str, Any]:
    """Generate a guru and load it into a new cache file (runs in a fresh process)."""
    import numpy as np
    import pandas as pd

    from guru_analytics import synthetic
    from guru_analytics.store import Store

    t0 = time.perf_counter()
    guru = synthetic.generate(n_sessions, n_users, seed=seed, guru_slug=SLUG)
    t1 = time.perf_counter()
    events = synthetic.message_events(guru.sessions, seed=seed)[["id", "ts"]]
    if len(events) > n_observations:
        keep = np.random.default_rng(seed).choice(len(events), n_observations, replace=False)
        events = events.iloc[np.sort(keep)]
    s = guru.sessions
    users = pd.DataFrame({"id": s["id"], "external_user_id": s["external_user_id"]})
    users = users[users["external_user_id"].notna()]
    t2 = time.perf_counter()
    store = Store(db_path)
    loaded = store.load_frame(SLUG, s, events, users)
    store.close()
    t3 = time.perf_counter()
    return {
        "generate_s": t1 - t0,
        "events_s": t2 - t1,
        "load_s": t3 - t2,
        "sessions": len(s),
        "users": int(users["external_user_id"].nunique()),
        "observations": int(getattr(loaded, "observed", len(events))),
        "attributed": int(getattr(loaded, "attributed", len(users))),
    }


def _fingerprint(df: Any) -> dict[str, float]:
    """Row count and the sum of each numeric column: enough to tell two results apart."""
    out = {"rows": float(len(df))}
    for col in df.columns:
        kind = df[col].dtype.kind
        if kind in "iufb":
            out[str(col)] = float(df[col].astype("float64").sum())
    return out


def time_query(db_path: str, name: str, kind: str, repeats: int) -> dict[str, Any]:
    """Time one frame (``kind='frames'``) or its SQL twin (``'sql'``) on a read-only file."""
    import duckdb

    from guru_analytics import frames

    from .handwritten import QUERIES

    con = duckdb.connect(db_path, read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    calls: dict[str, Callable[[], Any]] = {
        "activity": lambda: frames.activity(con, SLUG, freq="D", by="user"),
        "users": lambda: frames.users(con, SLUG),
        "lifecycle": lambda: frames.lifecycle(con, SLUG, freq="W"),
        "retention": lambda: frames.retention(con, SLUG, freq="W", periods=8),
        "sessions": lambda: frames.sessions(con, SLUG),
    }
    if kind == "frames":
        call = calls[name]
    else:
        sql = QUERIES[name]

        def call() -> Any:
            return con.execute(sql, {"guru": SLUG}).df()

    result = call()  # warm-up: the first read pulls the file into DuckDB's buffers
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
    fp = _fingerprint(result)
    con.close()
    return {"times": times, "fingerprint": fp}


def _same(a: dict[str, float], b: dict[str, float]) -> tuple[bool, str]:
    shared = sorted(set(a) & set(b))
    diff = [c for c in shared if not math.isclose(a[c], b[c], rel_tol=1e-9, abs_tol=1e-6)]
    if diff:
        return False, "DIFFERENT: " + ", ".join(f"{c} {a[c]:g} vs {b[c]:g}" for c in diff[:3])
    return True, f"same numbers ({int(a['rows']):,} rows; compared {', '.join(shared)})"


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "analytics.duckdb"
    n = plan.analytics_sessions
    say(f"analytics: building a cache of {n:,} sessions")
    built = run_fresh(
        "benchmarks.analytics:build_cache",
        {
            "db_path": str(db),
            "n_sessions": n,
            "n_users": plan.analytics_users,
            "n_observations": plan.analytics_observations,
        },
        timeout=3600,
    )
    if built.result is None:
        return [Row(SECTION, f"load {n:,} sessions", f"failed: {built.error}")]
    b = built.result
    rows = [
        Row(
            SECTION,
            f"load {b['sessions']:,} sessions, {b['users']:,} users, "
            f"{b['observations']:,} observations",
            f"{fmt_seconds(b['load_s'])} in Store.load_frame",
            notes=(
                f"generate {fmt_seconds(b['generate_s'])}, message events "
                f"{fmt_seconds(b['events_s'])}; peak RSS of the loading process "
                f"{fmt_mb(built.peak_rss_mb)}; observations = the synthetic message instants "
                f"(capped at {plan.analytics_observations:,})"
            ),
        )
    ]
    for name, call in CALLS.items():
        say(f"analytics: {name}")
        got = {
            kind: run_fresh(
                "benchmarks.analytics:time_query",
                {"db_path": str(db), "name": name, "kind": kind, "repeats": plan.repeats},
                timeout=3600,
            )
            for kind in ("frames", "sql")
        }
        f, s = got["frames"], got["sql"]
        if f.result is None or s.result is None:
            rows.append(
                Row(
                    SECTION,
                    f"frames.{call}",
                    f"failed: {f.error or ''} {s.error or ''}".strip(),
                    target=f"<= {TARGET}x hand-written SQL",
                    met=False,
                )
            )
            continue
        tf, ts = statistics.median(f.result["times"]), statistics.median(s.result["times"])
        same, how = _same(f.result["fingerprint"], s.result["fingerprint"])
        ratio = tf / ts
        rows.append(
            Row(
                SECTION,
                f"frames.{call}",
                f"{fmt_seconds(tf)}; peak RSS {fmt_mb(f.peak_rss_mb)}",
                f"hand-written SQL {fmt_seconds(ts)}; peak RSS {fmt_mb(s.peak_rss_mb)}",
                f"{ratio:.2f}x",
                f"<= {TARGET}x",
                ratio <= TARGET and same,
                f"median of {len(f.result['times'])} after a warm-up; {how}",
            )
        )
    db.unlink(missing_ok=True)
    return rows
