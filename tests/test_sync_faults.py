"""sync() under injected faults and API errors: retries absorb transient faults, hard errors
surface as typed errors (Python) and one-line messages (CLI), and the key never leaks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sync_fixtures import assert_exact, client_for, demo_server, list_requests, new_store, run

from guru_analytics import cli
from guru_analytics.client import GurubaseClient
from guru_analytics.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ForbiddenError,
    GuruAnalyticsError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    UnexpectedResponseError,
)
from guru_analytics.server import FaultConfig
from guru_analytics.store import Store

SECRET = "gb-SECRET-7f3a9c1e5b2d4f60a8"


class FakeTime:
    """Injected monotonic clock + sleep: retry backoffs and Retry-After waits take no real
    time (the waits are still computed, logged and counted)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_every_fault_switch_is_absorbed_by_retries(tmp_path: Path) -> None:
    faults = FaultConfig(
        error_rate=0.06,
        error_statuses=(500, 502, 503),
        error_bodies=("html", "json"),
        drop_rate=0.06,
        slow_rate=0.04,
        slow_seconds=0.5,
        throttle_rate=0.06,
        throttle_burst=2,
        retry_after_header=False,
        malformed_json_rate=0.06,
        html_200_rate=0.06,
        seed=11,
    )
    with demo_server(150, faults=faults) as srv:
        slug = srv.guru_slug
        fake = FakeTime()
        client = client_for(
            srv, timeout=0.25, max_retries=8, monotonic=fake.monotonic, sleep=fake.sleep
        )
        store = new_store(tmp_path)
        first = run(srv, store, client=client, messages=True, max_requests=25)
        srv.touch(slug, list(srv.truth(slug)["id"].iloc[40:45]))
        srv.create(slug, 4)
        second = run(srv, store, client=client, full=True, messages=True, max_requests=25)
        assert_exact(store, srv, slug)
        # max_requests counts HTTP attempts, retries included: fewer sessions than 25
        assert 0 < first.messages_fetched <= 25 and 0 < second.messages_fetched <= 25
        fetched = first.messages_fetched + second.messages_fetched
        assert second.messages_remaining == 150 + 4 - fetched
        total_retries = first.retries + second.retries
        total_429 = first.throttled + second.throttled
        assert total_retries > 10 and total_429 > 0 and fake.slept
        # the client's counters agree with the server's log
        assert srv.request_count(status=429) == total_429
        assert srv.request_count() == first.requests + second.requests
        # every status the faults produced really happened
        statuses = {r.status for r in srv.log}
        assert {None, 200, 429} <= statuses and statuses & {500, 502, 503}


# --- hard errors ------------------------------------------------------------------------------

ERRORS: dict[str, tuple[type[ApiError], dict[str, Any]]] = {
    "401": (AuthenticationError, {"key": "gb-wrong-key-00000000"}),
    "403": (ForbiddenError, {"key": "gb-other-owner-key-1234"}),
    "404": (NotFoundError, {"guru": "no-such-guru"}),
    "400": (
        BadRequestError,
        {"faults": FaultConfig(error_rate=1.0, error_statuses=(400,), error_bodies=("json",))},
    ),
    "429": (
        RateLimitedError,
        {"faults": FaultConfig(throttle_rate=1.0, throttle_burst=1000, retry_after_header=False)},
    ),
    "5xx": (ServerError, {"faults": FaultConfig(error_rate=1.0, error_statuses=(502,))}),
    "html": (UnexpectedResponseError, {"faults": FaultConfig(html_200_rate=1.0)}),
}


def _error_server(case: str) -> Any:
    _cls, spec = ERRORS[case]
    srv = demo_server(40, api_key=SECRET, faults=spec.get("faults"))
    srv.add_key("gb-other-owner-key-1234", "someone-else", gurus=["another-guru"])
    return srv


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_typed_recorded_and_keyless(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cls, spec = ERRORS[case]
    with _error_server(case) as srv:
        fake = FakeTime()
        client = GurubaseClient(
            spec.get("key", SECRET),
            srv.base_url,
            rate_limit=None,
            max_retries=2,
            monotonic=fake.monotonic,
            sleep=fake.sleep,
        )
        store = new_store(tmp_path)
        guru = spec.get("guru", srv.guru_slug)
        with pytest.raises(cls) as info:
            run(srv, store, client=client, guru=guru)
        message = str(info.value)
        assert "\n" not in message and SECRET not in message and SECRET not in repr(info.value)
        runs = store.runs(guru)
        assert list(runs["outcome"]) == ["error"]
        assert runs["error"].iloc[0] == message
        state = store.get_state(guru, "")
        assert state is None or state.watermark is None
        retried = case in ("429", "5xx", "html")
        assert list_requests(srv, guru) == (3 if retried else 1)
        assert SECRET not in caplog.text
        store.close()
        _assert_key_absent(tmp_path)


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_cli_errors_are_one_line_without_traceback(
    tmp_path: Path,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The CLI builds its own client: swap the default clock/sleep seams for a fake clock so
    # the retry backoffs (>= 1 s each) cost no real time. Everything else is the real path.
    fake = FakeTime()
    defaults = GurubaseClient.__init__.__kwdefaults__
    monkeypatch.setitem(defaults, "monotonic", fake.monotonic)
    monkeypatch.setitem(defaults, "sleep", fake.sleep)
    _cls, spec = ERRORS[case]
    with _error_server(case) as srv:
        monkeypatch.setenv("GURUBASE_API_KEY", spec.get("key", SECRET))
        db = tmp_path / "cli.duckdb"
        argv = ["sync", spec.get("guru", srv.guru_slug), "--db", str(db), "--base-url"]
        argv += [srv.base_url, "--rate-limit", "none", "--no-progress"]
        rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("guru-analytics: error: ")
    assert "Traceback" not in err and SECRET not in err and SECRET not in caplog.text
    expected_code = {"401": 3, "403": 3, "404": 4}.get(case, 1)
    assert rc == expected_code
    _assert_key_absent(tmp_path)


def test_cli_sync_prints_summary_and_key_stays_out_of_everything(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    users = tmp_path / "users.txt"
    with demo_server(70, users=3, api_key=SECRET) as srv:
        slug = srv.guru_slug
        names = srv.users(slug)
        users.write_text("# ids\n" + "\n".join(names[1:]) + "\n\n", encoding="utf-8")
        db = tmp_path / "cli.duckdb"
        base = ["sync", slug, "--db", str(db), "--base-url", srv.base_url, "--api-key", SECRET]
        base += ["--rate-limit", "none", "--no-progress"]
        assert cli.main([*base, "--messages", "--max-requests", "5"]) == 0
        out, err = capsys.readouterr()
        assert out.startswith(f"sync {slug}: full, ok (run 1,") and err == ""
        assert "70 new" in out and "5 sessions fetched, 65 remaining" in out
        assert cli.main([*base, "--user", names[0], "--users-file", str(users)]) == 0
        out, _ = capsys.readouterr()
        assert f"user:{names[0]}, user:{names[1]}, user:{names[2]}" in out
        rc = cli.main([*base, "--users-file", str(tmp_path / "missing.txt")])
        _, err = capsys.readouterr()
        assert rc == 2 and "users file" in err and "not found" in err
        with Store(db) as store:
            runs = store.runs(slug)
        assert list(runs["outcome"]) == ["ok", "ok"]
    assert SECRET not in caplog.text
    _assert_key_absent(tmp_path)


def test_config_errors_never_echo_the_key(tmp_path: Path) -> None:
    with demo_server(1) as srv, pytest.raises(GuruAnalyticsError) as info:
        GurubaseClient(SECRET[:10] + " " + SECRET[10:], srv.base_url)
    assert SECRET not in str(info.value)


def _assert_key_absent(root: Path) -> None:
    """No file under root (the DuckDB cache, its .wal, users files...) holds the key bytes."""
    needle = SECRET.encode()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in files)
    for p in files:
        assert needle not in p.read_bytes(), p
