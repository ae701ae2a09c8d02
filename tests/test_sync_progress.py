"""The sync's progress contract (``progress.SyncProgress``), its summary's reprs, and the CLI's
``sync --user`` reading the whole guru (issues 11 and 12).

Real parts throughout: the local server over HTTP and DuckDB files. Only the clock is fake
where waits are asserted (a fake monotonic/sleep pair, so no test sleeps or times anything).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sync_fixtures import client_for, demo_server, new_store, run, truth

from guru_analytics import cli
from guru_analytics.progress import SyncProgress, describe


class FakeClock:
    """Monotonic time that moves only when slept on."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_fraction_never_goes_back_across_listings_and_total_is_known_only_after_a_first_sync(
    tmp_path: Path,
) -> None:
    with demo_server(200, users=4) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:3]
        store = new_store(tmp_path)
        first: list[SyncProgress] = []
        run(srv, store, users=users, on_progress=first.append)
        assert {r.listing for r in first if r.phase == "listing"} == {
            "guru-wide",
            *(f"user:{u}" for u in users),
        }
        # a first sync cannot know its size: no total, no fraction, no ETA until done
        assert all(r.total_requests is None and r.fraction is None for r in first[:-1])
        assert all(r.eta_seconds is None and r.total_sessions is None for r in first[:-1])
        assert first[-1].phase == "done" and first[-1].fraction == 1.0
        assert [r.pages for r in first] == sorted(r.pages for r in first)
        srv.touch(slug, list(srv.truth(slug)["id"][:40]))
        again: list[SyncProgress] = []
        summary = run(srv, store, users=users, full=True, on_progress=again.append)
        fractions = [r.fraction for r in again]
        assert all(f is not None for f in fractions)
        assert fractions == sorted(fractions)  # several listings never move it back
        assert again[-1].phase == "done" and again[-1].fraction == 1.0
        assert all(r.total_requests is not None and r.total_requests >= r.requests for r in again)
        assert all(r.total_sessions == 200 for r in again)
        assert again[-1].requests == summary.requests


def test_waits_count_down_in_slices_and_pace_follows_the_rate_limit(tmp_path: Path) -> None:
    with demo_server(100) as srv:
        store = new_store(tmp_path)
        clock = FakeClock()
        client = client_for(
            srv, rate_limit=10, rate_window=60.0, monotonic=clock.monotonic, sleep=clock.sleep
        )
        seen: list[SyncProgress] = []
        try:
            run(srv, store, client=client, on_progress=seen.append, monotonic=clock.monotonic)
        finally:
            client.close()
        assert all(r.seconds_per_request == 6.0 for r in seen)  # 10 per 60 s
        assert all(s <= 1.0 for s in clock.sleeps)  # every wait sliced into <= 1 s sleeps
        waits = [r.wait_seconds for r in seen if r.phase == "wait"]
        # 5 requests (4 pages and a top-up) fit in one window: nothing waits
        assert waits == [] and len(seen) == 6
        srv.create(srv.guru_slug, 400)  # 13 more pages: the 11th request waits for the window
        seen.clear()
        client = client_for(
            srv, rate_limit=10, rate_window=60.0, monotonic=clock.monotonic, sleep=clock.sleep
        )
        try:
            run(srv, store, client=client, on_progress=seen.append, monotonic=clock.monotonic)
        finally:
            client.close()
        waits = [r.wait_seconds for r in seen if r.phase == "wait"]
        assert waits, "the run should have waited for the window"
        countdown = waits[
            : next((i for i in range(1, len(waits)) if waits[i] > waits[i - 1]), len(waits))
        ]
        assert countdown == sorted(countdown, reverse=True) and len(countdown) > 1
        assert all(a - b <= 1.0 + 1e-9 for a, b in zip(countdown, countdown[1:], strict=False))
        eta = [r.eta_seconds for r in seen if r.phase == "listing"]
        assert all(e is not None for e in eta) and eta[-1] is not None and eta[-1] <= eta[0]
        assert "waiting" in describe(next(r for r in seen if r.phase == "wait"))


def test_summary_repr_is_one_line_and_html_is_a_small_table(tmp_path: Path) -> None:
    with demo_server(40) as srv:
        summary = run(srv, new_store(tmp_path))
    line = repr(summary)
    assert "\n" not in line and len(line) < 160 and "40 new" in line
    page = summary._repr_html_()
    assert page.startswith("<table>") and "40 new, 0 changed, 0 deleted" in page
    assert str(summary).startswith(f"sync {srv.guru_slug}: full, ok")  # str keeps the table


def test_cli_sync_with_one_user_then_sessions_report_holds_every_session(
    tmp_path: Path, capsys: object
) -> None:
    with demo_server(150, users=3) as srv:
        slug = srv.guru_slug
        user = srv.users(slug)[0]
        db = tmp_path / "cli.duckdb"
        args = ["sync", slug, "--db", str(db), "--base-url", srv.base_url]
        args += ["--api-key", str(srv.api_key), "--rate-limit", "none", "--no-progress"]
        assert cli.main([*args, "--user", user]) == 0
        out = tmp_path / "sessions.csv"
        assert cli.main(["report", "sessions", slug, "--db", str(db), "-o", str(out)]) == 0
        report = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert set(report["id"]) == set(truth(srv, slug))  # the whole guru, not only the user's
        mine = set(truth(srv, slug, user))
        assert mine and set(report.loc[report["users"] == user, "id"]) == mine
        others = report[~report["id"].isin(mine)]
        assert set(others["users"]) == {"(unattributed)"}
