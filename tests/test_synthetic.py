"""Synthetic guru data: deterministic, realistic in shape, messages consistent both ways."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from guru_analytics import synthetic
from guru_analytics.errors import ConfigError, NotFoundError
from guru_analytics.timestamps import parse_api_timestamp, to_micros

END = datetime(2025, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def guru() -> synthetic.SyntheticGuru:
    return synthetic.generate(5000, 50, 120, seed=7)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = synthetic.generate(800, 20, 60, seed=3)
    b = synthetic.generate(800, 20, 60, seed=3)
    c = synthetic.generate(800, 20, 60, seed=4)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    assert a.messages(a.sessions["id"][10]) == b.messages(b.sessions["id"][10])
    assert set(a.sessions["id"]).isdisjoint(set(c.sessions["id"]))
    assert not a.sessions["last_used"].equals(c.sessions["last_used"])


def test_columns_types_and_invariants(guru: synthetic.SyntheticGuru) -> None:
    s = guru.sessions
    assert list(s.columns) == list(synthetic.SESSION_COLUMNS)
    assert len(s) == 5000 and len(guru) == 5000
    assert str(s["last_used"].dtype) == "datetime64[us, UTC]"
    assert str(s["date_created"].dtype) == "datetime64[us, UTC]"
    assert s["id"].is_unique and s["root_question_slug"].is_unique
    assert (
        s["id"]
        .str.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
        .all()
    )
    assert (s["last_used"] >= s["date_created"]).all()
    assert s["date_created"].min() >= END - timedelta(days=120)
    assert s["last_used"].max() < END
    assert s["n_messages"].between(1, synthetic.MAX_MESSAGES).all()
    assert (
        (s["n_messages"] == 1).sum() > (s["n_messages"] == 2).sum() > (s["n_messages"] == 5).sum()
    )
    one = s["n_messages"] == 1
    assert (s.loc[one, "last_used"] == s.loc[one, "date_created"]).all()
    assert (s.loc[~one, "last_used"] > s.loc[~one, "date_created"]).all()
    assert set(s["source"]) <= set(synthetic.SOURCES)
    assert s["has_root"].all()
    # Hidden wording always differs from the title, and the slug starts with the slugified title.
    assert (s["user_question"] != s["root_question_name"]).all()
    assert s.apply(
        lambda r: r.root_question_slug.startswith(synthetic._slugify(r.root_question_name)), axis=1
    ).all()
    # Microsecond timestamps: ties are rare.
    assert s["last_used"].duplicated().sum() <= 2
    assert guru.name == "Demo Guru" and guru.slug == "demo-guru"
    # Sorted like a listing: last_used desc.
    assert s["last_used"].is_monotonic_decreasing


def test_users_heavy_tailed_and_unattributed_share(guru: synthetic.SyntheticGuru) -> None:
    ext = guru.sessions["external_user_id"]
    assert 0.27 < ext.isna().mean() < 0.33
    counts = ext.value_counts()
    assert counts.index[0] == "user-0001"
    assert len(counts) == 50
    top5 = counts.iloc[:5].sum() / counts.sum()
    bottom25 = counts.iloc[25:].sum() / counts.sum()
    assert top5 > 0.4 and bottom25 < 0.15
    assert any("@example.com" in u for u in counts.index)
    # Users join over time: power users from the first days, others later (new users/week).
    first_seen = guru.sessions.groupby("external_user_id")["date_created"].min()
    start = END - timedelta(days=120)
    assert first_seen["user-0001"] < start + timedelta(days=2)
    assert (first_seen > start + timedelta(days=30)).sum() >= 10
    assert (first_seen > start + timedelta(days=80)).sum() >= 3
    # Widget visitors ask through the widget or the UI, never through Slack.
    anon = guru.sessions[ext.isna()]
    assert set(anon["source"]) == {"WIDGET QUESTION", "USER"}


def test_time_rhythm_growth_and_launch_burst(guru: synthetic.SyntheticGuru) -> None:
    created = guru.sessions["date_created"]
    hours = created.dt.hour.value_counts()
    assert hours[15] > 3 * hours[3]
    day = created.dt.floor("D")
    per_day = day.value_counts().sort_index()
    weekend = per_day[per_day.index.day_of_week >= 5].mean()
    weekday = per_day[per_day.index.day_of_week < 5].mean()
    assert weekend < 0.7 * weekday
    first_month = (created < END - timedelta(days=90)).sum()
    last_month = (created >= END - timedelta(days=30)).sum()
    assert last_month > 1.8 * first_month
    launch = per_day.idxmax()
    assert launch == per_day.index[0] + timedelta(days=int(len(per_day) * 0.3))
    assert per_day.max() > 3 * per_day.median()


def test_rootless_and_unattributed_options() -> None:
    g = synthetic.generate(2000, 10, 30, seed=1, rootless_share=0.25, unattributed_share=1.0)
    s = g.sessions
    rootless = ~s["has_root"]
    assert 0.21 < rootless.mean() < 0.29
    assert s.loc[rootless, "root_question_name"].isna().all()
    assert s.loc[rootless, "root_question_slug"].isna().all()
    assert (s.loc[rootless, "n_messages"] == 0).all()
    assert s.loc[~rootless, "root_question_name"].notna().all()
    assert s["external_user_id"].isna().all()
    assert g.messages(s.loc[rootless, "id"].iloc[0]) == []
    assert len(g.message_events()) == s["n_messages"].sum()


def test_edge_arguments() -> None:
    empty = synthetic.generate(0, 0, 1)
    assert len(empty.sessions) == 0 and list(empty.sessions.columns) == list(
        synthetic.SESSION_COLUMNS
    )
    assert len(empty.message_events()) == 0
    no_users = synthetic.generate(50, 0, 5, unattributed_share=0.0)
    assert no_users.sessions["external_user_id"].isna().all()
    other_end = synthetic.generate(100, 5, 3, end=datetime(2024, 2, 29, 12, 30, tzinfo=UTC))
    assert other_end.sessions["date_created"].min() >= datetime(2024, 2, 26, 12, 30, tzinfo=UTC)
    assert other_end.sessions["last_used"].max() < datetime(2024, 2, 29, 12, 30, tzinfo=UTC)
    for kwargs in (
        {"n_sessions": -1},
        {"days": 0},
        {"unattributed_share": 1.5},
        {"rootless_share": -0.1},
    ):
        with pytest.raises(ConfigError):
            synthetic.generate(**kwargs)
    with pytest.raises(ConfigError):
        synthetic.generate(10, end=datetime(2025, 1, 1))
    with pytest.raises(NotFoundError):
        empty.messages("no-such-id")


def test_messages_match_the_session_row(guru: synthetic.SyntheticGuru) -> None:
    s = guru.sessions
    many = s[s["n_messages"] >= 6].iloc[0]
    checked = 0
    for _, row in pd.concat([s.iloc[::97], many.to_frame().T]).iterrows():
        msgs = guru.messages(row["id"])
        assert len(msgs) == row["n_messages"]
        times = [parse_api_timestamp(m["date_created"]) for m in msgs]
        assert times[0] == row["date_created"] and times[-1] == row["last_used"]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert all(m["date_created"].endswith("+00:00") for m in msgs)
        root = msgs[0]
        assert root["parent_slug"] is None
        assert root["question"] == row["root_question_name"]
        assert root["user_question"] == row["user_question"]
        assert root["slug"] == row["root_question_slug"]
        assert root["source"] in synthetic.SOURCES
        for prev, msg in zip(msgs, msgs[1:], strict=False):
            assert msg["parent_slug"] == prev["slug"]
        assert len({m["id"] for m in msgs}) == len(msgs) and len({m["slug"] for m in msgs}) == len(
            msgs
        )
        for m in msgs:
            assert isinstance(m["trust_score"], int) and 0 <= m["trust_score"] <= 100
            assert m["user_vote"] in ("upvote", "downvote", None)
            assert m["id"].isdigit()
            assert parse_api_timestamp(m["date_updated"]) >= parse_api_timestamp(m["date_created"])
            assert all(set(ref) == {"link", "icon", "title"} for ref in m["references"])
        checked += 1
    assert checked > 50


def test_message_fields_are_varied(guru: synthetic.SyntheticGuru) -> None:
    msgs = [m for sid in guru.sessions["id"].iloc[:400] for m in guru.messages(sid)]
    votes = pd.Series([m["user_vote"] or "none" for m in msgs]).value_counts()
    assert votes["none"] > votes["upvote"] > votes["downvote"] > 0
    trust = np.array([m["trust_score"] for m in msgs])
    assert 60 < trust.mean() < 85 and trust.min() < 30 and trust.max() > 95
    assert len({m["question"] for m in msgs}) > 50
    # Message ids are unique across sessions too.
    assert len({m["id"] for m in msgs}) == len(msgs)


def test_message_events_equal_messages_for_every_session() -> None:
    g = synthetic.generate(600, 10, 20, seed=11)
    events = g.message_events()
    assert list(events.columns) == ["id", "message_index", "ts"]
    assert len(events) == g.sessions["n_messages"].sum()
    assert str(events["ts"].dtype) == "datetime64[us, UTC]"
    by_id = {sid: grp for sid, grp in events.groupby("id", sort=False)}
    for sid in g.sessions["id"]:
        expected = [parse_api_timestamp(m["date_created"]) for m in g.messages(sid)]
        got = by_id[sid]
        assert got["message_index"].tolist() == list(range(len(expected)))
        assert got["ts"].tolist() == expected
    assert synthetic.message_events(g.sessions).equals(events)  # seed kept in attrs
    assert not synthetic.message_events(g.sessions, seed=12)["ts"].equals(events["ts"])
    first = events[events["message_index"] == 0].set_index("id")["ts"]
    assert (first.loc[g.sessions["id"]].to_numpy() == g.sessions["date_created"].to_numpy()).all()


def test_conversation_extra_times_and_foreign_ids() -> None:
    row = {
        "id": "séance-ü-1",  # non-ASCII ids hash the same in bulk and one at a time
        "date_created": datetime(2025, 5, 1, 10, tzinfo=UTC),
        "last_used": datetime(2025, 5, 1, 11, tzinfo=UTC),
        "n_messages": 3,
        "root_question_name": "How do I install the CLI?",
        "root_question_slug": "how-do-i-install-the-cli-x1",
        "user_question": "how do i install the cli",
        "source": "API",
        "has_root": True,
    }
    later = datetime(2025, 5, 3, 9, 15, 0, 123456, tzinfo=UTC)
    msgs = synthetic.conversation(row, seed=5, extra_times=[later])
    assert len(msgs) == 4
    assert parse_api_timestamp(msgs[-1]["date_created"]) == later
    assert msgs[:3] == synthetic.conversation(row, seed=5)
    frame = pd.DataFrame([row]).assign(
        date_created=lambda d: pd.to_datetime(d["date_created"], utc=True).dt.as_unit("us"),
        last_used=lambda d: pd.to_datetime(d["last_used"], utc=True).dt.as_unit("us"),
    )
    ev = synthetic.message_events(frame, seed=5)
    assert ev["ts"].tolist() == [parse_api_timestamp(m["date_created"]) for m in msgs[:3]]
    assert synthetic.conversation(row, seed=6) != synthetic.conversation(row, seed=5)


def test_new_sessions_rows() -> None:
    at = [datetime(2025, 6, 1, tzinfo=UTC) + timedelta(seconds=i) for i in range(5)]
    rows = synthetic.new_sessions(
        5, seed=0, at=at, external_user_id="user-0042", slug_counter_start=3
    )
    assert list(rows.columns) == list(synthetic.SESSION_COLUMNS)
    assert rows["last_used"].tolist() == at and rows["date_created"].tolist() == at
    assert (rows["external_user_id"] == "user-0042").all() and (rows["n_messages"] == 1).all()
    assert rows["root_question_slug"].str.endswith(("-n3", "-n4", "-n5", "-n6", "-n7")).all()
    with pytest.raises(ConfigError):
        synthetic.new_sessions(2, seed=0, at=at)


def test_question_events_are_the_conversations_messages() -> None:
    g = synthetic.generate(300, 10, 30, seed=4, rootless_share=0.05)
    events = synthetic.question_events(g.sessions)  # the seed comes from the frame's attrs
    listed = g.sessions[g.sessions["has_root"]]
    assert len(events) == int(listed["n_messages"].sum())
    bulk = synthetic.message_events(g.sessions)
    assert events["ts"].tolist() == bulk["ts"].tolist()
    grouped = {sid: rows for sid, rows in events.groupby("session_id", sort=False)}
    for sid in listed["id"].iloc[:80]:
        rows = grouped[sid].sort_values("message_index")
        msgs = g.messages(sid)
        assert [parse_api_timestamp(m["date_created"]) for m in msgs] == [
            t.to_pydatetime() for t in rows["ts"]
        ]
        for col in ("slug", "source", "trust_score", "question", "user_question"):
            assert rows[col].tolist() == [m[col] for m in msgs], col
        assert rows["n_references"].tolist() == [len(m["references"]) for m in msgs]


def test_question_events_add_the_extra_follow_ups_after_the_generated_ones() -> None:
    g = synthetic.generate(20, 3, 10, seed=8)
    row = g.sessions.iloc[0]
    later = row["last_used"].to_pydatetime() + timedelta(hours=2)
    extra = {row["id"]: [to_micros(later)]}
    events = synthetic.question_events(g.sessions, seed=8, extra_times=extra)
    mine = events[events["session_id"] == row["id"]].sort_values("message_index")
    msgs = synthetic.conversation(row.to_dict(), seed=8, extra_times=[later])
    assert mine["slug"].tolist() == [m["slug"] for m in msgs]
    assert mine["ts"].iloc[-1].to_pydatetime() == later


def test_standalone_questions_are_deterministic_and_belong_to_no_session() -> None:
    g = synthetic.generate(1000, 10, 60, seed=6)
    a = synthetic.standalone_questions(g.sessions)
    pd.testing.assert_frame_equal(a, synthetic.standalone_questions(g.sessions, seed=6))
    assert not a.equals(synthetic.standalone_questions(g.sessions, seed=7))
    kinds = a["kind"].value_counts()
    assert 60 < kinds["question"] < 200 and 40 < kinds["unanswered"] < 140
    asked = a[a["kind"] == "question"]
    assert asked["slug"].is_unique
    assert not set(asked["slug"]) & set(g.sessions["root_question_slug"])
    assert a.loc[a["kind"] == "unanswered", "slug"].isna().all()
    assert set(a["source"]) <= set(synthetic.SOURCES)
