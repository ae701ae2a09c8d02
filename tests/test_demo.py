"""``guru-analytics demo``: the whole job in-process, twice (the second run is incremental)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from guru_analytics import cli
from guru_analytics.demo import CSV_REPORTS, PNG_CHARTS

SESSIONS, USERS, DAYS = 300, 6, 45
ARGS = ["--sessions", str(SESSIONS), "--users", str(USERS), "--days", str(DAYS), "--no-progress"]

# The columns each CSV must have (reports write frames.COLUMNS in order).
COLUMNS = {
    "sessions": ["guru", "id", "title", "users", "first_event", "last_event", "messages"],
    # issue 16: per-user rows have no active_users; every bucket says whether it is complete
    "activity_day_by_user": ["bucket", "user", "active_sessions", "new_sessions", "complete"],
    "activity_week_by_user": ["bucket", "user", "active_sessions", "new_sessions", "complete"],
    "users": ["user", "sessions", "events", "active_days", "share", "rank"],
    "lifecycle": ["bucket", "active_users", "new_users", "returning_users", "dormant_users"],
    "retention": ["cohort", "cohort_size", "period", "users", "rate"],
    "summary": ["metric", "current", "previous", "change", "change_pct"],
    "binge_length": ["user", "sessions", "messages", "mean", "median", "p90", "max"],
    "sources": ["bucket", "source", "messages"],
    # issue 15: the demo syncs questions (one Export Analytics request) and reports on them
    "questions": ["asked_at", "answered", "source", "trust_score", "follow_up", "session_id"],
    "question_sources": ["bucket", "source", "questions", "follow_ups", "unanswered"],
    "unanswered": ["bucket", "questions", "unanswered", "unanswered_share"],
}


def test_demo_writes_everything_then_syncs_incrementally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), *ARGS]) == 0
    first = capsys.readouterr().out
    assert "Full sync:" in first and f"{SESSIONS:,} new" in first
    assert f"messages of {SESSIONS:,} sessions" in first
    assert "1 request for every question since the last export" in first  # issue 15

    assert (out / "cache.duckdb").is_file()
    assert set(CSV_REPORTS) == set(COLUMNS)
    csv = {name: pd.read_csv(out / f"{name}.csv") for name in COLUMNS}
    for name, frame in csv.items():
        assert set(COLUMNS[name]) <= set(frame.columns), name
        assert len(frame) > 0, name
    assert len(csv["sessions"]) == SESSIONS
    assert csv["sessions"]["messages"].min() >= 1
    for name in ("activity_day_by_user", "activity_week_by_user"):
        frame = csv[name]
        assert frame["user"].nunique() == USERS + 1  # every user plus (unattributed)
        assert frame["new_sessions"].sum() == SESSIONS
    assert csv["users"]["sessions"].sum() == SESSIONS  # one user per synthetic session
    assert csv["binge_length"]["messages"].sum() == csv["sources"]["messages"].sum() > SESSIONS
    assert csv["lifecycle"]["new_users"].sum() == USERS
    summary = csv["summary"].set_index("metric")
    assert summary.loc["active_sessions", "current"] > 0
    # issue 16: the demo's horizon is its newest event: the last day/week is partial, and a
    # partial period has no rate (the newest cohort's period 0 included)
    assert (csv["retention"].query("period == 0 and complete")["rate"] == 1.0).all()
    assert csv["retention"].query("not complete")["rate"].isna().all()
    day = csv["activity_day_by_user"]
    assert not day["complete"].iloc[-1] and day["complete"].iloc[0]

    for name in PNG_CHARTS:
        path = out / f"{name}.png"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 600, name
        assert image.std() > 0.05, name  # not a blank canvas
        assert path.stat().st_size > 15_000, name
    for path in [*(out / f"{n}.png" for n in PNG_CHARTS), *(out / f"{n}.csv" for n in COLUMNS)]:
        assert str(path.name) in first

    mtime = (out / "users.csv").stat().st_mtime_ns
    assert cli.main(["demo", "--out", str(out), *ARGS]) == 0
    second = capsys.readouterr().out
    assert "Incremental sync:" in second and "already up to date" in second
    # One request: the guru-wide listing shows nothing new, so no user listing is read (issue
    # 13; it used to be one request per listing); nothing re-downloaded.
    assert f"1 requests for {USERS + 1} listings" in second
    assert "0 new and 0 changed sessions, messages of 0 sessions" in second
    assert "since the last export (0 new)" in second  # a re-export adds nothing
    assert (out / "users.csv").stat().st_mtime_ns >= mtime
    assert pd.read_csv(out / "users.csv").equals(csv["users"])


def test_demo_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--out", str(tmp_path / "file"), *ARGS]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--tz", "Mars/Base", *ARGS]) == 2
    assert "unknown time zone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--sessions", "0"])


def test_demo_without_messages_skips_message_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--sessions",
        "60",
        "--users",
        "3",
        "--days",
        "20",
        "--no-messages",
        "--tz",
        "Asia/Kolkata",
    ]
    assert cli.main(["demo", "--out", str(tmp_path), *args]) == 0
    assert "messages of 0 sessions" in capsys.readouterr().out
    written = {p.name for p in tmp_path.iterdir()}
    assert {"binge_length.csv", "sources.csv", "binge_length.png", "sources.png"}.isdisjoint(
        written
    )
    assert {"questions.csv", "unanswered.png"} <= written  # questions do not need messages
    assert {"sessions.csv", "users.csv", "activity.png", "heatmap.png"} <= written
    day = pd.read_csv(tmp_path / "activity_day_by_user.csv")
    assert day["bucket"].str.endswith("T00:00:00+05:30").all()  # local midnights in the zone
    assert day["new_sessions"].sum() == 60
