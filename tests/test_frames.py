"""Analytics frames against hand-worked numbers (fixtures in analytics_fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import numpy as np
import pandas as pd
import pytest
from analytics_fixtures import main_cache, make_con

from guru_analytics import frames
from guru_analytics.errors import CacheSchemaError, ConfigError, NoDataError


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = main_cache()
    yield c
    c.close()


def ts(text: str, tz: str = "UTC") -> pd.Timestamp:
    return (
        pd.Timestamp(text).tz_convert(tz)
        if "+" in text or "Z" in text
        else pd.Timestamp(text, tz=tz)
    )


def rows(df: pd.DataFrame, *cols: str) -> list[tuple]:
    return [tuple(r) for r in df[list(cols)].itertuples(index=False, name=None)]


# --- sessions --------------------------------------------------------------------------


def test_sessions_rows_users_events_and_types(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.sessions(con, "g", tz="Europe/Berlin")
    assert list(df.columns) == [c.name for c in frames.COLUMNS["sessions"]]
    # d1 is deleted: left out by default. Newest last_used first.
    assert list(df["id"]) == ["b2", "e1", "c1", "a2", "u2", "u1", "a1", "b1"]
    by_id = df.set_index("id")
    assert by_id.loc["c1", "users"] == "alice; carol" and by_id.loc["c1", "n_users"] == 2
    assert by_id.loc["u1", "users"] == "(unattributed)" and by_id.loc["u1", "n_users"] == 0
    # b1: message at 11:50 + observation/message at 12:00 (deduped) = 2 events, 2 messages.
    assert by_id.loc["b1", "events"] == 2 and by_id.loc["b1", "messages"] == 2
    assert by_id.loc["b1", "first_event"] == ts("2025-04-07T11:50Z")
    assert pd.isna(by_id.loc["a1", "messages"])
    assert by_id.loc["a2", "first_event"] == ts("2025-04-13T18:00Z")
    assert by_id.loc["a2", "last_event"] == ts("2025-04-14T09:00Z")
    assert str(df["last_used"].dtype) == "datetime64[us, Europe/Berlin]"
    assert df["last_used"].iloc[0].isoformat() == "2025-04-28T10:00:00+02:00"
    assert df["events"].dtype == "int64" and df["messages"].dtype == "Int64"
    assert df.attrs["basis"] == "observations+messages"


def test_sessions_filters(con: duckdb.DuckDBPyConnection) -> None:
    assert sorted(frames.sessions(con, "g", search="  install ")["id"]) == ["a1", "u1"]
    deleted = frames.sessions(con, "g", search="INSTALL", include_deleted=True)
    assert sorted(deleted["id"]) == ["a1", "d1", "u1"]
    assert deleted.set_index("id").loc["d1", "deleted"]
    assert sorted(frames.sessions(con, "g", users=["carol"])["id"]) == ["c1"]
    assert sorted(frames.sessions(con, "g", users="(unattributed)")["id"]) == ["u1", "u2"]
    # By last_used, [start, end): a2 (Apr 14 09:00) in, c1 (Apr 21 15:00) at the edge out.
    ranged = frames.sessions(con, "g", start="2025-04-14T09:00Z", end="2025-04-21T15:00Z")
    assert list(ranged["id"]) == ["a2"]


# --- activity ---------------------------------------------------------------------------


def test_activity_daily_utc_with_empty_days(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g")
    assert list(df.columns) == [
        "bucket", "active_sessions", "new_sessions", "events", "active_users", "messages",
        "complete",
    ]  # fmt: skip
    assert len(df) == 22  # Apr 7 .. Apr 28, idle days included
    assert df["bucket"].iloc[0] == ts("2025-04-07")
    assert df["bucket"].iloc[-1] == ts("2025-04-28")
    day = df.set_index(df["bucket"].dt.day)
    metrics = ["active_sessions", "new_sessions", "events", "active_users", "messages"]
    assert tuple(day.loc[7, metrics]) == (2, 2, 3, 2, 2)  # a1, b1 (two events, two messages)
    assert tuple(day.loc[8, metrics]) == (2, 1, 2, 2, 0)  # a1, c1 new; alice + carol
    assert tuple(day.loc[9, metrics]) == (2, 2, 2, 0, 0)  # unattributed only: 0 users
    assert tuple(day.loc[12, metrics]) == (0, 0, 0, 0, 0)  # d1 deleted: excluded
    assert tuple(day.loc[21, metrics]) == (1, 0, 1, 2, 0)  # c1 counts alice and carol
    assert df["active_sessions"].sum() == 12 and df["events"].sum() == 13
    assert df.attrs["basis"] == "observations+messages" and df.attrs["freq"] == "D"


def test_activity_include_deleted(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", include_deleted=True)
    day = df.set_index(df["bucket"].dt.day)
    assert tuple(day.loc[12, ["active_sessions", "new_sessions", "active_users"]]) == (1, 1, 1)


def test_activity_week_start(con: duckdb.DuckDBPyConnection) -> None:
    cols = ["active_sessions", "new_sessions", "events", "active_users"]
    mon = frames.activity(con, "g", "W")
    assert list(mon["bucket"].dt.day) == [7, 14, 21, 28]
    assert rows(mon, *cols) == [(6, 6, 8, 3), (2, 1, 2, 2), (2, 0, 2, 3), (1, 1, 1, 1)]
    # Sunday weeks: a2's Sunday Apr 13 event moves into the second week.
    sun = frames.activity(con, "g", "week", week_start="SUN")
    assert list(sun["bucket"].dt.day) == [6, 13, 20, 27]
    assert all(sun["bucket"].dt.day_of_week == 6)
    assert rows(sun, *cols) == [(5, 5, 7, 3), (2, 2, 3, 2), (2, 0, 2, 3), (1, 1, 1, 1)]
    assert frames.activity(con, "g", "W", week_start=6)["bucket"].equals(sun["bucket"])


def test_activity_month_quarter_year(con: duckdb.DuckDBPyConnection) -> None:
    for freq in ("M", "quarter", "y"):
        df = frames.activity(con, "g", freq)
        assert rows(df, "active_sessions", "new_sessions", "events", "active_users") == [
            (8, 8, 13, 4)
        ]
    assert frames.activity(con, "g", "Q")["bucket"].iloc[0] == ts("2025-04-01")
    assert frames.activity(con, "g", "Y")["bucket"].iloc[0] == ts("2025-01-01")


def test_activity_by_user_counts_shared_sessions_for_each(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", by="user")
    assert list(df.columns[:2]) == ["bucket", "user"]
    assert len(df) == 22 * 5  # every day for every active user, incl. (unattributed)
    assert list(df["user"].iloc[:5]) == ["(unattributed)", "alice", "bob", "carol", "erin"]
    k = df.set_index([df["bucket"].dt.day, "user"])
    # issue 16: per-user rows have no active_users (it could only be 0 or 1 per row)
    assert "active_users" not in df.columns
    m = ["active_sessions", "new_sessions", "events"]
    assert tuple(k.loc[(8, "alice"), m]) == (2, 1, 2)
    assert tuple(k.loc[(8, "carol"), m]) == (1, 1, 1)
    assert tuple(k.loc[(9, "(unattributed)"), m]) == (2, 2, 2)
    assert tuple(k.loc[(7, "bob"), [*m, "messages"]]) == (1, 1, 2, 2)
    # per-user sums exceed the total by exactly the shared session's extra count
    total = frames.activity(con, "g")
    assert df["active_sessions"].sum() == total["active_sessions"].sum() + 2  # c1 twice, on 2 days


def test_activity_users_filter_and_by_guru(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", by="user", users=["carol", "zed"])
    assert sorted(df["user"].unique()) == ["carol", "zed"]  # asked-for idle user shows zeros
    assert df.loc[df["user"] == "zed", "active_sessions"].sum() == 0
    assert df.loc[df["user"] == "carol", "active_sessions"].sum() == 2
    g = frames.activity(con, ["g", "m"], "M", by="guru")
    # April .. June, both gurus in every month
    assert rows(g, "guru", "active_sessions") == [
        ("g", 8), ("m", 0), ("g", 0), ("m", 0), ("g", 0), ("m", 4),
    ]  # fmt: skip


def test_activity_start_end_and_wide(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", start="2025-04-10", end="2025-04-14")
    assert len(df) == 4 and list(df["bucket"].dt.day) == [10, 11, 12, 13]
    assert list(df["active_sessions"]) == [0, 0, 0, 1]
    # a range with no activity at all still lists its buckets, as zeros
    idle = frames.activity(con, "g", start="2025-04-16", end="2025-04-18")
    assert len(idle) == 2 and idle[["active_sessions", "events"]].to_numpy().sum() == 0
    wide = frames.activity(con, "g", "W", by="user", wide="events")
    assert wide.shape == (4, 5)
    # (unattributed), alice (a1 twice, a2 Sunday, c1), bob, carol, erin
    assert list(wide.loc[ts("2025-04-07")]) == [2, 4, 2, 1, 0]
    assert frames.pivot_activity(frames.activity(con, "g", "W"), "events")["events"].tolist() == [
        8,
        2,
        2,
        1,
    ]


def test_activity_berlin_spring_forward(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "dst", "D", "Europe/Berlin", start="2025-03-29", end="2025-04-01")
    assert [b.isoformat() for b in df["bucket"]] == [
        "2025-03-29T00:00:00+01:00",
        "2025-03-30T00:00:00+01:00",
        "2025-03-31T00:00:00+02:00",
    ]
    assert list(df["bucket"].diff().dropna() / pd.Timedelta(hours=1)) == [24, 23]
    assert list(df["active_sessions"]) == [
        1,
        2,
        1,
    ]  # p2 (00:30 CET) and p3 (23:30 CEST) on the 30th
    utc = frames.activity(con, "dst", "D", start="2025-03-29", end="2025-03-31")
    assert list(utc["active_sessions"]) == [2, 2]
    hours = frames.activity(
        con, "dst", "H", "Europe/Berlin", start="2025-03-30T01:00", end="2025-03-30T04:00"
    )
    assert [b.isoformat() for b in hours["bucket"]] == [
        "2025-03-30T01:00:00+01:00",
        "2025-03-30T03:00:00+02:00",
    ]  # there is no 02:00 that night
    week = frames.activity(con, "dst", "W", "Europe/Berlin", start="2025-03-24", end="2025-04-07")
    assert (week["bucket"].iloc[1] - week["bucket"].iloc[0]) == pd.Timedelta(hours=167)
    assert list(week["active_sessions"]) == [3, 1]


def test_activity_berlin_fall_back_keeps_both_2am_hours(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "dst", "D", "Europe/Berlin", start="2025-10-26", end="2025-10-28")
    assert df["bucket"].iloc[1] - df["bucket"].iloc[0] == pd.Timedelta(hours=25)
    assert list(df["active_sessions"]) == [4, 1]
    hours = frames.activity(
        con, "dst", "hour", "Europe/Berlin",
        start="2025-10-26T00:00+02:00", end="2025-10-26T04:00+01:00",
    )  # fmt: skip
    assert [b.isoformat() for b in hours["bucket"]] == [
        "2025-10-26T00:00:00+02:00",
        "2025-10-26T01:00:00+02:00",
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T03:00:00+01:00",
    ]
    assert list(hours["events"]) == [1, 0, 1, 1, 0]  # f1, -, f2 (CEST), f3 (CET), -
    assert (hours["bucket"].diff().dropna() == pd.Timedelta(hours=1)).all()


def test_activity_new_york_and_half_hour_zone(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "dst", "D", "America/New_York", start="2025-03-08", end="2025-03-11")
    assert [b.isoformat() for b in df["bucket"]] == [
        "2025-03-08T00:00:00-05:00",
        "2025-03-09T00:00:00-05:00",
        "2025-03-10T00:00:00-04:00",
    ]
    assert list(df["active_sessions"]) == [1, 3, 1]
    assert str(df["bucket"].dt.tz) == "America/New_York"
    # India is UTC+05:30: local hours start at half past in UTC.
    ist = frames.activity(
        con, "g", "H", "Asia/Kolkata", start="2025-04-07T15:00", end="2025-04-07T18:00"
    )
    assert [b.isoformat() for b in ist["bucket"]] == [
        "2025-04-07T15:00:00+05:30",
        "2025-04-07T16:00:00+05:30",
        "2025-04-07T17:00:00+05:30",
    ]
    assert list(ist["events"]) == [1, 0, 2]  # a1 10:00Z = 15:30; b1 11:50Z, 12:00Z = 17:20, 17:30


def test_activity_without_messages_says_so(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "dst", "M")
    assert df.attrs["basis"] == "observations"
    assert df["messages"].isna().all()
    assert df["active_sessions"].sum() == 14


# --- users, lifecycle, retention --------------------------------------------------------


def test_users(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.users(con, "g")
    assert list(df.columns) == [c.name for c in frames.COLUMNS["users"]]
    # issue 16: only known users are ranked (ties share a rank, the next skips); the
    # (unattributed) row comes last, unranked, with its share of ALL active sessions (8),
    # while known users' shares are of the 6 sessions with a known user.
    assert rows(df, "user", "sessions", "events", "active_days", "active_weeks", "rank") == [
        ("alice", 3, 6, 5, 3, 1),
        ("bob", 2, 3, 2, 2, 2),
        ("carol", 1, 2, 2, 2, 3),
        ("erin", 1, 2, 2, 2, 3),
        ("(unattributed)", 2, 2, 1, 1, pd.NA),
    ]
    assert list(df["share"]) == [3 / 6, 2 / 6, 1 / 6, 1 / 6, 2 / 8]
    alice = df.iloc[0]
    assert alice["first_active"] == ts("2025-04-07T10:00Z")
    assert alice["last_active"] == ts("2025-04-21T15:00Z")
    # Sunday weeks: alice's Apr 13 and Apr 14 fall in one week, Apr 7/8 in another, Apr 21.
    assert frames.users(con, "g", week_start="SUN").iloc[0]["active_weeks"] == 3
    # A range cuts events (e1's Apr 22 is at the exclusive end); ties sort by user.
    ranged = frames.users(con, "g", start="2025-04-14", end="2025-04-22")
    assert rows(ranged, "user", "sessions", "events", "rank") == [
        ("alice", 2, 2, 1), ("carol", 1, 1, 2), ("erin", 1, 1, 2),
    ]  # fmt: skip


def test_lifecycle_weekly(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.lifecycle(con, "g")
    assert list(df.columns) == [c.name for c in frames.COLUMNS["lifecycle"]]
    assert list(df["bucket"].dt.day) == [7, 14, 21, 28]
    cols = ["active_users", "new_users", "returning_users", "resurrected_users", "dormant_users"]
    assert rows(df, *cols) == [
        (3, 3, 0, 0, 0),  # alice, bob, carol new
        (2, 1, 1, 0, -2),  # erin new, alice returning; bob, carol dormant
        (3, 0, 2, 1, 0),  # alice, erin returning; carol resurrected
        (1, 0, 0, 1, -3),  # bob resurrected; alice, carol, erin dormant
    ]
    assert df.attrs["dormant_sign"] == "negative"
    with_anon = frames.lifecycle(con, "g", include_unattributed=True)
    assert rows(with_anon, "new_users", "dormant_users")[:2] == [(4, 0), (1, -3)]
    # the range only trims the output: week 2 keeps its history-based categories
    assert rows(frames.lifecycle(con, "g", start="2025-04-14", end="2025-04-21"), *cols) == [
        (2, 1, 1, 0, -2)
    ]


def test_retention_weekly(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.retention(con, "g")
    assert list(df.columns) == [c.name for c in frames.COLUMNS["retention"]]
    assert rows(df, "cohort_size", "period", "users") == [
        (3, 0, 3), (3, 1, 1), (3, 2, 2), (3, 3, 1),  # cohort Apr 7: alice, bob, carol
        (1, 0, 1), (1, 1, 1), (1, 2, 0),  # cohort Apr 14: erin; period 3 not observed yet
    ]  # fmt: skip
    # issue 16: the week of Apr 28 is partial (the horizon is just after the newest event,
    # Apr 28 08:00, as this cache has no sync run): no rate for it, users so far are kept.
    assert list(df["complete"]) == [True, True, True, False, True, True, False]
    assert np.allclose(df["rate"], [1, 1 / 3, 2 / 3, np.nan, 1, 1, np.nan], equal_nan=True)
    assert list(df["cohort"].dt.day) == [7, 7, 7, 7, 14, 14, 14]
    assert list(df["bucket"].dt.day) == [7, 14, 21, 28, 14, 21, 28]
    matrix = frames.retention_matrix(df)
    assert matrix.shape == (2, 4) and np.isnan(matrix.iloc[1, 3])
    assert len(frames.retention(con, "g", periods=2)) == 4
    # April has not ended by the newest event: partial, no rate; given now= May 1 it has.
    monthly = frames.retention(con, "g", "M")
    assert not monthly["complete"].any() and monthly["rate"].isna().all()
    assert (frames.retention(con, "g", "M", now="2025-05-01")["rate"] == [1.0]).all()


# --- summary ----------------------------------------------------------------------------


def test_summary_against_previous_period(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.summary(con, "g", "7d", now="2025-04-22T00:00Z", tz="Europe/Berlin")
    assert list(df.columns) == [c.name for c in frames.COLUMNS["summary"]]
    got = {r.metric: (r.current, r.previous, r.change) for r in df.itertuples()}
    assert got == {
        "active_sessions": (2, 5, -3),
        "new_sessions": (1, 4, -3),
        "active_users": (3, 2, 1),
        "events": (2, 6, -4),
        "messages": (0, 0, 0),
    }
    pct = df.set_index("metric")["change_pct"]
    assert pct["active_sessions"] == pytest.approx(-60.0)
    assert pct["active_users"] == pytest.approx(50.0)
    assert np.isnan(pct["messages"])
    assert df["current_start"].iloc[0].isoformat() == "2025-04-15T02:00:00+02:00"
    assert df["previous_end"].iloc[0] == df["current_start"].iloc[0]
    assert set(df["basis"]) == {"observations+messages"}
    day = frames.summary(con, "g", "24h", now="2025-04-08T00:00Z").set_index("metric")
    assert tuple(day.loc["messages", ["current", "previous"]]) == (2, 0)
    no_msgs = frames.summary(con, "dst", "1w", now="2025-10-27T00:00Z").set_index("metric")
    assert (
        pd.isna(no_msgs.loc["messages", "current"]) and no_msgs["basis"].iloc[0] == "observations"
    )
    assert no_msgs.loc["active_sessions", "current"] == 5  # f1..f5 in [Oct 20, Oct 27)


# --- heatmap and message-level frames ---------------------------------------------------


def test_weekday_hour(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.weekday_hour(con, "g")
    assert len(df) == 7 * 24 and df["events"].sum() == 13
    cell = df.set_index(["weekday_name", "hour"])
    assert tuple(cell.loc[("Tue", 10), ["events", "active_sessions"]]) == (3, 2)  # a1, e1 twice
    berlin = frames.weekday_hour(con, "g", "Europe/Berlin", week_start="SUN")
    assert berlin["weekday_name"].iloc[0] == "Sun"
    assert berlin.set_index(["weekday_name", "hour"]).loc[("Tue", 12), "events"] == 3


def test_binge_length(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.binge_length(con, "m")
    assert rows(df, "sessions", "messages", "median", "max") == [(3, 10, 3.0, 6)]
    assert df["mean"].iloc[0] == pytest.approx(10 / 3)
    assert df["p90"].iloc[0] == pytest.approx(5.4)  # 3 + 0.8 * (6 - 3)
    per = frames.binge_length(con, "m", by="user")
    assert rows(per, "user", "sessions", "messages", "mean") == [
        ("(unattributed)", 1, 6, 6.0), ("alice", 1, 1, 1.0), ("bob", 1, 3, 3.0),
    ]  # fmt: skip
    with pytest.raises(NoDataError, match=r"no messages cached for guru 'dst'.*--messages"):
        frames.binge_length(con, "dst")


def test_sources_and_votes(con: duckdb.DuckDBPyConnection) -> None:
    src = frames.sources(con, "m")
    assert rows(src, "source", "messages") == [
        ("API", 2), ("USER", 1), ("WIDGET QUESTION", 0),
        ("API", 0), ("USER", 1), ("WIDGET QUESTION", 0),
        ("API", 0), ("USER", 0), ("WIDGET QUESTION", 6),
    ]  # fmt: skip
    v = frames.votes(con, "m")
    assert rows(v, "messages", "upvotes", "downvotes", "no_vote", "scored") == [
        (3, 1, 1, 1, 3), (1, 0, 0, 1, 0), (6, 1, 0, 5, 6),
    ]  # fmt: skip
    assert v["mean_trust_score"].iloc[0] == pytest.approx(60.0)
    assert np.isnan(v["mean_trust_score"].iloc[1]) and v["mean_trust_score"].iloc[2] == 100.0
    idle = frames.votes(con, "m", start="2025-06-10", end="2025-06-12")
    assert list(idle["messages"]) == [0, 0]
    with pytest.raises(NoDataError):
        frames.sources(con, "dst")


# --- errors and sources of connections --------------------------------------------------


def test_bad_input_is_config_error(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ConfigError, match="unknown freq 'fortnight'"):
        frames.activity(con, "g", "fortnight")
    with pytest.raises(ConfigError, match="unknown time zone"):
        frames.activity(con, "g", tz="Mars/Olympus")
    with pytest.raises(ConfigError, match="not before end"):
        frames.activity(con, "g", start="2025-05-01", end="2025-04-01")
    with pytest.raises(ConfigError, match="ambiguous"):
        frames.activity(con, "dst", tz="Europe/Berlin", start="2025-10-26T02:30")
    with pytest.raises(ConfigError, match="week_start"):
        frames.activity(con, "g", week_start="Funday")
    with pytest.raises(ConfigError, match="by="):
        frames.activity(con, "g", by="team")
    with pytest.raises(ConfigError, match="period"):
        frames.summary(con, "g", period="3 fortnights")
    with pytest.raises(ConfigError, match="not a date"):
        frames.sessions(con, "g", start="yesterday-ish")


def test_unknown_guru_and_empty_cache() -> None:
    empty = make_con()
    message = "no sessions cached for guru 'nope': run `guru-analytics sync nope` first"
    with pytest.raises(NoDataError) as info:
        frames.activity(empty, "nope")
    assert str(info.value) == message
    full = main_cache()
    with pytest.raises(NoDataError, match="guru 'nope'"):
        frames.users(full, ["g", "nope"])
    with pytest.raises(CacheSchemaError, match="not a guru_analytics cache"):
        frames.sessions(duckdb.connect(), "g")


def test_accepts_a_store_like_reader(tmp_path) -> None:
    path = tmp_path / "cache.duckdb"
    main_cache(path).close()

    class Reader:
        """Stands in for Store: only the reader() protocol matters to frames."""

        @contextmanager
        def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
            c = duckdb.connect(str(path), read_only=True)
            try:
                yield c
            finally:
                c.close()

    assert frames.activity(Reader(), "g", "W")["active_sessions"].tolist() == [6, 2, 2, 1]


def test_activity_by_user_is_one_query_at_scale(tmp_path) -> None:
    """20k sessions, 300 users: the grouped frame matches a plain GROUP BY (not timed)."""
    con = make_con(tmp_path / "big.duckdb")
    rng = np.random.default_rng(7)
    n = 20_000
    start = pd.Timestamp("2025-01-01", tz="UTC")
    sess = pd.DataFrame({"id": [f"s{i}" for i in range(n)]})
    sess["last_used"] = start + pd.to_timedelta(rng.integers(0, 90 * 86400, n), unit="s")
    obs = pd.concat(
        [
            sess,
            sess.assign(
                last_used=sess["last_used"]
                - pd.to_timedelta(rng.integers(0, 5 * 86400, n), unit="s")
            ),
        ]
    )
    users = sess.assign(user=[f"u{i}" for i in rng.integers(0, 300, n)]).sample(
        frac=0.7, random_state=1
    )
    con.register("sess_df", sess)
    con.register("obs_df", obs)
    con.register("users_df", users)
    con.execute(
        "INSERT INTO sessions (guru, id, last_used, first_seen, last_seen) "
        "SELECT 'big', id, last_used, last_used, last_used FROM sess_df"
    )
    con.execute(
        "INSERT INTO observations SELECT DISTINCT 'big', id, last_used, last_used FROM obs_df"
    )
    con.execute("INSERT INTO session_users SELECT 'big', id, user, last_used FROM users_df")
    df = frames.activity(con, "big", "D", by="user")
    expect = con.execute(
        """SELECT coalesce(u.external_user_id, '(unattributed)') AS user,
                  date_trunc('day', o.last_used) AS day, count(DISTINCT o.id) AS n, count(*) AS e
           FROM observations o LEFT JOIN session_users u USING (guru, id)
           WHERE o.guru = 'big' GROUP BY ALL"""
    ).fetchdf()
    got = df[df["active_sessions"] > 0]
    assert len(got) == len(expect)
    assert got["active_sessions"].sum() == expect["n"].sum()
    assert got["events"].sum() == expect["e"].sum()
    assert df["bucket"].nunique() == len(pd.date_range(df["bucket"].min(), df["bucket"].max()))
    con.close()


def test_results_do_not_depend_on_the_connection_time_zone() -> None:
    c = main_cache()
    c.execute("SET TimeZone='America/Los_Angeles'")
    hours = frames.activity(
        c, "dst", "H", "Europe/Berlin", start="2025-10-26T00:00+02:00", end="2025-10-26T04:00+01:00"
    )
    assert list(hours["events"]) == [1, 0, 1, 1, 0]
    assert frames.activity(c, "g", "W")["active_sessions"].tolist() == [6, 2, 2, 1]
    assert frames.users(c, "g")["active_days"].tolist() == [5, 2, 2, 2, 1]
    c.close()


def test_matches_a_pandas_oracle_on_a_synthetic_guru_loaded_by_the_store(tmp_path) -> None:
    """Real parts: synthetic data → Store.load_frame → frames, checked against plain pandas
    on the same events (Berlin days across the 2025-10-26 fall-back)."""
    from guru_analytics import synthetic
    from guru_analytics.store import Store

    guru = synthetic.generate(1500, 12, 60, seed=3, guru_slug="syn")
    s = guru.sessions
    events = synthetic.message_events(s)
    store = Store(tmp_path / "syn.duckdb")
    store.load_frame("syn", s, observations_df=events, users_df=s[["id", "external_user_id"]])
    ev = (
        pd.concat(
            [events[["id", "ts"]], s[["id", "last_used"]].rename(columns={"last_used": "ts"})]
        )
        .drop_duplicates()
        .merge(s[["id", "external_user_id"]], on="id")
    )
    ev["user"] = ev["external_user_id"].fillna("(unattributed)")
    ev["day"] = ev["ts"].dt.tz_convert("Europe/Berlin").dt.normalize()
    first_day = ev.groupby("id")["day"].transform("min")

    df = frames.activity(store, "syn", "D", "Europe/Berlin")
    oracle = pd.DataFrame(
        {
            "active_sessions": ev.groupby("day")["id"].nunique(),
            "new_sessions": ev[ev["day"] == first_day].groupby("day")["id"].nunique(),
            "events": ev.groupby("day").size(),
        }
    ).fillna(0)
    got = df.set_index("bucket")[["active_sessions", "new_sessions", "events"]]
    active = got[got["events"] > 0]
    assert active.index.tolist() == oracle.index.tolist()
    assert (active.to_numpy() == oracle.to_numpy()).all()
    assert got["new_sessions"].sum() == s["id"].nunique()
    assert df.attrs["basis"] == "observations"  # events loaded as observations, no messages

    per_user = frames.users(store, "syn").set_index("user")["sessions"].sort_index()
    expect = s["external_user_id"].fillna("(unattributed)").value_counts().sort_index()
    assert per_user.to_dict() == expect.to_dict()
    store.close()


# --- issue 16: analytics that cannot mislead --------------------------------------------


def _add_run(c: duckdb.DuckDBPyConnection, guru: str, ended: str, outcome: str = "ok") -> None:
    c.execute(
        "INSERT INTO sync_runs (guru, mode, started_at, ended_at, outcome) "
        "VALUES (?, 'full', ?::TIMESTAMPTZ, ?::TIMESTAMPTZ, ?)",
        [guru, ended, ended, outcome],
    )


def test_partial_buckets_are_marked_against_the_horizon() -> None:
    """The newest bucket is complete only once it ended by the horizon: the end of the last
    successful sync, else just after the newest event, or ``now`` where given."""
    c = main_cache()
    # No sync run (a load_frame-style cache): the horizon is just after the newest event,
    # Apr 28 08:00Z, so Apr 28 (UTC day) and its week are partial; everything before is not.
    day = frames.activity(c, "g")
    assert day["complete"].tolist() == [True] * 21 + [False]
    assert day.attrs["horizon"] == "2025-04-28T08:00:00.000001+00:00"
    assert frames.lifecycle(c, "g")["complete"].tolist() == [True, True, True, False]
    # A failed run does not count; a successful one ending mid-day keeps the day partial ...
    _add_run(c, "g", "2025-04-29T00:00:00Z", outcome="error")
    _add_run(c, "g", "2025-04-28T12:00:00Z")
    assert frames.activity(c, "g")["complete"].iloc[-1] == False  # noqa: E712
    # ... in Kolkata the local day of Apr 28 ended at 18:30Z: still partial at 12:00Z
    kol = frames.activity(c, "g", tz="Asia/Kolkata")
    assert not kol["complete"].iloc[-1] and kol["complete"].iloc[-2]
    # ... and one ending after the day makes it complete (the week stays partial).
    _add_run(c, "g", "2025-04-29T00:00:00Z")
    assert frames.activity(c, "g")["complete"].all()
    assert frames.activity(c, "g", "W")["complete"].tolist() == [True, True, True, False]
    # now= overrides the store: the words and an instant
    assert frames.activity(c, "g", now="latest")["complete"].iloc[-1] == False  # noqa: E712
    assert frames.activity(c, "g", "W", now="2025-05-05")["complete"].all()
    assert frames.activity(c, "g", "W", now="now")["complete"].all()
    by_user = frames.activity(c, "g", by="user", now="latest")
    assert not by_user.loc[by_user["bucket"] == by_user["bucket"].max(), "complete"].any()
    # Retention: the unfinished period has no rate; with a later horizon it has one.
    ret = frames.retention(c, "g", now="latest")
    assert ret.loc[~ret["complete"], "rate"].isna().all()
    assert frames.retention(c, "g", now="2025-05-05")["rate"].notna().all()
    c.close()


def test_now_words_mean_the_same_everywhere(con: duckdb.DuckDBPyConnection) -> None:
    """``now`` is the current UTC instant (not the local clock read in ``tz``), ``today``
    local midnight in ``tz``, ``latest`` just after the newest event."""
    from guru_analytics.timestamps import utc_now

    before = pd.Timestamp(utc_now())
    df = frames.summary(con, "g", "7d", now="now", tz="Asia/Kolkata")
    after = pd.Timestamp(utc_now())
    assert before <= df["current_end"].iloc[0] <= after
    assert str(df["current_end"].dt.tz) == "Asia/Kolkata"
    default = frames.summary(con, "g", "7d", tz="Asia/Kolkata")
    assert before <= default["current_end"].iloc[0]
    today = frames.summary(con, "g", "7d", now="today", tz="Asia/Kolkata")["current_end"].iloc[0]
    assert (today.hour, today.minute) == (0, 0) and today <= pd.Timestamp(utc_now())
    assert pd.Timestamp(utc_now()) - today < pd.Timedelta(days=1)
    latest = frames.summary(con, "g", "7d", now=" LATEST ")
    assert latest["current_end"].iloc[0] == ts("2025-04-28T08:00:00.000001Z")
    # The parser itself, with an injected clock (the one the frames use by default)
    clock = lambda: pd.Timestamp("2025-03-30T20:00Z").to_pydatetime()  # noqa: E731
    assert frames.parse_now("now", "Asia/Kolkata", clock=clock) == ts("2025-03-30T20:00Z")
    # 20:00Z is already Mar 31 01:30 in Kolkata: today began at Mar 30 18:30Z
    assert frames.parse_now("today", "Asia/Kolkata", clock=clock) == ts("2025-03-30T18:30Z")
    # Berlin's DST day: midnight was still CET
    assert frames.parse_now("today", "Europe/Berlin", clock=clock) == ts("2025-03-29T23:00Z")
    assert frames.parse_now("latest", "UTC", lambda: None) is None
    # start/end accept now/today too (same meaning); latest is only for now=
    assert frames.to_instant("now", "Asia/Kolkata") >= before
    with pytest.raises(ConfigError, match="only understood for now"):
        frames.to_instant("latest", "UTC", "start")


def test_message_reports_bucket_over_the_event_range() -> None:
    """Observations before the first message: votes/sources still start at the first
    EVENT, so their buckets line up with activity's."""
    from analytics_fixtures import add_sessions

    c = make_con()
    add_sessions(c, "n", [
        {"id": "o1", "users": ["ann"], "obs": ["2025-05-01T10:00:00Z"]},
        {"id": "o2", "users": ["ann"], "obs": ["2025-05-04T10:00:00Z"],
         "messages": [{"ts": "2025-05-03T09:00:00Z", "source": "USER", "trust": 50}]},
        {"id": "o3", "obs": ["2025-05-06T10:00:00Z"]},
    ])  # fmt: skip
    days = frames.activity(c, "n")["bucket"].tolist()
    assert len(days) == 6  # May 1 .. May 6
    assert frames.votes(c, "n")["bucket"].tolist() == days
    src = frames.sources(c, "n")
    assert src["bucket"].tolist() == days and src["messages"].tolist() == [0, 0, 1, 0, 0, 0]
    c.close()


def test_top_n_one_tie_break_and_unattributed_apart(con: duckdb.DuckDBPyConnection) -> None:
    df = frames.activity(con, "g", "W", by="user")
    wide = frames.top_n(df, "active_sessions", 2)
    assert list(wide.columns) == ["alice", "bob", "other", "(unattributed)"]
    # row order of the input never changes the choice
    shuffled = frames.top_n(df.sample(frac=1, random_state=1), "active_sessions", 2)
    pd.testing.assert_frame_equal(wide, shuffled)
    assert list(frames.top_n(df, "active_sessions", 10).columns) == [
        "alice", "bob", "carol", "erin", "(unattributed)",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="whole number"):
        frames.top_n(df, "active_sessions", 0)


def test_bucket_end_and_complete_until_are_dst_safe() -> None:
    berlin = ts("2025-03-30", "Europe/Berlin")
    assert frames.bucket_end(berlin, "D") - berlin == pd.Timedelta(hours=23)
    assert frames.bucket_end(ts("2025-10-26", "Europe/Berlin"), "day") == ts(
        "2025-10-27", "Europe/Berlin"
    )
    assert frames.bucket_end(ts("2025-02-01", "UTC"), "M") == ts("2025-03-01", "UTC")
    at = "2025-10-26T01:30:00Z"  # Berlin's second 02:30 (CET)
    assert frames.complete_until(at, "H", "Europe/Berlin") == ts("2025-10-26T01:00Z")
    assert frames.complete_until(at, "D", "Europe/Berlin") == ts("2025-10-25T22:00Z")
    assert frames.complete_until(at, "W", "Europe/Berlin") == ts("2025-10-19T22:00Z")
    assert frames.complete_until(at, "M", "Asia/Kolkata") == ts("2025-09-30T18:30Z")
