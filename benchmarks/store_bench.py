"""Measure the DuckDB cache's write path: page writes and bulk loads.

Run: ``python benchmarks/store_bench.py [--pages 1000] [--cache 30000] [--bulk 1000000]``.
Prints medians; numbers depend on the machine (they are not asserted anywhere).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from guru_analytics.store import Store

BASE = datetime(2025, 1, 1, tzinfo=UTC)


def listing(ids: np.ndarray, last_used: pd.Series) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "id": pd.array(ids, dtype="str"),
            "last_used": last_used.to_numpy(),
            "guru_type_name": ["Demo"] * n,
            "root_question_name": [f"How do I {i}?" for i in range(n)],
            "root_question_slug": [f"how-do-i-{i}" for i in range(n)],
            "root_question_link": [f"https://gurubase.io/g/demo/how-do-i-{i}" for i in range(n)],
            "extra": [None] * n,
        }
    )


def sessions(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.array([f"{seed:04d}-{i:012d}" for i in range(n)])
    lu = pd.Series(pd.to_datetime(BASE) + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s"))
    return listing(ids, lu.astype("datetime64[us, UTC]"))


def bench_pages(n_cache: int, n_pages: int, mode: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        frame = sessions(n_cache, 1)
        store.load_frame("g", frame, seen_at=BASE)
        rng = np.random.default_rng(2)
        times = []
        cpu = []
        seen = BASE
        for i in range(n_pages):
            idx = rng.choice(n_cache, 30, replace=False)
            page = frame.iloc[idx].copy()
            if mode == "mixed":  # 5 touched sessions, 2 new ones
                page.loc[page.index[:5], "last_used"] += pd.Timedelta(hours=1 + i)
                new = sessions(2, 1000 + i)
                page = pd.concat([page.iloc[:28], new], ignore_index=True)
            elif mode == "new":
                page = sessions(30, 10_000 + i)
            seen = seen + timedelta(seconds=6)
            t, c = time.perf_counter(), time.process_time()
            store.write_page("g", page, seen)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        store.close()
        return times, cpu


def bench_bulk(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bulk.duckdb")
        frame = sessions(n, 7)
        rng = np.random.default_rng(3)
        reps = rng.integers(1, 5, n)
        events = pd.DataFrame(
            {
                "id": np.repeat(frame["id"].to_numpy(), reps),
                "ts": pd.DatetimeIndex(np.repeat(frame["last_used"].array, reps))
                - pd.to_timedelta(rng.integers(0, 10**6, int(reps.sum())), unit="s"),
            }
        )
        users = pd.DataFrame(
            {"id": frame["id"], "external_user_id": [f"u{i % 50}" for i in range(n)]}
        )
        t = time.perf_counter()
        first = store.load_frame("g", frame, events, users, seen_at=BASE)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        again = store.load_frame("g", frame, events, users, seen_at=BASE + timedelta(days=1))
        t_again = time.perf_counter() - t
        store.close()
        print(f"  first load: {first}")
        print(f"  reload:     {again}")
        return {"events": float(len(events)), "first_s": t_first, "reload_s": t_again}


def calibrate() -> str:
    """How fast DuckDB round trips are on this machine, to read the numbers above against."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "cal.duckdb")
        conn = store.connection()
        one, txn = [], []
        for _ in range(500):
            t = time.process_time()
            conn.execute("SELECT 1").fetchall()
            one.append(time.process_time() - t)
            t = time.process_time()
            conn.execute("BEGIN TRANSACTION")
            conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
            conn.execute("COMMIT")
            txn.append(time.process_time() - t)
        store.close()
    return (
        f"calibration: SELECT 1 {statistics.median(one) * 1000:.3f} ms CPU, "
        f"one-row update transaction {statistics.median(txn) * 1000:.3f} ms CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--cache", type=int, default=30_000)
    parser.add_argument("--bulk", type=int, default=1_000_000)
    args = parser.parse_args()
    print(calibrate())
    for mode in ("unchanged", "mixed", "new") if args.pages else ():
        times, cpu = bench_pages(args.cache, args.pages, mode)
        q = np.percentile(times, [50, 90, 99]) * 1000
        print(
            f"{args.pages} x 30-row pages ({mode}) into {args.cache} sessions: "
            f"wall median {statistics.median(times) * 1000:.2f} ms (p90 {q[1]:.2f}, "
            f"p99 {q[2]:.2f}); process CPU median {statistics.median(cpu) * 1000:.2f} ms "
            f"(first 100: {statistics.median(cpu[:100]) * 1000:.2f}, "
            f"last 100: {statistics.median(cpu[-100:]) * 1000:.2f})"
        )
    if args.bulk:
        res = bench_bulk(args.bulk)
        print(
            f"load_frame {args.bulk} sessions + {res['events']:.0f} events + users: "
            f"{res['first_s']:.2f} s first, {res['reload_s']:.2f} s reload"
        )


if __name__ == "__main__":
    main()
