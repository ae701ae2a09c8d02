"""The dashboard: controls -> parameters -> render, driven through the real widgets.

Data comes from a real ``LocalGurubase`` over loopback synced into a real DuckDB file; the
expected numbers are recomputed independently with ``frames`` on the same cache. The
debounce timer is injected (``ManualTimer``) so a test fires it by hand instead of sleeping.
"""

from __future__ import annotations

import base64
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from guru_analytics import frames
from guru_analytics.errors import ConfigError
from guru_analytics.guru import Guru
from guru_analytics.widgets import (
    Dashboard,
    DashboardControls,
    DashboardParams,
    Debouncer,
    render,
    top_series,
)

N_SESSIONS = 400
N_USERS = 8
DAYS = 60


class ManualTimer:
    """A ``threading.Timer`` stand-in that only fires when the test says so."""

    made: list[ManualTimer] = []

    def __init__(self, delay: float, fn: Callable[[], None]) -> None:
        self.delay, self.fn = delay, fn
        self.started = self.cancelled = False
        ManualTimer.made.append(self)

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture(scope="module")
def guru(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guru]:
    """One synced local guru shared by the read-only tests (sync costs ~3 s)."""
    g = Guru.local(N_SESSIONS, N_USERS, DAYS, db=tmp_path_factory.mktemp("w") / "c.duckdb")
    g.sync(progress=False)
    yield g
    g.close()


@pytest.fixture
def dash(guru: Guru, tmp_path: Path) -> Dashboard:
    return guru.dashboard(timer_factory=ManualTimer, export_dir=tmp_path)


def expected(guru: Guru, **params: object) -> pd.DataFrame:
    with guru.reader() as con:
        return frames.activity(con, guru.slug, **params)  # type: ignore[arg-type]


def bar_heights(d: Dashboard) -> np.ndarray:
    ax = d.last.figures["activity"].axes[0]
    return np.array([p.get_height() for p in ax.patches])


# --- debouncing -------------------------------------------------------------------------


def test_debouncer_runs_once_per_burst_with_a_manual_timer() -> None:
    runs: list[int] = []
    d = Debouncer(lambda: runs.append(1), 0.3, ManualTimer)
    ManualTimer.made.clear()
    for _ in range(5):
        d()
    assert d.calls == 5 and runs == [] and d.pending
    assert [t.cancelled for t in ManualTimer.made] == [True, True, True, True, False]
    ManualTimer.made[-1].fn()  # the surviving timer fires
    ManualTimer.made[0].fn()  # a cancelled timer firing late does nothing
    assert runs == [1] and not d.pending
    d()
    d.flush()
    d.flush()
    assert runs == [1, 1] and d.runs == 2


def test_debouncer_with_a_real_timer_fires_once() -> None:
    done = threading.Event()
    d = Debouncer(done.set, 0.01)
    for _ in range(5):
        d()
    assert done.wait(10)
    assert d.calls == 5 and d.runs == 1


# --- parameters and controls --------------------------------------------------------------


def test_params_convert_local_days_to_utc_instants_across_dst() -> None:
    p = DashboardParams(start=date(2025, 3, 29), end=date(2025, 3, 30), tz="Europe/Berlin")
    assert p.start_ts == pd.Timestamp("2025-03-28T23:00Z")
    assert p.end_ts == pd.Timestamp("2025-03-30T22:00Z")  # 23-hour day: CEST after 02:00
    prev = p.previous()
    assert prev is not None and (prev.start, prev.end) == (date(2025, 3, 27), date(2025, 3, 28))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"freq": "fortnight"},
        {"metric": "clicks"},
        {"split": "all"},
        {"top_n": 0},
        {"tz": "Mars/Olympus"},
        {"start": date(2025, 2, 1), "end": date(2025, 1, 1)},
    ],
)
def test_params_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DashboardParams(**kwargs)  # type: ignore[arg-type]


def test_user_filter_narrows_the_list_but_keeps_selections() -> None:
    c = DashboardControls(["user-0001", "user-0002", "ann.lee3@example.com"])
    changes: list[object] = []
    c.observe(lambda ch: changes.append(ch["new"]))
    c.user_filter.value = "user"
    assert c.user_select.options == ("user-0001", "user-0002")
    assert changes == []  # filtering is not a parameter change
    c.user_select.value = ("user-0002",)
    c.user_filter.value = "ann"
    assert c.user_select.options == ("user-0002", "ann.lee3@example.com")
    c.user_select.value = ("user-0002", "ann.lee3@example.com")
    c.user_filter.value = "zzz"
    assert c.params().users == ("user-0002", "ann.lee3@example.com")
    assert changes == [("user-0002",), ("user-0002", "ann.lee3@example.com")]
    c.tz.value = "Nowhere/Land"
    with pytest.raises(ConfigError, match="unknown time zone"):
        c.params()


def test_top_series_keeps_the_largest_users_and_sums_the_rest() -> None:
    ts = pd.to_datetime(["2025-01-01", "2025-01-02"], utc=True)
    df = pd.DataFrame(
        {
            "bucket": np.repeat(ts, 3),
            "user": ["a", "b", "c"] * 2,
            "active_sessions": [1, 5, 2, 0, 4, 3],
        }
    )
    wide = top_series(df, "active_sessions", 2)
    assert list(wide.columns) == ["bucket", "b", "c", "other"]
    assert wide[["b", "c", "other"]].to_numpy().tolist() == [[5, 2, 1], [4, 3, 0]]


def test_render_is_a_pure_function_of_cache_and_params(guru: Guru) -> None:
    """``render`` needs no widget; an open date range is closed at the data's buckets."""
    params = DashboardParams(freq="month", metric="new_sessions")
    with guru.reader() as con:
        first = render(con, guru.slug, params)
        again = render(con, guru.slug, params)
    pd.testing.assert_frame_equal(first.table, again.table)
    assert int(first.table["new_sessions"].sum()) == N_SESSIONS
    cards = first.summary.set_index("metric")
    assert int(cards.loc["new_sessions", "current"]) == N_SESSIONS
    start = first.summary["current_start"].iloc[0]
    assert start == first.table["bucket"].min()  # first month start, local midnight
    assert first.summary["current_end"].iloc[0] == first.table["bucket"].max() + pd.DateOffset(
        months=1
    )


# --- the dashboard, one control at a time ----------------------------------------------------


def test_initial_view_covers_the_cached_data(guru: Guru, dash: Dashboard) -> None:
    status = guru.status()
    p = dash.params()
    assert (p.start, p.end) == (status.first_event.date(), status.last_event.date())
    table = dash.last.table
    # Without messages each session has one activity event: daily actives sum to all sessions.
    assert int(table["active_sessions"].sum()) == N_SESSIONS == len(guru.server.truth(guru.slug))
    np.testing.assert_array_equal(bar_heights(dash), table["active_sessions"].to_numpy())
    cards = dash.last.summary.set_index("metric")
    assert int(cards.loc["active_sessions", "current"]) == N_SESSIONS
    assert int(cards.loc["active_sessions", "previous"]) == 0
    top = dash.last.top_users
    assert top["user"].tolist()[:3] == guru.users()["user"].tolist()[:3]
    for view in (dash.summary_view, dash.activity_view, dash.users_view, dash.heatmap_view):
        assert len(view.outputs) == 1
    png = base64.b64decode(dash.activity_view.outputs[0]["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "user-0001" in dash.users_view.outputs[0]["data"]["text/html"]
    assert "Active sessions" in dash.summary_view.outputs[0]["data"]["text/html"]


def test_bucket_control(guru: Guru, dash: Dashboard) -> None:
    p0 = dash.params()
    dash.controls.freq.value = "week"
    assert dash.last.params.freq == "day"  # debounced: nothing redrawn yet
    dash.flush()
    table = dash.last.table
    want = expected(guru, freq="week", start=p0.start_ts, end=p0.end_ts)
    assert table["active_sessions"].tolist() == want["active_sessions"].tolist()
    assert set(table["bucket"].diff().dropna()) == {pd.Timedelta(days=7)}
    assert (table["bucket"].dt.day_of_week == 0).all()
    assert len(dash.last.figures["activity"].axes[0].patches) == len(table)


def test_hour_buckets_on_a_dst_day(guru: Guru, dash: Dashboard) -> None:
    """Berlin's fall-back day has 25 hours; every one is a bucket."""
    day = date(2025, 10, 26)
    dash.controls.tz.value = "Europe/Berlin"
    dash.controls.freq.value = "hour"
    dash.controls.start.value = day
    dash.controls.end.value = day
    dash.flush()
    table = dash.last.table
    assert len(table) == 25
    assert table["bucket"].dt.tz_convert("UTC").diff().dropna().eq(pd.Timedelta(hours=1)).all()
    truth = guru.server.truth(guru.slug)["last_used"].dt.tz_convert("Europe/Berlin")
    assert int(table["active_sessions"].sum()) == int((truth.dt.date == day).sum()) > 0


def test_time_zone_control_moves_buckets_and_heatmap(guru: Guru, dash: Dashboard) -> None:
    utc_heat = dash.last.heatmap.copy()
    dash.controls.tz.value = "Asia/Tokyo"
    dash.flush()
    p = dash.last.params
    assert p.tz == "Asia/Tokyo"
    assert str(dash.last.table["bucket"].dt.tz) == "Asia/Tokyo"
    want = expected(guru, freq="day", tz="Asia/Tokyo", start=p.start_ts, end=p.end_ts)
    assert dash.last.table["active_sessions"].tolist() == want["active_sessions"].tolist()
    heat = dash.last.heatmap
    # Tokyo is UTC+9 all year: each cell holds the UTC cell nine hours earlier.
    shifted = utc_heat.assign(
        weekday=(utc_heat["weekday"] + (utc_heat["hour"] + 9) // 24) % 7,
        hour=(utc_heat["hour"] + 9) % 24,
    )
    merged = heat.merge(shifted, on=["weekday", "hour"], suffixes=("", "_utc"))
    # Only the first/last local day of the range can differ (the range moved by 9 hours).
    assert (merged["events"] != merged["events_utc"]).sum() <= 24
    assert not heat["events"].equals(utc_heat["events"])
    image = dash.last.figures["heatmap"].axes[0].images[0].get_array()
    assert image.shape == (7, 24) and int(image.sum()) == int(heat["events"].sum())


def test_metric_control(guru: Guru, dash: Dashboard) -> None:
    p = dash.params()
    dash.controls.metric.value = "active_users"
    dash.flush()
    want = expected(guru, start=p.start_ts, end=p.end_ts)
    assert list(dash.last.table.columns) == ["bucket", "active_users"]
    assert dash.last.table["active_users"].tolist() == want["active_users"].tolist()
    assert 0 < dash.last.table["active_users"].max() <= N_USERS
    np.testing.assert_array_equal(bar_heights(dash), want["active_users"].to_numpy())
    dash.controls.metric.value = "new_sessions"
    dash.flush()
    assert dash.last.table["new_sessions"].tolist() == want["new_sessions"].tolist()


def test_split_control_draws_top_users_plus_other(guru: Guru, dash: Dashboard) -> None:
    p = dash.params()
    dash.controls.split.value = "top"
    dash.controls.top_n.value = 3
    dash.flush()
    by_user = expected(guru, by="user", start=p.start_ts, end=p.end_ts)
    totals = by_user.groupby("user")["active_sessions"].sum().sort_values(ascending=False)
    table = dash.last.table
    assert list(table.columns) == ["bucket", *totals.index[:3], "other"]
    assert int(table["other"].sum()) == int(totals.iloc[3:].sum())
    ax = dash.last.figures["activity"].axes[0]
    assert ax.get_legend_handles_labels()[1] == [*totals.index[:3], "other"]
    # The stacked bars are the table, series by series.
    np.testing.assert_array_equal(
        bar_heights(dash), table.drop(columns="bucket").T.to_numpy().ravel()
    )


def test_user_selection_filters_every_view(guru: Guru, dash: Dashboard) -> None:
    p = dash.params()
    picked = ["user-0002", "user-0004"]
    dash.controls.select_users(picked)
    dash.flush()
    want = expected(guru, users=picked, start=p.start_ts, end=p.end_ts)
    assert dash.last.table["active_sessions"].tolist() == want["active_sessions"].tolist()
    truth = guru.server.truth(guru.slug)
    assert int(dash.last.table["active_sessions"].sum()) == int(
        truth["external_user_id"].isin(picked).sum()
    )
    assert sorted(dash.last.top_users["user"]) == sorted(picked)
    assert int(dash.last.heatmap["active_sessions"].sum()) == int(
        dash.last.table["active_sessions"].sum()
    )


def test_title_search_filters_sessions(guru: Guru, dash: Dashboard) -> None:
    dash.controls.search.value = "  API key "
    dash.flush()
    truth = guru.server.truth(guru.slug)
    matches = truth["root_question_name"].str.lower().str.contains("api key", regex=False)
    assert 0 < matches.sum() < N_SESSIONS
    assert int(dash.last.table["active_sessions"].sum()) == int(matches.sum())
    assert "api key" in dash.last.figures["activity"].axes[0].get_title().lower()


def test_date_range_control_and_previous_period(guru: Guru, dash: Dashboard) -> None:
    end = dash.params().end
    start = end - timedelta(days=13)
    dash.controls.start.value = start
    dash.flush()
    table = dash.last.table
    assert table["bucket"].min() == pd.Timestamp(start, tz="UTC")
    assert table["bucket"].max() == pd.Timestamp(end, tz="UTC")
    assert len(table) == 14
    cards = dash.last.summary.set_index("metric")
    truth = guru.server.truth(guru.slug)
    lo = pd.Timestamp(start, tz="UTC")
    hi = pd.Timestamp(end + timedelta(days=1), tz="UTC")
    in_range = truth["last_used"].between(lo, hi, inclusive="left")
    before = truth["last_used"].between(lo - (hi - lo), lo, inclusive="left")
    assert int(cards.loc["active_sessions", "current"]) == int(in_range.sum())
    assert int(cards.loc["active_sessions", "previous"]) == int(before.sum())
    assert int(table["active_sessions"].sum()) == int(in_range.sum())


def test_bad_control_value_shows_a_message_not_a_traceback(dash: Dashboard) -> None:
    before = dash.last
    dash.controls.tz.value = "Europe/Atlantis"
    dash.flush()
    assert dash.last is before
    assert "unknown time zone" in dash.status.value and "Traceback" not in dash.status.value


def test_burst_of_changes_renders_once(dash: Dashboard) -> None:
    count = dash.render_count
    dash.controls.freq.value = "month"
    dash.controls.metric.value = "new_sessions"
    dash.controls.search.value = "install"
    assert dash.render_count == count and dash._debouncer.pending
    dash.flush()
    assert dash.render_count == count + 1
    assert dash.last.params.freq == "month" and dash.last.params.search == "install"


def test_old_figures_are_freed_and_pyplot_is_untouched(dash: Dashboard) -> None:
    old = weakref.ref(dash.last.figures["activity"])
    dash.controls.freq.value = "week"
    dash.flush()
    gc.collect()
    assert old() is None
    assert plt.get_fignums() == []


def test_export_button_writes_the_current_table(
    guru: Guru, dash: Dashboard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path.parent)  # the notebook's directory: the file is served below it
    dash.controls.freq.value = "week"
    dash.controls.split.value = "top"
    dash.controls.top_n.value = 2
    dash.export_button.click()  # exports the current controls even before the debounce fires
    path = dash.last_export
    assert path is not None and path.parent == tmp_path and path.suffix == ".csv"
    back = pd.read_csv(path)
    table = dash.last.table
    assert list(back.columns) == list(table.columns)
    assert len(back) == len(table) > 5
    assert (
        back.drop(columns="bucket").to_numpy().tolist()
        == table.drop(columns="bucket").to_numpy().tolist()
    )
    assert (
        pd.to_datetime(back["bucket"], utc=True).tolist()
        == table["bucket"].dt.tz_convert("UTC").tolist()
    )
    link = dash.export_view.outputs[0]["data"]
    assert f"<a href='{tmp_path.name}/{path.name}'" in link["text/html"]
    assert str(path) == link["text/plain"]


# --- sync from the dashboard ----------------------------------------------------------------


@pytest.fixture
def small_guru(tmp_path: Path) -> Iterator[Guru]:
    g = Guru.local(120, 4, 30, db=tmp_path / "small.duckdb")
    yield g
    g.close()


def test_sync_button_fills_an_empty_cache_then_follows_new_data(
    small_guru: Guru, tmp_path: Path
) -> None:
    # Questions off: the counts below are of the observation basis (one observation per
    # session); with the default's questions, follow-ups on other days add session-days
    # (the default is tested in test_questions.py).
    d = small_guru.dashboard(
        timer_factory=ManualTimer, export_dir=tmp_path, sync_options={"questions": False}
    )
    assert d.last is None and "press Sync now" in d.status.value
    d.sync_button.click()
    assert d.sync_thread is not None
    d.sync_thread.join(60)
    assert not d.sync_thread.is_alive()
    assert d.sync_error is None and d.sync_summary.sessions_new == 120
    assert int(d.last.table["active_sessions"].sum()) == 120
    assert d.progress.bar_style == "success" and d.progress.value == d.sync_summary.requests
    assert "120 new" in d.status.value
    assert set(d.controls.users) == set(small_guru.server.users(small_guru.slug))

    srv = small_guru.server
    last_day = d.params().end
    at = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC) + timedelta(
        days=1, hours=12
    )
    srv.create(small_guru.slug, 5, at=at)
    d.sync_button.click()
    d.sync_thread.join(60)
    assert d.sync_summary.mode == "incremental" and d.sync_summary.sessions_new == 5
    assert d.params().end == at.date()  # the automatic end date followed the new data
    table = d.last.table
    assert int(table["active_sessions"].sum()) == 125
    assert int(table["active_sessions"].iloc[-1]) == 5


def test_sync_error_is_a_readable_status_line(small_guru: Guru, tmp_path: Path) -> None:
    srv = small_guru.server
    bad = Guru(
        small_guru.slug,
        api_key="gb-not-a-real-key-0000",
        base_url=srv.base_url,
        db=tmp_path / "x.duckdb",
    )
    d = bad.dashboard(timer_factory=ManualTimer)
    d.sync_button.click()
    d.sync_thread.join(60)
    assert d.progress.bar_style == "danger"
    assert "Sync failed" in d.status.value and "API key" in d.status.value
    assert "Traceback" not in d.status.value and "gb-not-a-real-key-0000" not in d.status.value
    assert not d.sync_button.disabled
