"""Measure the DuckDB cache's write path: page writes, message writes and bulk loads.

Run: ``python benchmarks/store_bench.py [--pages 1000] [--cache 30000] [--big-cache 1000000]
[--big-pages 300] [--messages 1000] [--bulk 1000000] [--frames]`` (0 skips a case).

Pages go the sync's way by default: typed rows through ``Store.write_pages`` with the pass
state in the same transaction; ``--frames`` measures ``write_page`` with a DataFrame instead
(the validated path for users' frames).

Page writes go into a cache of ``--cache`` sessions (and ``--big-cache`` for the scaling
check) that also holds a second, small guru, as a shared cache file does: with one guru only,
DuckDB's statistics would drop the guru condition and hide its cost. Ids are random UUIDs,
as Gurubase's are. Modes: ``unchanged`` (a re-read of 30 cached sessions), ``mixed`` (5 of
them moved forward, 2 new sessions) and ``new`` (30 new sessions). Prints medians of wall
and process CPU time; numbers depend on the machine (they are not asserted anywhere).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from guru_analytics.store import ListedPage, Store

BASE = datetime(2025, 1, 1, tzinfo=UTC)
MESSAGES_PER_SESSION = 5
MESSAGE_BATCH = 50


def uuids(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).bytes(16 * n)
    return np.array([str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16])) for i in range(n)])


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
    lu = pd.Series(pd.to_datetime(BASE) + pd.to_timedelta(rng.integers(0, 10**7, n), unit="s"))
    return listing(uuids(n, seed), lu.astype("datetime64[us, UTC]"))


def cache(path: Path, n: int) -> tuple[Store, pd.DataFrame]:
    """A cache of ``n`` sessions of guru 'g' plus 1,000 of guru 'other'."""
    store = Store(path)
    frame = sessions(n, 1)
    store.load_frame("g", frame, seen_at=BASE)
    store.load_frame("other", sessions(1000, 99), seen_at=BASE)
    return store, frame


def typed(page: pd.DataFrame) -> ListedPage:
    """A frame's rows as the typed page the sync hands the store (a ``ListedRow`` each)."""
    rows = page.to_dict("records")
    for row in rows:
        row["last_used"] = pd.Timestamp(row["last_used"]).to_pydatetime()
    return ListedPage([SimpleNamespace(**row) for row in rows])


def bench_pages(
    n_cache: int, n_pages: int, mode: str, frames: bool = False
) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        store, frame = cache(Path(tmp) / "bench.duckdb", n_cache)
        rng = np.random.default_rng(2)
        last_used = frame["last_used"].to_numpy().copy()
        times, cpu = [], []
        seen = BASE + timedelta(days=365)
        for i in range(n_pages):
            idx = rng.choice(n_cache, 30, replace=False)
            page = frame.iloc[idx].copy()
            page["last_used"] = last_used[idx]  # a re-read sees the current values
            if mode == "mixed":  # 5 sessions moved forward, 2 new ones
                moved = page["last_used"].iloc[:5] + pd.Timedelta(hours=1 + i)
                page.loc[page.index[:5], "last_used"] = moved
                last_used[idx[:5]] = moved.to_numpy()
                page = pd.concat([page.iloc[:28], sessions(2, 1000 + i)], ignore_index=True)
            elif mode == "new":
                page = sessions(30, 10_000 + i)
            seen = seen + timedelta(seconds=6)
            rows = None if frames else [typed(page)]
            t, c = time.perf_counter(), time.process_time()
            if rows is None:
                store.write_page("g", page, seen)
            else:
                state = {"": {"pass_top": seen, "pass_next_page": i + 2}}
                store.write_pages("g", rows, seen, state)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        store.close()
        return times, cpu


def conversations(ids: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fetch records and messages (``MESSAGES_PER_SESSION`` each) for these sessions."""
    k = MESSAGES_PER_SESSION
    n = len(ids)
    created = pd.Series(
        pd.to_datetime(BASE) + pd.to_timedelta(np.arange(n * k), unit="min")
    ).astype("datetime64[us, UTC]")
    messages = pd.DataFrame(
        {
            "session_id": np.repeat(ids, k),
            "id": [str(i) for i in range(n * k)],
            "slug": [f"question-{i}" for i in range(n * k)],
            "parent_slug": [None if i % k == 0 else f"question-{i - i % k}" for i in range(n * k)],
            "question": [f"How do I {i}?" for i in range(n * k)],
            "user_question": [f"how do i {i}" for i in range(n * k)],
            "date_created": created,
            "date_updated": created,
            "source": ["USER"] * (n * k),
            "trust_score": pd.array(np.arange(n * k) % 100, dtype="Int64"),
            "user_vote": [None] * (n * k),
            "answer": ["An answer with **markdown** and a [link](https://example.com)."] * (n * k),
            "n_references": pd.array(np.full(n * k, 2), dtype="Int64"),
            "extra": [None] * (n * k),
        }
    )
    last = created.iloc[k - 1 :: k].reset_index(drop=True)
    fetches = pd.DataFrame(
        {
            "session_id": ids,
            "status": "ok",
            "fetched_last_used": last,
            "fetched_at": pd.Series([BASE + timedelta(days=400)] * n).astype("datetime64[us, UTC]"),
        }
    )
    return fetches, messages


def bench_messages(n_cache: int, n_sessions: int) -> dict[str, tuple[float, float]]:
    """Per-session wall and CPU medians: one ``write_messages`` call per session, and (when the
    Store has it) ``write_conversations`` with ``MESSAGE_BATCH`` sessions a call."""
    out: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store, frame = cache(Path(tmp) / "messages.duckdb", n_cache)
        ids = frame["id"].to_numpy()
        fetches, messages = conversations(ids[: 2 * n_sessions])
        by_session = dict(
            tuple(messages.drop(columns="session_id").groupby(messages["session_id"]))
        )
        times, cpu = [], []
        for row in fetches.iloc[:n_sessions].itertuples(index=False):
            msgs = by_session[row.session_id]
            t, c = time.perf_counter(), time.process_time()
            store.write_messages(
                "g",
                row.session_id,
                msgs,
                fetched_last_used=row.fetched_last_used,
                fetched_at=row.fetched_at,
            )
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out["write_messages"] = (statistics.median(times), statistics.median(cpu))
        if hasattr(store, "write_conversations"):
            times, cpu = [], []
            rest = fetches.iloc[n_sessions:]
            for start in range(0, len(rest), MESSAGE_BATCH):
                batch = rest.iloc[start : start + MESSAGE_BATCH]
                msgs = messages[messages["session_id"].isin(batch["session_id"])]
                t, c = time.perf_counter(), time.process_time()
                store.write_conversations("g", batch, msgs)
                times.append((time.perf_counter() - t) / len(batch))
                cpu.append((time.process_time() - c) / len(batch))
            out[f"write_conversations ({MESSAGE_BATCH} a call)"] = (
                statistics.median(times),
                statistics.median(cpu),
            )
        store.close()
    return out


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


def report_pages(n_cache: int, n_pages: int, frames: bool = False) -> None:
    for mode in ("unchanged", "mixed", "new"):
        times, cpu = bench_pages(n_cache, n_pages, mode, frames)
        q = np.percentile(times, [50, 90, 99]) * 1000
        head, tail = min(100, n_pages // 3 or 1), min(100, n_pages // 3 or 1)
        print(
            f"{n_pages} x 30-row {'frame' if frames else 'typed'} pages ({mode}) "
            f"into {n_cache} sessions: "
            f"wall median {statistics.median(times) * 1000:.2f} ms (p90 {q[1]:.2f}, "
            f"p99 {q[2]:.2f}); process CPU median {statistics.median(cpu) * 1000:.2f} ms "
            f"(first {head}: {statistics.median(cpu[:head]) * 1000:.2f}, "
            f"last {tail}: {statistics.median(cpu[-tail:]) * 1000:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--cache", type=int, default=30_000)
    parser.add_argument("--big-cache", type=int, default=1_000_000)
    parser.add_argument("--big-pages", type=int, default=300)
    parser.add_argument("--messages", type=int, default=1000, help="sessions per message case")
    parser.add_argument("--bulk", type=int, default=1_000_000)
    parser.add_argument("--frames", action="store_true", help="pages as DataFrames (write_page)")
    args = parser.parse_args()
    print(calibrate())
    if args.pages:
        report_pages(args.cache, args.pages, args.frames)
    if args.big_cache and args.big_pages:
        report_pages(args.big_cache, args.big_pages, args.frames)
    if args.messages:
        for name, (wall, cpu) in bench_messages(args.cache, args.messages).items():
            print(
                f"{name}, {MESSAGES_PER_SESSION} messages per session, {args.messages} "
                f"sessions into {args.cache}: per session wall median {wall * 1000:.2f} ms, "
                f"process CPU median {cpu * 1000:.2f} ms"
            )
    if args.bulk:
        res = bench_bulk(args.bulk)
        print(
            f"load_frame {args.bulk} sessions + {res['events']:.0f} events + users: "
            f"{res['first_s']:.2f} s first, {res['reload_s']:.2f} s reload"
        )


if __name__ == "__main__":
    main()
