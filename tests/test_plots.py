"""Charts: inspect what was drawn (bars, lines, labels, titles), not just that it ran."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import duckdb
import matplotlib
import numpy as np
import pandas as pd
import pytest
from analytics_fixtures import main_cache
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from guru_analytics import frames, plots
from guru_analytics.errors import ConfigError, NoDataError


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = main_cache()
    yield c
    c.close()


def bar_heights(ax) -> list[float]:
    return [round(p.get_height(), 6) for p in ax.patches]


def test_no_pyplot_state_is_used(con: duckdb.DuckDBPyConnection) -> None:
    import matplotlib.pyplot as plt  # only to check that nothing registered a figure

    before = plt.get_fignums()
    ax = plots.chart(con, "activity", "g")
    assert isinstance(ax.figure, Figure)
    assert plt.get_fignums() == before
    assert matplotlib.get_backend().lower() == "agg"


def test_activity_bars_one_per_bucket(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", "D", "Europe/Berlin")
    ax = plots.plot_activity(df, "events")
    assert len(ax.patches) == len(df) == 22
    assert bar_heights(ax) == [float(v) for v in df["events"]]
    assert ax.get_title() == "Activity events per day (Europe/Berlin)"
    assert ax.get_ylabel() == "Activity events"
    # bars start at the local midnights (date numbers are UTC days)
    first = matplotlib.dates.num2date(ax.patches[0].get_x())
    assert first == df["bucket"].iloc[0]


def test_activity_stacked_top_users_plus_other(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", "W", by="user")
    ax = plots.plot_activity(df, "active_sessions", top=2)
    # issue 16: only people take top places. Totals: alice 5, then a three-way tie at 2
    # broken by name: bob; carol + erin are "other"; (unattributed) (2) is its own last
    # series, never a top user. 4 stacks x 4 weeks; the last week is partial (hatched).
    assert len(ax.patches) == 4 * 4
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == ["alice", "bob", "other", "(unattributed)"]
    assert labels[4].startswith("partial bucket")
    assert "top 2 + other" in ax.get_title() and "per week" in ax.get_title()
    heights = np.array(bar_heights(ax)).reshape(4, 4)
    assert heights.sum(axis=0).tolist() == [7.0, 2.0, 3.0, 1.0]  # per-user sums per week
    assert heights[2].tolist() == [1.0, 1.0, 2.0, 0.0]  # carol + erin
    assert heights[3].tolist() == [2.0, 0.0, 0.0, 0.0]  # (unattributed)
    hatched = [p.get_hatch() is not None for p in ax.patches]
    assert hatched == [False, False, False, True] * 4  # only the partial week of Apr 28


def test_activity_lines_one_per_series(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", "D", by="user")
    ax = plots.plot_activity(df, kind="line", top=10)
    assert len(ax.lines) == 5 and len(ax.patches) == 0
    assert [ln.get_label() for ln in ax.lines] == [
        "alice",
        "bob",
        "carol",
        "erin",
        "(unattributed)",
    ]
    assert len(ax.lines[0].get_xdata()) == 22
    with pytest.raises(ConfigError, match="kind"):
        plots.plot_activity(df, kind="pie")


def test_year_of_daily_buckets_has_few_non_overlapping_ticks(
    con: duckdb.DuckDBPyConnection,
) -> None:
    df = frames.activity(con, "g", "D", start="2025-01-01", end="2026-01-01")
    assert len(df) == 365
    ax = plots.plot_activity(df)
    fig = ax.figure
    FigureCanvasAgg(fig).draw()
    ticks = [t for t in ax.get_xticklabels() if t.get_text()]
    assert 3 <= len(ax.get_xticks()) <= 13
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in pairwise(boxes)), "tick labels overlap"
    assert len(ax.patches) == 365


def test_users_horizontal_bars(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.users(con, "g")
    ax = plots.plot_users(df, top=3)
    # issue 16: the top 3 are people (carol wins the tie with erin by name);
    # (unattributed) is a separate grey bar at the bottom, not the second user.
    assert len(ax.patches) == 4
    labels = {
        t.get_text(): pos for t, pos in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)
    }
    assert sorted(labels, key=labels.get, reverse=True) == [
        "alice", "bob", "carol", "(unattributed)",
    ]  # fmt: skip
    assert sorted(p.get_width() for p in ax.patches) == [1.0, 2.0, 2.0, 3.0]
    anon = [p for p in ax.patches if p.get_y() < 0.5]
    assert len(anon) == 1 and anon[0].get_facecolor() != ax.patches[0].get_facecolor()
    assert ax.get_title() == "Top 3 users by sessions"


def test_heatmap_cells_and_labels(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.weekday_hour(con, "g", "Europe/Berlin", week_start="SUN")
    ax = plots.plot_heatmap(df)
    image = ax.get_images()[0].get_array()
    assert image.shape == (7, 24) and image.sum() == 13
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["Sun", "Mon"]
    assert image[2, 12] == 3  # Tuesday 12:00 Berlin: a1 and e1 (twice)
    assert ax.get_title() == "Activity events by weekday and hour (Europe/Berlin)"


def test_lifecycle_stacks_with_dormant_below_zero(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.lifecycle(con, "g")
    ax = plots.plot_lifecycle(df)
    assert len(ax.patches) == 4 * 4
    heights = np.array(bar_heights(ax)).reshape(4, 4)  # new, returning, resurrected, dormant
    assert heights[3].tolist() == [0.0, -2.0, 0.0, -3.0]
    assert heights[:3].sum(axis=0).tolist() == [3.0, 2.0, 3.0, 1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "new", "returning", "resurrected", "dormant",
        "partial bucket (data until 2025-04-28 08:00)",
    ]  # fmt: skip
    assert [p.get_hatch() is not None for p in ax.patches] == [False, False, False, True] * 4
    assert ax.get_title() == "User lifecycle per week (UTC)"


def test_retention_heatmap(con: duckdb.DuckDBPyConnection) -> None:
    ax = plots.plot_retention(frames.retention(con, "g"))
    data = ax.get_images()[0].get_array()
    assert data.shape == (2, 4) and bool(data.mask[1, 3])
    # issue 16: the week of Apr 28 is partial: no rate, hatched, users so far in brackets
    assert bool(data.mask[0, 3]) and bool(data.mask[1, 2])
    assert [t.get_text() for t in ax.texts] == ["100%", "33%", "67%", "100%", "100%", "(1)", "(0)"]
    assert "partial period" in ax.get_legend().get_texts()[0].get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2025-04-07", "2025-04-14"]
    assert ax.get_title() == "Retention rate by weekly cohort (UTC)"


def test_message_charts(con: duckdb.DuckDBPyConnection) -> None:
    ax = plots.plot_sources(frames.sources(con, "m"))
    assert len(ax.patches) == 3 * 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["WIDGET QUESTION", "API", "USER"]
    hist = plots.plot_binge_length(frames.sessions(con, "m"))
    assert bar_heights(hist) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]  # lengths 1, 3, 6
    assert "3 sessions; 1 without messages" in hist.get_title()
    trust = plots.plot_trust(frames.votes(con, "m"))
    y = trust.lines[0].get_ydata()
    assert y[0] == 60.0 and np.isnan(y[1]) and y[2] == 100.0
    with pytest.raises(NoDataError, match="--messages"):
        plots.plot_binge_length(frames.sessions(con, "dst"))


def test_given_axes_is_used_and_returned(con: duckdb.DuckDBPyConnection) -> None:
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plots.chart(con, "users", "g", ax=ax2, metric="events") is ax2
    assert len(ax2.patches) == 5 and len(ax1.patches) == 0


def test_save_png_and_svg(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    ax = plots.chart(con, "activity", "g", freq="W", by="user", top=3)
    png = plots.save(ax, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plots.save(ax.figure, tmp_path / "a.svg")
    assert b"<svg" in svg.read_bytes()[:400]
    with pytest.raises(ConfigError, match=r"\.png or \.svg"):
        plots.save(ax, tmp_path / "a.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.svg"]


def test_charts_and_csvs_share_one_atomic_write_and_file_mode(
    con: duckdb.DuckDBPyConnection, tmp_path
) -> None:
    """issue 11: PNGs were written 0600 (mkstemp's mode) while CSVs got the umask's mode."""
    from guru_analytics import reports

    png = plots.save(plots.chart(con, "activity", "g"), tmp_path / "a.png")
    csv = tmp_path / "a.csv"
    reports.export(con, "activity", csv, "g")
    assert png.stat().st_mode & 0o777 == csv.stat().st_mode & 0o777
    # a failed draw leaves nothing behind, not even the temporary file
    with pytest.raises(ValueError), reports.atomic_write(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.png"]


def test_chart_rejects_options_its_frame_does_not_take(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ConfigError, match="by does not apply to the binge_length chart"):
        plots.chart(con, "binge_length", "m", by="user")
    with pytest.raises(ConfigError, match="freq does not apply to the users chart"):
        plots.chart(con, "users", "g", freq="W")
    with pytest.raises(ConfigError, match="not defined per user"):
        plots.chart(con, "activity", "g", by="user", metric="active_users")


def test_empty_frame_and_wrong_frame(con: duckdb.DuckDBPyConnection) -> None:
    empty = frames.users(con, "g", users=["nobody"])
    with pytest.raises(NoDataError, match="nothing to draw"):
        plots.plot_users(empty)
    with pytest.raises(ConfigError, match="lacks column"):
        plots.plot_lifecycle(pd.DataFrame({"bucket": []}))
    with pytest.raises(ConfigError, match="unknown chart"):
        plots.chart(con, "pie", "g")
