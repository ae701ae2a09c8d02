"""sync across processes: kill -9 mid-sync then resume, a reader process while a CLI sync
waits on its rate limit, and rate-limit obedience against a server with the same limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_fixtures import (
    assert_exact,
    client_for,
    demo_server,
    full_budget,
    list_requests,
    new_store,
    run,
    truth,
)

from guru_analytics.server import FaultConfig, LocalGurubase

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _cli(srv: LocalGurubase, db: Path, rate_limit: str) -> subprocess.Popen[str]:
    """``guru-analytics sync`` of the server's guru in a child process (key in the env)."""
    env = {**os.environ, "GURUBASE_API_KEY": srv.api_key or "", "PYTHONUNBUFFERED": "1"}
    args = [srv.guru_slug, "--db", str(db), "--base-url", srv.base_url]
    args += ["--rate-limit", rate_limit, "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-m", "guru_analytics", "sync", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting for the subprocess"
        time.sleep(0.02)


def test_kill_9_mid_sync_then_resume_is_exact(tmp_path: Path) -> None:
    # every answer is slowed down so the CLI is surely mid-pass when it is killed
    with demo_server(240, faults=FaultConfig(slow_rate=1.0, slow_seconds=0.12)) as srv:
        slug = srv.guru_slug
        db = tmp_path / "cache.duckdb"
        proc = _cli(srv, db, "none")
        try:
            _wait_for(lambda: list_requests(srv) >= 5 or proc.poll() is not None)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        killed_after = list_requests(srv)
        assert 5 <= killed_after < full_budget(240)
        srv.faults = FaultConfig()
        srv.create(slug, 3)  # life goes on while the sync is dead
        store = new_store(tmp_path)
        state = store.get_state(slug, "")
        assert state is not None and state.watermark is None
        assert state.pass_next_page is not None and 2 <= state.pass_next_page <= killed_after + 1
        srv.clear_log()
        summary = run(srv, store)
        assert summary.mode == "resume"
        assert_exact(store, srv, slug)
        state = store.get_state(slug, "")
        assert state is not None and state.pass_next_page is None
        assert state.watermark == max(truth(srv, slug).values())
        runs = store.runs(slug)
        assert list(runs["outcome"]) == ["interrupted", "ok"]
        assert int(runs["run_id"].iloc[0]) == 1 and runs["mode"].iloc[1] == "resume"
        # the next incremental is one request: the watermark is sane
        srv.clear_log()
        run(srv, store)
        assert list_requests(srv) == 1


READER = """
import sys
from guru_analytics.store import Store
store = Store(sys.argv[1], lock_timeout=5)
with store.reader() as con:
    print(con.execute("SELECT count(*) FROM sessions").fetchone()[0])
"""


def test_reader_process_reads_while_cli_sync_waits_on_rate_limit(tmp_path: Path) -> None:
    with demo_server(200) as srv:
        slug = srv.guru_slug
        db = tmp_path / "cache.duckdb"
        # 3 requests a minute: the 4th page waits ~60 s, with the cache file released
        proc = _cli(srv, db, "3")
        try:
            _wait_for(lambda: list_requests(srv) >= 3 or proc.poll() is not None)
            time.sleep(0.5)  # page 3 written, now sleeping in the limiter
            assert proc.poll() is None
            reader = subprocess.run(
                [sys.executable, "-c", READER, str(db)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert reader.returncode == 0, reader.stderr
            assert int(reader.stdout.strip()) == 90
            assert list_requests(srv) == 3  # still waiting: the reader did not wait for it
            proc.send_signal(signal.SIGINT)  # Ctrl-C during the wait
            _out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130
        assert err.strip().splitlines() == [
            "guru-analytics: interrupted; the cache keeps every page written so far"
        ]
        store = new_store(tmp_path)
        assert list(store.runs(slug)["outcome"]) == ["interrupted"]
        assert store.get_state(slug, "").pass_next_page == 4


def test_rate_limit_obeyed_with_zero_429s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit, window = 10, 1.0
    with demo_server(540, rate_limit=limit, rate_window=window) as srv:
        client = client_for(srv, rate_limit=limit, rate_window=window)
        store = new_store(tmp_path)
        t0 = time.monotonic()
        summary = run(srv, store, client=client)
        wall = time.monotonic() - t0
        assert srv.request_count(status=429) == 0 and summary.throttled == 0
        assert summary.requests == list_requests(srv) == full_budget(540) == 19
        assert_exact(store, srv, srv.guru_slug)
        floor = summary.requests * window / limit
        with capsys.disabled():
            print(
                f"\nrate limit {limit}/{window:g}s: {summary.requests} requests in {wall:.2f} s, "
                f"ratio to requests*window/R = {wall / floor:.2f}"
            )
