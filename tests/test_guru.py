"""``Guru``: the notebook entry object, against a real local server and a real DuckDB file."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes

from guru_analytics import Guru as LazyGuru
from guru_analytics.errors import AuthenticationError, ConfigError, NoDataError
from guru_analytics.guru import Guru
from guru_analytics.server import LocalGurubase

N_SESSIONS = 300
N_USERS = 6


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Guru, int]]:
    """A local guru synced once (guru-wide + every user, no messages); yields the request
    count the server had seen right after the sync."""
    g = Guru.local(N_SESSIONS, N_USERS, 45, db=tmp_path_factory.mktemp("g") / "cache.duckdb")
    summary = g.sync(progress=False)
    assert summary.mode == "full" and summary.outcome == "ok"
    yield g, g.server.request_count()
    g.close()


def test_lazy_import_is_the_same_class() -> None:
    assert LazyGuru is Guru


def test_sync_matches_the_server_truth(synced: tuple[Guru, int]) -> None:
    g, _ = synced
    srv = g.server
    truth = srv.truth(g.slug)
    status = g.status()
    assert status.sessions == len(truth) == N_SESSIONS
    assert status.users == len(srv.users(g.slug)) == truth["external_user_id"].nunique()
    assert status.first_event == truth["last_used"].min().to_pydatetime()
    assert status.last_event == truth["last_used"].max().to_pydatetime()
    assert status.last_run is not None and status.last_run["outcome"] == "ok"
    sessions = g.sessions()
    assert set(sessions["id"]) == set(truth["id"])
    users = g.users().set_index("user")
    for user, n in truth["external_user_id"].fillna("(unattributed)").value_counts().items():
        assert users.loc[user, "sessions"] == n


def test_second_sync_is_incremental_and_costs_one_request(synced: tuple[Guru, int]) -> None:
    # issue 13: the guru-wide listing is the change feed; with nothing new the user listings
    # are skipped (they used to cost one request each)
    g, _ = synced
    before = g.server.request_count()
    summary = g.sync(progress=False)
    assert summary.mode == "incremental"
    assert len(summary.listings) == 1 + N_USERS
    assert summary.requests == 1 == g.server.request_count() - before
    assert any(f"skipped {N_USERS} user listing(s)" in n for n in summary.notes)
    assert summary.sessions_new == summary.sessions_changed == 0
    g.server.clear_log()


def test_reads_never_fetch(synced: tuple[Guru, int], tmp_path: Path) -> None:
    g, _ = synced
    g.server.clear_log()
    g.activity("week", tz="Europe/Berlin", by="user")
    g.lifecycle()
    g.retention(periods=4)
    g.summary(now="latest")
    g.heatmap()
    g.plot_activity()
    g.plot_users()
    g.plot_heatmap()
    g.plot_lifecycle()
    g.plot_retention()
    g.export("users", tmp_path / "u.csv")
    repr(g)
    g._repr_html_()
    g.dashboard()
    assert g.server.request_count() == 0


def test_frames_use_the_default_time_zone(tmp_path: Path, synced: tuple[Guru, int]) -> None:
    g0, _ = synced
    g = Guru(g0.slug, db=g0.db, tz="America/New_York")
    df = g.activity("day")
    assert str(df["bucket"].dt.tz) == "America/New_York"
    assert (df["bucket"].dt.hour == 0).all()
    assert int(df["active_sessions"].sum()) == N_SESSIONS
    utc = g.activity("day", tz="UTC")
    assert str(utc["bucket"].dt.tz) == "UTC"
    assert not np.array_equal(
        df["active_sessions"].to_numpy()[:20], utc["active_sessions"].to_numpy()[:20]
    )


def test_summary_latest_ends_at_the_last_day_of_data(synced: tuple[Guru, int]) -> None:
    g, _ = synced
    df = g.summary("7d", now="latest").set_index("metric")
    truth = g.server.truth(g.slug)
    end = truth["last_used"].max()
    # `latest` ends the window just after the newest event, so that event counts.
    lo = end + pd.Timedelta(microseconds=1) - pd.Timedelta(days=7)
    assert int(df.loc["active_sessions", "current"]) == int((truth["last_used"] >= lo).sum())


def test_plots_return_axes_drawn_from_the_cache(synced: tuple[Guru, int]) -> None:
    g, _ = synced
    ax = g.plot_activity("week")
    assert isinstance(ax, Axes)
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == N_SESSIONS
    ax = g.plot_users(top=3)
    # issue 16: three people, plus (unattributed) as its own bar when there is any
    anon = int((g.users()["user"] == "(unattributed)").any())
    assert len(ax.patches) == 3 + anon
    assert [t.get_text() for t in ax.get_yticklabels()][0] == g.users()["user"].iloc[0]
    assert isinstance(g.plot_heatmap(metric="active_sessions"), Axes)
    assert isinstance(g.plot_lifecycle(), Axes)
    assert isinstance(g.plot_retention(periods=4), Axes)


def test_export_writes_the_frame(synced: tuple[Guru, int], tmp_path: Path) -> None:
    g, _ = synced
    out = tmp_path / "activity.csv"
    df = g.export("activity", out, freq="week", by="user")
    back = pd.read_csv(out)
    assert list(back.columns) == list(df.columns)
    assert len(back) == len(df) > 0
    assert int(back["active_sessions"].sum()) == int(df["active_sessions"].sum()) == N_SESSIONS


def test_repr_shows_the_cache_and_never_the_key(synced: tuple[Guru, int]) -> None:
    g, _ = synced
    key = g.server.api_key
    assert key is not None
    text = repr(g)
    page = g._repr_html_()
    for shown in (text, page):
        assert key not in shown
        assert key[-4:] in shown  # masked: the last four characters only
        assert (
            f"{N_SESSIONS:,} sessions" in shown
            or f"<td style='text-align:left'>{N_SESSIONS:,}" in shown
        )
    assert f"{N_USERS} users" in text and "last sync" in text and "(incremental, ok)" in text
    status = g.status()
    assert status.span in text and status.span in page


def test_key_from_environment_and_explicit_base_url(
    synced: tuple[Guru, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g0, _ = synced
    srv = g0.server
    monkeypatch.setenv("GURUBASE_API_KEY", srv.api_key)
    g = Guru(g0.slug, base_url=srv.base_url, db=tmp_path / "env.duckdb", rate_limit=None)
    assert srv.api_key not in repr(g) and "(GURUBASE_API_KEY)" in repr(g)
    summary = g.sync(users=[], progress=False)
    assert summary.listings == [""] and summary.sessions_new == N_SESSIONS
    assert g.status().users == 0  # no per-user listing: nothing attributed yet
    g.close()


def test_base_url_from_environment(
    synced: tuple[Guru, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g0, _ = synced
    srv = g0.server
    monkeypatch.setenv("GURUBASE_BASE_URL", srv.base_url)
    g = Guru(g0.slug, api_key=srv.api_key, db=tmp_path / "b.duckdb", rate_limit=None)
    assert g.sync(guru_wide=False, users=["user-0001"], progress=False).listings == [
        "user:user-0001"
    ]
    assert g.users()["user"].tolist() == ["user-0001"]


def test_without_a_cache_reads_say_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "none.duckdb"
    g = Guru("some-guru", db=db)
    assert "cache empty" in repr(g) and "cache empty" in g._repr_html_()
    assert g.status().exists is False
    with pytest.raises(NoDataError, match=r"run guru\.sync\(\) first"):
        g.sessions()
    assert not db.exists()  # reading never creates the file
    with pytest.raises(ConfigError, match="GURUBASE_API_KEY"):
        g.sync(progress=False)


def test_bad_key_is_an_authentication_error_without_the_key(
    synced: tuple[Guru, int], tmp_path: Path
) -> None:
    g0, _ = synced
    secret = "gb-wrong-key-1234567890"
    g = Guru(g0.slug, api_key=secret, base_url=g0.server.base_url, db=tmp_path / "bad.duckdb")
    with pytest.raises(AuthenticationError) as info:
        g.sync(progress=False)
    assert secret not in str(info.value) and secret not in repr(g)


def test_argument_checks() -> None:
    with pytest.raises(ConfigError):
        Guru("")
    with pytest.raises(ConfigError, match="not one string"):
        Guru("g", users="user-0001")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="time zone"):
        Guru("g", tz="Moon/Base")
    with pytest.raises(ConfigError, match="nothing to sync"):
        Guru("g", api_key="k" * 20).sync(guru_wide=False, users=[])


def test_reads_do_not_hold_the_file_between_calls(synced: tuple[Guru, int]) -> None:
    """Another process can open the cache read-write right after a read (no lingering lock)."""
    g, _ = synced
    g.activity()
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
        "print(c.execute('select count(*) from sessions').fetchone()[0]); c.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(g.db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == str(N_SESSIONS)


def test_messages_and_message_frames(tmp_path: Path) -> None:
    with Guru.local(60, 3, 20, db=tmp_path / "m.duckdb") as g:
        summary = g.sync(messages=True, progress=False)
        truth = g.server.truth(g.slug)
        assert summary.messages_fetched == 60 and summary.messages_remaining == 0
        length = g.binge_length()
        assert int(length["sessions"].iloc[0]) == 60
        assert int(length["messages"].iloc[0]) == int(truth["n_messages"].sum())
        assert int(g.sources()["messages"].sum()) == int(truth["n_messages"].sum())
        assert sum(p.get_height() for p in g.plot_binge_length().patches) == 60
        assert g.status().messages == int(truth["n_messages"].sum())


def test_local_close_stops_the_server_and_removes_the_temporary_cache() -> None:
    g = Guru.local(30, 2, 10)
    g.sync(progress=False)
    db = g.db
    srv: LocalGurubase | None = g.server
    assert db.is_file() and srv is not None
    url = urlsplit(srv.base_url)
    address = (url.hostname, url.port)
    g.close()
    assert not db.exists() and not db.parent.exists()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


def test_now_words_and_the_sync_horizon_agree_across_guru_export_and_cli(
    synced: tuple[Guru, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 16: one reading of now/today/latest for Guru, export and the CLI; a real sync
    is the horizon of 'complete'."""
    from guru_analytics import cli

    g, _ = synced
    latest = g.summary("7d", now="latest")
    end = pd.Timestamp(g.status().last_event) + pd.Timedelta(microseconds=1)
    assert latest["current_end"].iloc[0] == end
    out = tmp_path / "summary.csv"
    exported = g.export("summary", out, period="7d", now="latest")  # was rejected before
    pd.testing.assert_frame_equal(exported, latest)
    assert cli.main(["report", "summary", g.slug, "--db", str(g.db), "--period", "7d",
                     "--now", "latest", "-o", str(tmp_path / "cli.csv")]) == 0  # fmt: skip
    back = pd.read_csv(tmp_path / "cli.csv")
    want = latest["current"].astype("float64").fillna(-1).tolist()
    assert back["current"].fillna(-1).tolist() == want
    # Every catalogue entry by name, the same frame as the shortcut
    pd.testing.assert_frame_equal(g.report("lifecycle", freq="week"), g.lifecycle("week"))
    assert isinstance(g.plot("users", top=3), Axes)
    with pytest.raises(ConfigError, match="unknown report"):
        g.report("nope")
    # The sync ran after the synthetic data ended: every bucket is complete ...
    assert g.activity("day")["complete"].all()
    # ... unless the horizon is the newest event: then the last day is partial.
    last = g.activity("day", now="latest")
    assert not last["complete"].iloc[-1] and last["complete"].iloc[:-1].all()
    capsys.readouterr()
