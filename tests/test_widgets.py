"""The dashboard: controls -> parameters -> render, driven through the real widgets.

Data comes from a real ``LocalGurubase`` over loopback synced into a real DuckDB file; the
expected numbers are recomputed independently with ``frames`` on the same cache. The
debounce timer is injected (``ManualTimer``) so a test fires it by hand instead of sleeping.
"""

from __future__ import annotations

import base64
import gc
import io
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from guru_analytics import frames
from guru_analytics.dashboard import Dashboard, SyncProgressView, describe_progress
from guru_analytics.errors import ConfigError
from guru_analytics.guru import Guru
from guru_analytics.progress import SyncProgress
from guru_analytics.widgets import (
    MAX_BARS,
    DashboardControls,
    DashboardParams,
    Debouncer,
    card_period,
    readable,
    render,
    top_series,
    users_html,
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
        {"metric": "active_users", "split": "top"},
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
    """``render`` needs no widget; an open date range is closed at the data's buckets and the
    cards compare its last complete 28 days with the 28 before (changed with issue 12: they
    compared the whole range with an empty period before it, "+N vs previous 0")."""
    params = DashboardParams(freq="month", metric="new_sessions")
    with guru.reader() as con:
        first = render(con, guru.slug, params)
        again = render(con, guru.slug, params)
    pd.testing.assert_frame_equal(first.table, again.table)
    assert int(first.table["new_sessions"].sum()) == N_SESSIONS
    end = first.table["bucket"].max() + pd.DateOffset(months=1)
    assert first.summary["current_end"].iloc[0] == end
    assert first.summary["current_start"].iloc[0] == end - pd.Timedelta(days=28)
    cards = first.summary.set_index("metric")
    used = guru.server.truth(guru.slug)["last_used"]
    lo, hi = end - pd.Timedelta(days=28), end
    current = int(used.between(lo, hi, inclusive="left").sum())
    previous = int(used.between(lo - (hi - lo), lo, inclusive="left").sum())
    assert int(cards.loc["new_sessions", "current"]) == current > 0
    assert int(cards.loc["new_sessions", "previous"]) == previous > 0


def test_cards_end_at_the_last_complete_day() -> None:
    """A range reaching into today (in its zone) is compared up to today's local midnight."""
    params = DashboardParams(
        start=date(2025, 3, 1), end=date(2025, 3, 31), freq="day", tz="Europe/Berlin"
    )
    buckets = pd.DatetimeIndex([])
    now = datetime(2025, 3, 30, 12, 0, tzinfo=UTC)  # the 23-hour DST day, not over yet
    lo, hi = card_period(params, buckets, now)
    assert hi == pd.Timestamp("2025-03-29T23:00Z")  # local midnight starting the 30th
    assert lo == hi - pd.Timedelta(days=28)
    short = DashboardParams(start=date(2025, 3, 20), end=date(2025, 3, 26), tz="Europe/Berlin")
    assert card_period(short, buckets, now) == (short.start_ts, short.end_ts)
    today = DashboardParams(start=date(2025, 3, 30), end=date(2025, 3, 30), tz="Europe/Berlin")
    assert card_period(today, buckets, now) == (today.start_ts, today.end_ts)


def test_hourly_over_months_draws_lines_not_thousands_of_bars(guru: Guru) -> None:
    params = DashboardParams(freq="hour", split="top", top_n=3)
    with guru.reader() as con:
        r = render(con, guru.slug, params)
    assert len(r.table) > MAX_BARS
    ax = r.figures["activity"].axes[0]
    assert len(ax.patches) == 0
    assert [line.get_label() for line in ax.lines] == r.series
    for line, name in zip(ax.lines, r.series, strict=True):
        np.testing.assert_array_equal(line.get_ydata(), r.table[name].to_numpy())
    assert "lines" in ax.get_title()


# --- the dashboard, one control at a time ----------------------------------------------------


def test_initial_view_covers_the_cached_data(guru: Guru, dash: Dashboard) -> None:
    status = guru.status()
    p = dash.params()
    assert (p.start, p.end) == (status.first_event.date(), status.last_event.date())
    table = dash.last.table
    # Without messages each session has one activity event: daily actives sum to all sessions.
    assert int(table["active_sessions"].sum()) == N_SESSIONS == len(guru.server.truth(guru.slug))
    np.testing.assert_array_equal(bar_heights(dash), table["active_sessions"].to_numpy())
    # The cards: the last 28 complete days against the 28 before (was the whole range
    # against an empty period: "+N vs previous 0"), and what an event is without messages.
    cards = dash.last.summary.set_index("metric")
    used = guru.server.truth(guru.slug)["last_used"]
    hi = pd.Timestamp(p.end + timedelta(days=1), tz="UTC")
    lo = hi - pd.Timedelta(days=28)
    assert int(cards.loc["active_sessions", "current"]) == int(
        used.between(lo, hi, inclusive="left").sum()
    )
    assert int(cards.loc["active_sessions", "previous"]) == int(
        used.between(lo - pd.Timedelta(days=28), lo, inclusive="left").sum()
    )
    cards_html = dash.summary_view.outputs[0]["data"]["text/html"]
    assert "No messages fetched" in cards_html and "one observation of a session" in cards_html
    assert f"{lo:%Y-%m-%d %H:%M} – {hi:%Y-%m-%d %H:%M}" in cards_html
    top = dash.last.top_users
    assert top["user"].tolist()[:3] == guru.users()["user"].tolist()[:3]
    # issue 16: "(unattributed)" is shown apart, last and unranked, never cut by the top N
    assert top["user"].iloc[-1] == "(unattributed)" and pd.isna(top["rank"].iloc[-1])
    assert top["rank"].iloc[:-1].notna().all() and len(top) == N_USERS + 1
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
    # frames.top_n's rule (shared with plots since the frames work): "(unattributed)" is
    # not a person, so it never takes a top place and stays its own last series.
    people = totals.drop("(unattributed)")
    series = [*people.index[:3], "other", "(unattributed)"]
    table = dash.last.table
    assert list(table.columns) == ["bucket", *series]
    assert int(table["other"].sum()) == int(people.iloc[3:].sum())
    ax = dash.last.figures["activity"].axes[0]
    assert ax.get_legend_handles_labels()[1] == series
    # The stacked bars are the table, series by series.
    np.testing.assert_array_equal(
        bar_heights(dash), table.drop(columns="bucket").T.to_numpy().ravel()
    )


def test_active_users_turns_the_split_off(dash: Dashboard) -> None:
    """Active users per user is only 1 or 0 (frames do not define it): no split for it."""
    c = dash.controls
    c.split.value = "top"
    c.metric.value = "active_users"
    assert c.split.value == "none" and c.split.disabled and c.top_n.disabled
    dash.flush()
    assert dash.last_error is None and dash.last.params.metric == "active_users"
    c.metric.value = "new_sessions"
    assert not c.split.disabled and not c.top_n.disabled


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
    assert dash.busy and "Computing" in dash.status.value  # at once, before the debounce
    dash.flush()
    assert dash.last is before
    assert "unknown time zone" in dash.status.value and "Traceback" not in dash.status.value
    # The old chart no longer matches the controls: it is dimmed, not shown as current.
    assert not dash.busy
    assert "guru-stale" in dash.activity_view._dom_classes
    dash.controls.tz.value = "UTC"
    dash.flush()
    assert dash.last is not before and dash.last_error is None
    assert "guru-stale" not in dash.activity_view._dom_classes


def test_a_newer_request_supersedes_the_running_redraw(guru: Guru, tmp_path: Path) -> None:
    """Requests while a redraw computes do not queue: the running one is dropped at its next
    step and only the newest parameters are drawn next."""
    entered, release = threading.Event(), threading.Event()
    drawn: list[str] = []

    def held_render(con: object, slug: str, params: DashboardParams, **kw: object) -> object:
        if params.freq == "week":  # the first background redraw: hold it half-way
            entered.set()
            assert release.wait(30)
        result = render(con, slug, params, **kw)  # type: ignore[arg-type]
        drawn.append(params.freq)
        return result

    d = guru.dashboard(timer_factory=ManualTimer, export_dir=tmp_path, renderer=held_render)
    first = d.last
    d.controls.freq.value = "week"
    worker = threading.Thread(target=d.flush)
    worker.start()
    assert entered.wait(30)
    for freq in ("month", "hour", "day"):  # three more requests while "week" computes
        d.controls.freq.value = freq
        d.flush()  # returns at once: the running loop owns the redraw
    assert d.busy
    release.set()
    worker.join(30)
    assert not worker.is_alive()
    assert drawn == ["day", "day"]  # the initial view, then only the newest request
    assert d.last is not first and d.last.params.freq == "day" and not d.busy
    assert d.dropped >= 1  # the held "week" view was thrown away, never shown


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


def test_export_button_offers_the_current_table_as_a_page_download(dash: Dashboard) -> None:
    """The link is a data: URL (was a /files link: 403 "File not allowlisted" under Voila)."""
    sizes = {b.description: (b.layout.width, b.layout.min_width) for b in _buttons(dash)}
    dash.controls.freq.value = "week"
    dash.controls.split.value = "top"
    dash.controls.top_n.value = 2
    dash.export_button.click()  # exports the current controls even before the debounce fires
    link = dash.export_link.value
    m = re.search(r'download="([^"]+)" href="data:text/csv;charset=utf-8;base64,([^"]+)"', link)
    assert m is not None and m.group(1).endswith("-per-week-top2-" + _span(dash) + ".csv")
    back = pd.read_csv(io.BytesIO(base64.b64decode(m.group(2))))
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
    # Buttons keep an explicit size (they shrank to 20 px stubs beside the link).
    assert {b.description: (b.layout.width, b.layout.min_width) for b in _buttons(dash)} == sizes
    assert all(w == "130px" for w, _ in sizes.values())
    assert dash.controls.top_n.layout.min_width == "120px"
    assert dash.controls.top_n.style.description_width == "initial"


def _buttons(dash: Dashboard) -> list[ipywidgets.Button]:
    return [dash.sync_button, dash.export_button]


def _span(dash: Dashboard) -> str:
    p = dash.params()
    return f"{p.start}_{p.end}"


def test_export_csv_writes_a_file_for_code(dash: Dashboard, tmp_path: Path) -> None:
    dash.controls.metric.value = "new_sessions"
    path = dash.export_csv()
    assert path.parent == tmp_path and path.name.startswith(f"{dash.guru.slug}-new_sessions-")
    assert pd.read_csv(path)["new_sessions"].tolist() == dash.last.table["new_sessions"].tolist()


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
    last = d.progress.last
    assert last is not None and last.phase == "done" and last.requests == d.sync_summary.requests
    assert d.progress.bar.bar_style == "success" and d.progress.bar.value == 1.0
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
    assert d.progress.bar.bar_style == "danger"
    assert "Sync failed" in d.status.value and "API key" in d.status.value
    assert "Traceback" not in d.status.value and "gb-not-a-real-key-0000" not in d.status.value
    assert not d.sync_button.disabled


def test_without_a_key_the_sync_button_is_off_and_says_why(guru: Guru, tmp_path: Path) -> None:
    why = "no API key: set GURUBASE_API_KEY to sync"
    d = guru.dashboard(timer_factory=ManualTimer, export_dir=tmp_path, sync_disabled=why)
    assert d.sync_button.disabled and d.sync_button.tooltip == why
    assert why in d.progress.label.value
    assert d.sync_now() is None and d.sync_thread is None
    assert d.last is not None  # the cache is still shown


def test_sync_progress_reaches_the_dashboard(small_guru: Guru, tmp_path: Path) -> None:
    seen: list[SyncProgress] = []
    d = small_guru.dashboard(timer_factory=ManualTimer, export_dir=tmp_path)
    apply = d.progress.apply

    def spy(p: SyncProgress) -> None:
        seen.append(p)
        apply(p)

    d.progress.apply = spy  # type: ignore[method-assign]
    d.sync_button.click()
    d.sync_thread.join(60)
    assert d.sync_error is None
    assert any(p.pages > 0 and p.listing for p in seen)
    assert seen[-1].phase == "done"


# --- the progress bar: a pure consumer of SyncProgress ---------------------------------------


def test_progress_bar_never_moves_backwards_across_listings() -> None:
    view = SyncProgressView()
    view.start()
    shown = []
    for fraction, listing in [(0.5, "guru-wide"), (0.75, "guru-wide"), (0.625, "user:a"),
                              (0.875, "user:a"), (0.5, "user:b")]:  # fmt: skip
        view.apply(
            SyncProgress(
                "listing",
                listing=listing,
                requests=10,
                sessions=100,
                total_requests=20,
                total_sessions=300,
                seconds_per_request=6.0,
                eta_seconds=60.0,
                fraction=fraction,
            )
        )
        shown.append(view.bar.value)
    assert shown == [0.5, 0.75, 0.75, 0.875, 0.875]
    assert view.bar.layout.display is None  # shown
    text = view.label.value
    assert "reading user:b" in text and "88%" in text and "100 of ~300 sessions" in text
    assert (
        "10 of ~20 requests" in text and "6.0 s/request" in text and "about 1 min 00 s left" in text
    )


def test_progress_with_an_unknown_total_shows_sessions_so_far() -> None:
    view = SyncProgressView()
    view.start()
    view.apply(SyncProgress("listing", listing="guru-wide", requests=3, pages=3, sessions=90,
                            seconds_per_request=6.0))  # fmt: skip
    view.apply(SyncProgress("listing", listing="guru-wide", requests=4, pages=4, sessions=80))
    assert view.bar.layout.display == "none"  # no total: no bar pretending to know one
    text = view.label.value
    assert "90 sessions so far" in text and "total unknown" in text
    assert "left" not in text and "%" not in text
    # Requests only (the dashboard's record until the sync reports progress): no session claim.
    assert describe_progress(SyncProgress("listing", requests=7), None, 0) == "7 requests"


def test_progress_wait_counts_down_and_eta_is_the_records() -> None:
    view = SyncProgressView()
    view.start()
    texts = []
    for left in (12.0, 11.2, 10.0, 9.0):
        view.apply(SyncProgress("wait", requests=10, sessions=300, total_requests=600,
                                seconds_per_request=6.0, eta_seconds=3540 + left,
                                wait_seconds=left, fraction=10 / 600))  # fmt: skip
        texts.append(view.label.value)
    assert [re.search(r"rate limit: (\d+) s", t).group(1) for t in texts] == ["12", "12", "10", "9"]
    assert "about 59 min 09 s left" in texts[-1] and "6.0 s/request" in texts[-1]
    assert describe_progress(SyncProgress("listing", eta_seconds=6000), None, 0).endswith(
        "about 1 h 40 min left"
    )
    view.apply(SyncProgress("done", requests=600, sessions=18000))
    assert view.bar.value == 1.0 and view.bar.bar_style == "success"
    assert view.label.value.startswith("Done: 600 requests, 18,000 sessions")


def test_readable_tables_round_for_people_and_leave_the_frame_alone(guru: Guru) -> None:
    users = guru.users(tz="Asia/Tokyo")
    shown = readable(users)
    assert users["share"].dtype == "float64"  # the frame keeps full precision
    row = users.iloc[0]
    assert shown["share"].iloc[0] == f"{100 * row['share']:.1f}%"
    assert shown["last_active"].iloc[0] == row["last_active"].strftime("%Y-%m-%d %H:%M")
    assert row["last_active"].tz is not None and str(row["last_active"].tz) == "Asia/Tokyo"
    summary = pd.DataFrame({"change_pct": [12.4, -3.0, np.nan]})
    assert readable(summary)["change_pct"].tolist() == ["+12%", "-3%", ""]
    html_table = users_html(users.head(3))
    assert shown["share"].iloc[0] in html_table and "last active" in html_table


def test_unattributed_stays_in_the_users_table_past_the_top_ten(tmp_path: Path) -> None:
    """Issue 16: the dashboard's users table ranks people only; "(unattributed)" is shown
    apart, last and unranked, and the top-N cut never drops it (it has most sessions here)."""
    with Guru.local(600, 14, 60, db=tmp_path / "c.duckdb") as g:
        g.sync(progress=False)
        with g.reader() as con:
            top = render(con, g.slug, DashboardParams()).top_users
    assert len(top) == 11 and top["user"].iloc[-1] == "(unattributed)"
    ranks = top["rank"].iloc[:10]
    assert pd.isna(top["rank"].iloc[-1]) and ranks.notna().all() and ranks.is_monotonic_increasing


def test_users_table_shows_no_rank_for_unattributed() -> None:
    top = pd.DataFrame(
        {
            "rank": pd.array([1, None], dtype="Int64"),
            "user": ["alice", "(unattributed)"],
            "sessions": [3, 2],
            "events": [3, 2],
            "active_days": [1, 1],
            "last_active": pd.to_datetime(["2025-01-01T10:00Z", "2025-01-01T11:00Z"]),
            "share": [0.6, 0.4],
        }
    )
    markup = users_html(top)
    assert "&lt;NA&gt;" not in markup and "<NA>" not in markup and "(unattributed)" in markup
