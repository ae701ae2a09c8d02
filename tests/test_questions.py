"""Question-level activity from Export Analytics: store, sync, CLI (issue 15).

Real parts throughout: ``LocalGurubase`` over loopback HTTP, DuckDB files or ``:memory:``.
The truth is the synthetic data the server answers from (``synthetic.question_events``), so
"every follow-up of the last 12 months, linked to its session" is checked row by row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from guru_analytics import cli, synthetic
from guru_analytics.client import GurubaseClient
from guru_analytics.server import LocalGurubase
from guru_analytics.server._export import interval_range
from guru_analytics.store import Store, question_row_key
from guru_analytics.sync import QUESTION_INTERVALS, question_interval, sync, sync_questions
from guru_analytics.timestamps import to_micros
from guru_analytics.wire import EXPORT_INTERVALS, QuestionExport, UnansweredQuestion, export_range

END = datetime(2025, 11, 1, tzinfo=UTC)
NOW = END + timedelta(hours=1)
KEY = "gk-questions-SECRET-0123456789abcdef"
GURU = "demo-guru"
EXPORT_PATH = "/analytics/export/"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def serve(n: int = 120, days: int = 60, **kwargs: Any) -> LocalGurubase:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("clock", Clock(NOW))
    return LocalGurubase.demo(n, 6, days, seed=7, end=END, api_key=KEY, **kwargs)


def client(s: LocalGurubase) -> GurubaseClient:
    return GurubaseClient(KEY, s.base_url, rate_limit=None)


@pytest.fixture
def store() -> Iterator[Store]:
    with Store(":memory:") as st:
        yield st


def stored(st: Store, guru: str = GURU) -> pd.DataFrame:
    with st.reader() as con:
        return con.execute(
            "SELECT * FROM questions WHERE guru = ? ORDER BY asked_at, row_key, occurrence",
            [guru],
        ).df()


def follow_up_truth(
    s: LocalGurubase, since: datetime, touches: dict[str, list[datetime]] | None = None
) -> Counter[tuple[str, datetime]]:
    """(session id, minute) of every follow-up the server's data holds since ``since``
    (``touches``: the follow-ups a test added with ``touch``)."""
    extra = {sid: [to_micros(t) for t in ts] for sid, ts in (touches or {}).items()}
    ev = synthetic.question_events(s.synthetic.sessions, seed=s.synthetic.seed, extra_times=extra)
    ev = ev[(ev["message_index"] > 0) & (ev["ts"] >= since)]
    return Counter(
        (sid, ts.to_pydatetime().replace(second=0, microsecond=0))
        for sid, ts in zip(ev["session_id"], ev["ts"], strict=True)
    )


# --- the interval's range and the sync's choice ------------------------------------------


def test_export_range_agrees_with_the_servers_own_copy_of_the_contract() -> None:
    for now in (
        datetime(2025, 3, 10, 14, 25, 7, tzinfo=UTC),
        datetime(2024, 2, 29, 0, 0, tzinfo=UTC),
        datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        for interval in EXPORT_INTERVALS:
            assert export_range(interval, now) == interval_range(interval, now), (interval, now)


def test_the_sync_asks_for_the_smallest_interval_covering_the_gap() -> None:
    now = datetime(2025, 3, 10, 14, 25, tzinfo=UTC)
    assert question_interval(None, now) == "12m"  # the first time
    assert question_interval(now - timedelta(minutes=5), now) == "today"
    # `today` starts at 00:00: an export at 00:30 leaves too little overlap before midnight.
    assert question_interval(datetime(2025, 3, 10, 1, 0, tzinfo=UTC), now) == "today"
    assert question_interval(datetime(2025, 3, 10, 0, 30, tzinfo=UTC), now) == "7d"
    # `yesterday` ends at the last midnight: never chosen, it would miss today.
    assert "yesterday" not in QUESTION_INTERVALS
    assert question_interval(datetime(2025, 3, 9, 12, 0, tzinfo=UTC), now) == "7d"
    assert question_interval(datetime(2025, 3, 3, 1, 0, tzinfo=UTC), now) == "7d"
    assert question_interval(datetime(2025, 3, 3, 0, 30, tzinfo=UTC), now) == "30d"
    assert question_interval(now - timedelta(days=60), now) == "3m"
    assert question_interval(now - timedelta(days=120), now) == "6m"
    assert question_interval(now - timedelta(days=300), now) == "12m"
    assert question_interval(now - timedelta(days=800), now) == "12m"  # the gap is lost
    for days in range(0, 400, 7):
        last = now - timedelta(days=days, hours=3)
        chosen = question_interval(last, now)
        assert export_range(chosen, now)[0] <= last - timedelta(hours=1) or chosen == "12m"


# --- the store ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["code", "docs"])
def test_both_key_schemes_store_the_same_rows(scheme: str) -> None:
    with serve(export_scheme=scheme) as s, Store(":memory:") as st:
        export = client(s).export_questions(GURU, "12m")
        assert export.scheme == scheme
        written = st.write_questions(GURU, export, NOW)
        rows = stored(st)
    assert written.new == len(rows) == len(export.questions) + len(export.unanswered)
    assert written.unanswered == (rows["kind"] == "unanswered").sum() > 0
    assert written.linked == rows["session_id"].notna().sum() > 0
    # the same rows whatever the scheme: compare with a fresh export in the other one
    with (
        serve(export_scheme="docs" if scheme == "code" else "code") as s2,
        Store(":memory:") as st2,
    ):
        st2.write_questions(GURU, client(s2).export_questions(GURU, "12m"), NOW)
        other = stored(st2)
    cols = ["row_key", "occurrence", "kind", "asked_at", "session_id", "trust_score"]
    pd.testing.assert_frame_equal(rows[cols], other[cols])


def test_an_empty_interval_stores_nothing_but_is_recorded(store: Store) -> None:
    with serve(30) as s:
        s.clock = Clock(NOW + timedelta(days=100))
        export = client(s).export_questions(GURU, "7d")
        assert export.scheme == "empty"
        written = store.write_questions(GURU, export, NOW + timedelta(days=100))
    assert (written.questions, written.unanswered, written.new) == (0, 0, 0)
    assert stored(store).empty
    last = store.last_question_export(GURU)
    assert last is not None and (last.interval, last.scheme) == ("7d", "empty")


def test_overlapping_re_exports_add_nothing_and_new_follow_ups_are_added(store: Store) -> None:
    with serve() as s:
        c = client(s)
        first = store.write_questions(GURU, c.export_questions(GURU, "12m"), NOW)
        n = len(stored(store))
        assert first.new == n > 0
        for interval in ("6m", "3m", "30d", "7d", "today", "12m"):
            again = store.write_questions(GURU, c.export_questions(GURU, interval), NOW)
            assert again.new == 0, interval
        assert len(stored(store)) == n
        # Two follow-ups asked in one session in the same minute, one in another session.
        ids = s.truth(GURU)["id"].tolist()
        at = NOW + timedelta(minutes=3)
        s.touch(GURU, [ids[0]], at=at)
        s.touch(GURU, [ids[0]], at=at + timedelta(seconds=20))
        s.touch(GURU, [ids[1]], at=at)
        later = store.write_questions(GURU, c.export_questions(GURU, "today"), at)
        assert later.new == 3
        assert store.write_questions(GURU, c.export_questions(GURU, "7d"), at).new == 0
    rows = stored(store)
    assert len(rows) == n + 3
    new = rows[rows["asked_at"] == at.replace(second=0)]
    assert Counter(new["session_id"]) == {ids[0]: 2, ids[1]: 1}
    assert new["follow_up"].all()


def test_identical_unlinked_rows_count_as_many_as_one_export_shows(store: Store) -> None:
    """Unanswered rows carry no URL: identical rows of one minute are told apart only by
    their occurrence number, so N identical rows stay N over any number of re-exports."""
    at = datetime(2025, 10, 30, 9, 15, tzinfo=UTC)
    row = UnansweredQuestion(at, "Widget", "what is the weather")

    def export(k: int) -> QuestionExport:
        return QuestionExport(GURU, "7d", [], [row] * k, [], "code")

    assert store.write_questions(GURU, export(2), NOW).new == 2
    assert store.write_questions(GURU, export(2), NOW).new == 0
    assert store.write_questions(GURU, export(3), NOW).new == 1  # a third asked that minute
    assert store.write_questions(GURU, export(1), NOW).new == 0
    rows = stored(store)
    assert sorted(rows["occurrence"]) == [0, 1, 2] and rows["session_id"].isna().all()
    key = question_row_key("unanswered", at, "Widget", "what is the weather", None, None)
    assert set(rows["row_key"]) == {key}


def test_first_questions_of_web_sessions_are_kept_unlinked(store: Store) -> None:
    with serve() as s:
        store.write_questions(GURU, client(s).export_questions(GURU, "12m"), NOW)
        truth = s.truth(GURU)
    rows = stored(store)
    answered = rows[rows["kind"] == "answered"]
    unlinked = answered[answered["session_id"].isna()]
    assert len(unlinked) > 0 and not unlinked["follow_up"].any()
    # No row is forced onto a session: every linked row's URL names its session.
    linked = answered[answered["session_id"].notna()]
    assert all(
        f"/binge/{sid}?" in url
        for sid, url in zip(linked["session_id"], linked["url"], strict=True)
    )
    assert set(linked["session_id"]) <= set(truth["id"])


def test_the_12_month_edge(store: Store) -> None:
    """A first sync stores exactly the rows from the 12-month start (00:00 UTC, 365 days
    back) on: a follow-up at that instant is kept, one a minute earlier is not."""
    with serve(150, days=420) as s:
        start, _end = export_range("12m", NOW)
        truth = s.truth(GURU)
        old = truth[truth["last_used"] < start - timedelta(days=2)]["id"].tolist()[:2]
        assert len(old) == 2
        # follow-ups exactly at the edge and one minute before it, in sessions that are old
        s.touch(GURU, [old[0]], at=start - timedelta(minutes=1))
        s.touch(GURU, [old[1]], at=start)
        sync_questions(GURU, client=client(s), store=store, clock=Clock(NOW))
        want = follow_up_truth(s, start, {old[0]: [start - timedelta(minutes=1)], old[1]: [start]})
    rows = stored(store)
    assert rows["asked_at"].min() >= start
    follow = rows[rows["follow_up"].fillna(False).astype(bool)]
    got = Counter(
        (sid, ts.to_pydatetime())
        for sid, ts in zip(follow["session_id"], follow["asked_at"], strict=True)
    )
    assert got == want
    assert (old[1], start) in got and (old[0], start - timedelta(minutes=1)) not in got
    last = store.last_question_export(GURU)
    assert last is not None and (last.interval, last.covers_from) == ("12m", start)


def test_sync_with_questions_costs_one_request_and_a_second_run_a_short_interval(
    tmp_path: Path,
) -> None:
    clock = Clock(NOW)
    with serve(clock=clock) as s, Store(tmp_path / "c.duckdb") as st:
        c = client(s)
        s.clear_log()
        one = sync(GURU, client=c, store=st, questions=True, progress=False, clock=clock)
        assert s.request_count(EXPORT_PATH) == 1
        assert one.questions_exported == one.questions_new > 0
        assert "questions" in str(one)
        clock.now = NOW + timedelta(hours=5)
        s.clock = clock
        two = sync(GURU, client=c, store=st, questions=True, progress=False, clock=clock)
        assert s.request_count(EXPORT_PATH) == 2
        assert two.questions_new == 0  # today holds nothing new (the data ends at END)
        bodies = [r.body for r in s.log if EXPORT_PATH in r.path]
        assert [b["interval"] for b in bodies] == ["12m", "today"]
        off = sync(GURU, client=c, store=st, progress=False, clock=clock)
        assert s.request_count(EXPORT_PATH) == 2 and off.questions_exported == 0


def test_cli_sync_questions_stores_every_follow_up_linked_in_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`guru-analytics sync GURU --questions` on the local server (its real clock): every
    follow-up of the last 12 months, linked to its session, from one export request."""
    with LocalGurubase.demo(200, 6, 400, seed=3, api_key=KEY, rate_limit=None) as s:
        monkeypatch.setenv("GURUBASE_API_KEY", KEY)
        db = tmp_path / "cache.duckdb"
        argv = ["sync", GURU, "--db", str(db), "--base-url", s.base_url, "--questions"]
        assert cli.main([*argv, "--rate-limit", "none", "--no-progress"]) == 0
        assert s.request_count(EXPORT_PATH) == 1
        assert "questions" in capsys.readouterr().out
        start = interval_range("12m", s.clock())[0]
        want = follow_up_truth(s, start)
    with Store(db) as st:
        rows = stored(st)
    follow = rows[rows["follow_up"].fillna(False).astype(bool)]
    got = Counter(
        (sid, ts.to_pydatetime())
        for sid, ts in zip(follow["session_id"], follow["asked_at"], strict=True)
    )
    assert len(want) > 100 and got == want
    assert follow["session_id"].notna().all()


# --- frames -------------------------------------------------------------------------------
# A hand-computable cache (schema from the store's own steps, rows by plain SQL):
#   a  observation 10:23:27.5; exported follow-ups 09:00 and 10:23 (the observed one, to
#      the minute) -> events 09:00, 10:23:27.5
#   b  messages 11:00:05 and 11:05:10 (observation 11:05:10); exported questions 11:00,
#      11:05 (the same two) and 11:30 -> events 11:00:05, 11:05:10, 11:30
#   unlinked rows (a web session's first question, unanswered) and a row naming a session
#   the cache does not know count only in the question reports.

DAY = "2025-03-10"


def _question_cache(*, messages: bool = True) -> Any:
    from analytics_fixtures import add_sessions, make_con

    from guru_analytics.store import SCHEMA_V4

    con = make_con()
    con.execute(SCHEMA_V4)
    b_messages = (
        [{"ts": f"{DAY}T11:00:05Z", "source": "USER"}, {"ts": f"{DAY}T11:05:10Z"}]
        if messages
        else []
    )
    add_sessions(
        con,
        "g",
        [
            {"id": "a", "users": ["alice"], "title": "Install?", "obs": [f"{DAY}T10:23:27.5Z"]},
            {"id": "b", "users": ["bob"], "title": "Tabs?", "obs": [f"{DAY}T11:05:10Z"],
             "messages": b_messages},
        ],
    )  # fmt: skip
    rows = [  # kind, minute, source, trust, follow_up, session
        ("answered", "09:00", "Gurubase UI", 0.9, True, "a"),
        ("answered", "10:23", "Gurubase UI", 0.4, True, "a"),
        ("answered", "11:00", "Slack", 0.8, False, "b"),
        ("answered", "11:05", "Slack", 0.7, True, "b"),
        ("answered", "11:30", "Slack", None, True, "b"),
        ("answered", "12:00", "Widget", 0.3, False, None),
        ("answered", "12:10", "Api", 0.6, True, "zz"),
        ("unanswered", "12:20", "Widget", None, None, None),
    ]
    for k, (kind, hm, source, trust, follow, sid) in enumerate(rows):
        url = (
            None
            if kind == "unanswered"
            else f"https://gurubase.io/g/g/x/binge/{sid}?question_slug=q{k}"
        )
        con.execute(
            "INSERT INTO questions (guru, row_key, occurrence, kind, asked_at, source, question, "
            "trust_score, follow_up, url, session_id, question_slug, first_exported) VALUES "
            "('g', ?, 0, ?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, ?, now())",
            [k, kind, f"{DAY}T{hm}:00Z", source, f"question {k}", trust, follow, url, sid, f"q{k}"],
        )
    return con


def test_question_events_join_the_activity_basis_counted_once_per_minute() -> None:
    from guru_analytics import frames

    con = _question_cache()
    s = frames.sessions(con, "g").set_index("id")
    assert s.attrs["basis"] == "observations+messages+questions"
    assert s.loc["a", "events"] == 2 and s.loc["b", "events"] == 3
    assert s.loc["a", "first_event"] == pd.Timestamp(f"{DAY}T09:00Z")
    act = frames.activity(con, "g", freq="H")
    assert act["events"].sum() == 5
    assert act.set_index("bucket")["new_sessions"].sum() == 2
    without = _question_cache(messages=False)
    assert frames.activity(without, "g").attrs["basis"] == "observations+questions"
    # b without messages: observation 11:05:10, questions 11:00 and 11:30 (11:05 is observed)
    assert frames.sessions(without, "g").set_index("id").loc["b", "events"] == 3


def test_question_reports_by_hand() -> None:
    from guru_analytics import frames

    con = _question_cache()
    q = frames.questions(con, "g")
    assert len(q) == 8 and q["asked_at"].is_monotonic_increasing
    assert q["session_id"].isna().sum() == 2 and (~q["answered"]).sum() == 1
    assert q.set_index("question").loc["question 0", "title"] == "Install?"
    assert list(frames.questions(con, "g", users="alice")["session_id"]) == ["a", "a"]
    src = frames.question_sources(con, "g", freq="D")
    got = src.set_index("source")[["questions", "follow_ups", "unanswered"]].to_dict("index")
    assert got == {
        "Api": {"questions": 1, "follow_ups": 1, "unanswered": 0},
        "Gurubase UI": {"questions": 2, "follow_ups": 2, "unanswered": 0},
        "Slack": {"questions": 3, "follow_ups": 2, "unanswered": 0},
        "Widget": {"questions": 1, "follow_ups": 0, "unanswered": 1},
    }
    trust = frames.question_trust(con, "g", freq="D").iloc[0]
    assert (trust["questions"], trust["scored"], trust["low_trust"]) == (7, 6, 2)
    assert trust["mean_trust_score"] == pytest.approx((0.9 + 0.4 + 0.8 + 0.7 + 0.3 + 0.6) / 6)
    un = frames.unanswered(con, "g", freq="H").set_index("bucket")
    assert un["questions"].sum() == 7 and un["unanswered"].sum() == 1
    assert un.loc[pd.Timestamp(f"{DAY}T12:00Z"), "unanswered_share"] == pytest.approx(1 / 3)
    assert un.loc[pd.Timestamp(f"{DAY}T10:00Z"), "unanswered_share"] == 0.0


def test_question_reports_need_questions_and_old_caches_still_read() -> None:
    from analytics_fixtures import add_sessions, make_con

    from guru_analytics import frames
    from guru_analytics.errors import NoDataError

    con = make_con()  # schema v1: no questions table at all
    add_sessions(con, "g", [{"id": "a", "obs": [f"{DAY}T10:00:00Z"]}])
    assert frames.activity(con, "g").attrs["basis"] == "observations"
    with pytest.raises(NoDataError, match="sync g --questions"):
        frames.questions(con, "g")


def test_question_charts_draw_from_the_cache() -> None:
    from matplotlib.axes import Axes

    from guru_analytics import catalog, plots

    con = _question_cache()
    for name, chart in catalog.CHARTS.items():
        if chart.needs_questions:
            ax = plots.chart(con, name, "g", freq="H")
            assert isinstance(ax, Axes) and ax.get_title(), name
            assert ax.patches or ax.lines, name


def test_export_and_get_session_agree_on_the_local_server(tmp_path: Path) -> None:
    """For sessions covered by both the export and Get Session messages, the export's linked
    questions are the messages to the minute, and adding them changes no session's events."""
    from guru_analytics import frames

    clock = Clock(NOW)
    with serve(80, clock=clock) as s, Store(tmp_path / "c.duckdb") as st:
        c = client(s)
        sync(GURU, client=c, store=st, messages=True, progress=False, clock=clock)
        before = frames.sessions(st, GURU).set_index("id")
        sync(GURU, client=c, store=st, questions=True, progress=False, clock=clock)
        after = frames.sessions(st, GURU).set_index("id")
        with st.reader() as con:
            pairs = con.execute(
                """SELECT m.session_id, list_sort(list(DISTINCT date_trunc('minute', m.date_created)))
                          AS msg, (SELECT list_sort(list(DISTINCT x.asked_at)) FROM questions x
                                   WHERE x.guru = m.guru AND x.session_id = m.session_id) AS q,
                          bool_or(m.parent_slug IS NULL AND m.source IN ('SLACK','DISCORD','GITHUB'))
                          AS linked_root
                   FROM messages m WHERE m.guru = ? GROUP BY m.guru, m.session_id""",
                [GURU],
            ).fetchall()
            roots = dict(
                con.execute(
                    "SELECT session_id, date_trunc('minute', date_created) FROM messages "
                    "WHERE guru = ? AND parent_slug IS NULL",
                    [GURU],
                ).fetchall()
            )
    assert before.attrs["basis"] == "observations+messages"
    assert after.attrs["basis"] == "observations+messages+questions"
    assert len(pairs) == 80
    for sid, msg, q, linked_root in pairs:
        want = list(msg) if linked_root else sorted(set(msg) - {roots[sid]})
        # A follow-up in the root's minute of a web session is still exported; keep it.
        got = sorted(set(q or []))
        assert set(want) <= set(got) <= set(msg), sid
    pd.testing.assert_series_equal(before["events"], after["events"])


def test_guru_local_syncs_questions_in_one_request() -> None:
    """`Guru.local()`'s server clock runs on from the synthetic data's end, so the first
    `sync(questions=True)` exports the whole history in one request."""
    from guru_analytics.guru import Guru

    with Guru.local(120, 4, 60) as g:
        summary = g.sync(questions=True, users=[])
        assert g.server.request_count(EXPORT_PATH) == 1
        assert summary.questions_new == summary.questions_exported > 0
        q = g.report("questions")
        assert len(q) == summary.questions_exported and q["session_id"].notna().any()
        assert g.activity().attrs["basis"] == "observations+questions"


# --- the questions phase inside one sync: order, commit before waits, progress, summary ----


class FakeMonotonic:
    """Monotonic time that moves only when slept on (rate-limit waits cost no real time)."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_questions_phase_runs_between_listings_and_messages_and_commits_before_the_next_wait(
    tmp_path: Path,
) -> None:
    """One export after the listings; its rows are in the file (read by an independent
    read-only connection) when the next rate-limit wait starts, and the progress callback
    hears one "questions" report between the listing and the messages reports."""
    import duckdb

    from guru_analytics.progress import SyncProgress

    path = tmp_path / "c.duckdb"
    fake = FakeMonotonic()
    reports: list[SyncProgress] = []
    seen_in_file: list[int] = []

    def on_progress(p: SyncProgress) -> None:
        reports.append(p)
        phases = [r.phase for r in reports]
        if p.phase == "wait" and "questions" in phases and not seen_in_file:
            with duckdb.connect(str(path), read_only=True) as con:
                row = con.execute("SELECT count(*) FROM questions").fetchone()
                seen_in_file.append(int(row[0]) if row else 0)

    clock = Clock(NOW)
    with serve(n=60, days=30, clock=clock) as s, Store(path) as st:
        # 3 requests a minute: the listing (2 pages + a top-up) uses them up, so the export
        # and every Get Session wait first (on the fake monotonic clock).
        c = GurubaseClient(
            KEY, s.base_url, rate_limit=3, rate_window=60.0,
            monotonic=fake.monotonic, sleep=fake.sleep,
        )  # fmt: skip
        summary = sync(
            GURU, client=c, store=st, questions=True, messages=True, max_requests=4,
            progress=False, on_progress=on_progress, clock=clock, monotonic=fake.monotonic,
        )  # fmt: skip
        assert s.request_count(EXPORT_PATH) == 1
        stored_rows = len(stored(st))
    assert summary.outcome == "ok" and summary.questions_new == stored_rows > 0
    assert seen_in_file == [stored_rows]  # committed before the messages phase's first wait
    phases = [r.phase for r in reports if r.phase != "wait"]
    assert phases.count("questions") == 1
    q = phases.index("questions")
    assert set(phases[:q]) == {"listing"} and set(phases[q + 1 : -1]) == {"messages"}
    assert phases[-1] == "done"
    at_export = next(r for r in reports if r.phase == "questions")
    assert at_export.listing == "" and at_export.requests == summary.pages + 1


def test_summary_shows_the_questions_in_str_repr_and_html() -> None:
    from guru_analytics.sync import SyncSummary

    plain = SyncSummary(guru=GURU, mode="full", listings=[""], requests=3)
    assert "questions" not in str(plain) and "questions" not in repr(plain)
    s = SyncSummary(
        guru=GURU, mode="full", listings=[""], requests=4, questions_exported=12, questions_new=9
    )
    assert str(s).splitlines()[-1].split() == ["questions", "12", "exported,", "9", "new"]
    assert ", 9 new questions" in repr(s) and "\n" not in repr(s)
    assert "<th style='text-align:left'>questions</th>" in s._repr_html_()
    assert "12 exported, 9 new" in s._repr_html_()


def test_the_dashboard_syncs_questions_by_default(tmp_path: Path) -> None:
    from guru_analytics.guru import Guru

    class Timer:  # the debounce never fires by itself (the test drives refreshes)
        def __init__(self, delay: float, fn: Any) -> None:
            self.fn = fn

        def start(self) -> None:
            pass

        def cancel(self) -> None:
            pass

    with Guru.local(80, 3, 30, db=tmp_path / "d.duckdb") as g:
        d = g.dashboard(timer_factory=Timer, export_dir=tmp_path)
        assert d.sync_options == {"questions": True}
        thread = d.sync_now()
        assert thread is not None
        thread.join(60)
        assert d.sync_error is None and d.sync_summary.questions_new > 0
        assert g.server.request_count(EXPORT_PATH) == 1
        # the bar read the sync's own reports to the end, the export's request included
        assert d.progress.last is not None and d.progress.last.requests == d.sync_summary.requests
        assert d.progress.fraction == 1.0
        off = g.dashboard(timer_factory=Timer, sync_options={"questions": False})
        assert off.sync_options == {"questions": False}
