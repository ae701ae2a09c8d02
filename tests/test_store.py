"""The DuckDB cache against real DuckDB files (tmp_path) and ``:memory:``.

Cross-process behaviour (locking, killed writers, interrupted runs) uses real child Python
processes; nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
import requests
from sync_fixtures import client_for, demo_server, get_requests, run

from guru_analytics.errors import CacheError, CacheLockedError, CacheSchemaError, ConfigError
from guru_analytics.server import LocalGurubase
from guru_analytics.store import (
    _PAGE_READ_SQL,  # the page statements, checked for their index use
    _PAGE_READ_USERS_SQL,
    _PAGE_TOUCH_SQL,
    LISTING_COLUMNS,
    LISTING_FINGERPRINT_SQL,
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_VERSION,
    PageWrite,
    Store,
    SyncState,
    default_cache_path,
    listing_fingerprint,
)

T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
G = "demo-guru"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def listing(*rows: tuple) -> pd.DataFrame:
    """A listing frame from (id, last_used[, title[, extra]]) tuples, shaped like the sync's."""
    records = []
    for row in rows:
        sid, last_used = row[0], row[1]
        title = row[2] if len(row) > 2 else f"Question {sid}?"
        extra = row[3] if len(row) > 3 else None
        records.append(
            {
                "id": sid,
                "last_used": last_used,
                "guru_type_name": "Demo",
                "root_question_name": title,
                "root_question_slug": title.lower().replace(" ", "-").strip("?"),
                "root_question_link": f"https://gurubase.io/g/demo/{sid}",
                "extra": extra,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(LISTING_COLUMNS))
    frame["last_used"] = pd.to_datetime(frame["last_used"], utc=True)
    return frame


def sessions_table(store: Store, guru: str = G) -> pd.DataFrame:
    with store.reader() as conn:
        return conn.execute(
            "SELECT id, last_used, root_question_name, extra, first_seen, last_seen, deleted, "
            "deleted_at, date_created FROM sessions WHERE guru = ? ORDER BY id",
            [guru],
        ).df()


def observations(store: Store, guru: str = G) -> list[tuple[str, datetime, datetime]]:
    with store.reader() as conn:
        rows = conn.execute(
            "SELECT id, last_used, observed_at FROM observations WHERE guru = ? "
            "ORDER BY id, last_used",
            [guru],
        ).fetchall()
    return [(i, lu.astimezone(UTC), seen.astimezone(UTC)) for i, lu, seen in rows]


def row(frame: pd.DataFrame, sid: str) -> pd.Series:
    match = frame[frame["id"] == sid]
    assert len(match) == 1, f"{sid} appears {len(match)} times"
    return match.iloc[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "cache.duckdb", lock_timeout=2.0) as s:
        yield s


# --- write_page: upsert semantics -------------------------------------------------------


def test_counts_new_changed_unchanged_against_stored(store: Store) -> None:
    first = store.write_page(G, listing(("a", at(0)), ("b", at(1)), ("c", at(2))), at(10))
    assert first == PageWrite(3, 0, 0, ("c", "b", "a"), ())

    second = store.write_page(G, listing(("d", at(30)), ("b", at(20)), ("c", at(2))), at(40))
    assert (second.new, second.changed, second.unchanged) == (1, 1, 1)
    assert second.new_ids == ("d",)
    assert second.changed_ids == ("b",)
    assert second.seen == 3

    table = sessions_table(store)
    assert list(table["id"]) == ["a", "b", "c", "d"]
    b = row(table, "b")
    assert b["last_used"] == at(20)
    assert b["first_seen"] == at(10)  # kept from the first sighting
    assert b["last_seen"] == at(40)
    assert row(table, "a")["last_seen"] == at(10)  # not in the second page
    assert str(table["last_used"].dtype) == "datetime64[us, UTC]"


def test_last_used_never_moves_backwards_and_stale_listing_values_are_ignored(store: Store) -> None:
    store.write_page(G, listing(("a", at(50), "New title?")), at(60))
    stale = store.write_page(G, listing(("a", at(5), "Old title?")), at(70))
    assert (stale.new, stale.changed, stale.unchanged) == (0, 0, 1)

    a = row(sessions_table(store), "a")
    assert a["last_used"] == at(50)
    assert a["root_question_name"] == "New title?"
    assert a["last_seen"] == at(70)  # it was seen, even if by a stale read
    # The stale value is still history: an observation, first seen at 70.
    assert observations(store) == [("a", at(5), at(70)), ("a", at(50), at(60))]


def test_observations_accumulate_each_distinct_value_once(store: Store) -> None:
    for minutes, seen in [(1, 10), (1, 11), (2, 12), (1, 13), (3, 14), (2, 15)]:
        store.write_page(G, listing(("s", at(minutes))), at(seen))
    assert observations(store) == [
        ("s", at(1), at(10)),
        ("s", at(2), at(12)),
        ("s", at(3), at(14)),
    ]
    assert row(sessions_table(store), "s")["last_used"] == at(3)


def test_duplicates_in_one_batch_keep_the_greatest_last_used(store: Store) -> None:
    # A page set re-read across a moving list: 'x' once at the old and once at the new value,
    # in either order; 'y' twice with the same value but different titles (later row wins).
    rows = listing(
        ("x", at(1), "Old x?"),
        ("y", at(5), "First y?"),
        ("x", at(9), "New x?"),
        ("z", at(7)),
        ("z", at(3)),
        ("y", at(5), "Second y?"),
    )
    result = store.write_page(G, rows, at(20))
    assert (result.new, result.changed, result.unchanged) == (3, 0, 0)
    assert result.new_ids == ("x", "z", "y")  # page order: newest last_used first

    table = sessions_table(store)
    assert row(table, "x")["last_used"] == at(9)
    assert row(table, "x")["root_question_name"] == "New x?"
    assert row(table, "z")["last_used"] == at(7)
    assert row(table, "y")["root_question_name"] == "Second y?"
    assert [(i, lu) for i, lu, _ in observations(store)] == [
        ("x", at(1)),
        ("x", at(9)),
        ("y", at(5)),
        ("z", at(3)),
        ("z", at(7)),
    ]


def test_extra_json_is_kept_and_queryable(store: Store) -> None:
    extra = json.dumps({"is_pinned": True, "tags": ["a", "b"]}, sort_keys=True)
    rows = listing(("a", at(1), "Q?", extra), ("b", at(2), "R?", None))
    rows["extra"] = pd.Series([extra, {"source": "widget"}], dtype=object)  # dicts: serialised
    store.write_page(G, rows, at(5))
    with store.reader() as conn:
        got = conn.execute(
            "SELECT id, extra::VARCHAR, extra->>'$.tags[1]', extra->>'$.source' "
            "FROM sessions ORDER BY id"
        ).fetchall()
    assert got == [("a", extra, "b", None), ("b", '{"source": "widget"}', None, "widget")]


def test_listing_values_refresh_without_counting_as_changed(store: Store) -> None:
    store.write_page(G, listing(("a", at(1), "Typo tittle?")), at(5))
    again = store.write_page(G, listing(("a", at(1), "Typo title?")), at(6))
    assert (again.new, again.changed, again.unchanged) == (0, 0, 1)
    assert row(sessions_table(store), "a")["root_question_name"] == "Typo title?"


def test_empty_and_malformed_pages(store: Store) -> None:
    assert store.write_page(G, listing(), at(1)) == PageWrite(0, 0, 0)
    assert store.gurus() == []

    with pytest.raises(ConfigError, match="lacks column"):
        store.write_page(G, listing(("a", at(1))).drop(columns=["extra"]), at(1))
    naive = listing(("a", at(1)))
    naive["last_used"] = naive["last_used"].dt.tz_localize(None)
    with pytest.raises(ConfigError, match="naive"):
        store.write_page(G, naive, at(1))
    with pytest.raises(ConfigError, match="naive"):
        store.write_page(G, listing(("a", at(1))), datetime(2025, 1, 1))
    with pytest.raises(ConfigError, match="guru slug"):
        store.write_page("", listing(("a", at(1))), at(1))
    assert sessions_table(store).empty


# --- users, deletions -------------------------------------------------------------------


def test_session_users_attribution(store: Store) -> None:
    store.write_page(G, listing(("a", at(1)), ("b", at(2))), at(10), external_user_id="alice")
    store.write_page(G, listing(("a", at(3))), at(20), external_user_id="alice")
    store.write_page(G, listing(("b", at(2)), ("c", at(4))), at(30), external_user_id="bob")
    store.write_page(G, listing(("d", at(5))), at(40))  # guru-wide: no attribution
    with store.reader() as conn:
        got = conn.execute(
            "SELECT id, external_user_id, first_seen FROM session_users ORDER BY id, external_user_id"
        ).fetchall()
    assert [(i, u, s.astimezone(UTC)) for i, u, s in got] == [
        ("a", "alice", at(10)),
        ("b", "alice", at(10)),
        ("b", "bob", at(30)),
        ("c", "bob", at(30)),
    ]
    assert store.summary(G)["users"] == 2
    with pytest.raises(ConfigError, match="external_user_id"):
        store.write_page(G, listing(("a", at(1))), at(1), external_user_id="")


def test_mark_deleted_then_undelete_on_sighting(store: Store) -> None:
    store.write_page(G, listing(("a", at(1)), ("b", at(2)), ("c", at(3))), at(10))
    store.write_page(G, listing(("a", at(1)), ("c", at(3))), at(20))  # a full pass from 15

    unseen = store.unseen_since(G, at(15))
    assert list(unseen["id"]) == ["b"]
    assert "listing_md5" not in unseen.columns
    assert store.mark_deleted(G, list(unseen["id"]), at(21)) == 1
    assert store.mark_deleted(G, ["b", "nope"], at(22)) == 0  # already flagged / unknown
    assert store.mark_deleted(G, [], at(22)) == 0
    assert store.unseen_since(G, at(15)).empty

    table = sessions_table(store)
    assert len(table) == 3  # rows are never dropped
    assert bool(row(table, "b")["deleted"]) and row(table, "b")["deleted_at"] == at(21)
    assert store.summary(G)["sessions"] == 2 and store.summary(G)["deleted"] == 1

    back = store.write_page(G, listing(("b", at(2))), at(30))  # same last_used, seen again
    assert (back.new, back.changed, back.unchanged) == (0, 1, 0)
    assert back.changed_ids == ("b",)
    b = row(sessions_table(store), "b")
    assert not b["deleted"] and pd.isna(b["deleted_at"])
    assert b["first_seen"] == at(10)


# --- runs and sync state ----------------------------------------------------------------


def test_runs_round_trip(tmp_path: Path) -> None:
    clock_values = iter([at(0), at(5), at(10), at(11), at(12), at(13)])
    store = Store(tmp_path / "c.duckdb", clock=lambda: next(clock_values))
    run = store.begin_run(G, "incremental", ["", "user:alice"], None)
    running = store.runs(G)
    assert list(running["outcome"]) == ["running"]  # ours, still alive
    store.end_run(
        run, "ok", requests=12, throttled=1, retries=2, pages=9, sessions_new=40,
        sessions_changed=3, sessions_deleted=1, messages_fetched=0, messages_remaining=7,
    )  # fmt: skip
    second = store.begin_run("other-guru", "full", [""], "kubernetes")
    store.end_run(second, "failed", error="UnexpectedResponseError: HTML instead of JSON")

    runs = store.runs()
    assert list(runs["run_id"]) == [run, second]
    first = runs.iloc[0]
    assert first["listings"] == ["", "user:alice"]
    assert first["started_at"] == at(0) and first["ended_at"] == at(5)
    assert (first["requests"], first["throttled"], first["retries"], first["pages"]) == (
        12,
        1,
        2,
        9,
    )
    assert (first["sessions_new"], first["sessions_changed"], first["sessions_deleted"]) == (
        40,
        3,
        1,
    )
    assert (first["messages_fetched"], first["messages_remaining"]) == (0, 7)
    assert first["pid"] == os.getpid()
    assert runs.iloc[1]["search_query"] == "kubernetes"
    assert runs.iloc[1]["error"].startswith("UnexpectedResponseError")
    assert list(store.runs("other-guru")["run_id"]) == [second]
    assert store.summary(G)["last_run"] == {
        "run_id": run, "mode": "incremental", "outcome": "ok",
        "started_at": at(0), "ended_at": at(5),
    }  # fmt: skip

    with pytest.raises(ConfigError, match="unknown run count"):
        store.end_run(run, "ok", bogus=1)
    with pytest.raises(ConfigError, match="not in cache"):
        store.end_run(999, "ok")
    with pytest.raises(ConfigError, match="listing key"):
        store.begin_run(G, "full", ["users:bob"], None)
    store.close()


def test_a_run_left_running_by_this_process_reads_interrupted(store: Store) -> None:
    # A row 'running' under our PID that no live begin_run owns: e.g. an earlier Store of
    # this kernel crashed between begin_run and end_run and the row was written raw.
    with store.writer() as conn:
        conn.execute(
            "INSERT INTO sync_runs (guru, mode, started_at, outcome, pid, host) "
            "VALUES (?, 'full', ?, 'running', ?, ?)",
            [G, at(0), os.getpid(), os.uname().nodename],
        )
    live = store.begin_run(G, "incremental", [""], None)
    runs = store.runs(G)
    assert list(runs["outcome"]) == ["interrupted", "running"]
    assert runs.iloc[1]["run_id"] == live
    # begin_run persisted the verdict, with an explanation.
    with store.reader() as conn:
        stored = conn.execute("SELECT outcome, error FROM sync_runs ORDER BY run_id").fetchall()
    assert stored[0][0] == "interrupted" and "stopped before recording" in stored[0][1]
    assert stored[1][0] == "running"
    # A Store closed without ending its run (a crashed sync in a notebook kernel): the run is
    # no longer owned by anyone alive in this process.
    path = store.path
    store.close()
    with Store(path) as again:
        assert list(again.runs(G)["outcome"]) == ["interrupted", "interrupted"]


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    """A real second Python process running ``script`` (the Store under test in another PID)."""
    code = textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _wait_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"child said {line!r}, expected {expected!r}; stderr: {err}")


CHILD_RUN = """
import sys
from guru_analytics.store import Store
store = Store(sys.argv[1])
run = store.begin_run("demo-guru", "full", [""], None)
store.release()
print(run, flush=True)
sys.stdin.readline()  # wait for the parent, holding no lock
"""


def test_runs_of_a_live_other_process_stay_running_and_of_a_dead_one_read_interrupted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.duckdb"
    Store(path).close()
    child = _child(CHILD_RUN, str(path))
    try:
        assert child.stdout is not None
        run_id = int(child.stdout.readline())
        store = Store(path)
        runs = store.runs(G)
        assert list(runs["outcome"]) == ["running"]
        assert runs.iloc[0]["pid"] == child.pid
    finally:
        child.kill()
        child.wait()
    assert list(store.runs(G)["outcome"]) == ["interrupted"]
    assert store.summary(G)["last_run"]["outcome"] == "interrupted"
    store.begin_run(G, "incremental", [""], None)
    with store.reader() as conn:
        persisted = conn.execute(
            "SELECT outcome FROM sync_runs WHERE run_id = ?", [run_id]
        ).fetchall()
    assert persisted == [("interrupted",)]
    store.close()


def test_sync_state_round_trip_and_partial_updates(store: Store) -> None:
    assert store.get_state(G, "") is None
    state = store.save_state(
        G, "", pass_mode="full", pass_started_at=at(0), pass_top=at(-1), pass_next_page=4
    )
    assert state == SyncState(G, "", None, None, "full", at(0), at(-1), 4)

    # Only given fields change; None clears a field.
    store.save_state(G, "", watermark=at(-1), completed_at=at(9))
    store.save_state(
        G, "", pass_mode=None, pass_started_at=None, pass_top=None, pass_next_page=None
    )
    assert store.get_state(G, "") == SyncState(G, "", at(-1), at(9), None, None, None, None)

    store.save_state(G, "user:alice", watermark=at(3))
    store.save_state(G, "search:how to", pass_next_page=2)
    store.save_state(G, "user:alice|search:how to", pass_next_page=3)
    assert store.get_state(G, "user:alice|search:how to").pass_next_page == 3
    assert store.get_state(G, "user:alice").watermark == at(3)
    assert store.get_state(G, "search:how to").pass_next_page == 2
    assert store.get_state("other", "") is None
    assert store.get_state(G, "").watermark.tzinfo == UTC

    with pytest.raises(ConfigError, match="listing key"):
        store.save_state(G, "user:", watermark=at(1))
    with pytest.raises(ConfigError, match="naive"):
        store.save_state(G, "", watermark=datetime(2025, 1, 1))
    with pytest.raises(ConfigError, match="pass_next_page"):
        store.save_state(G, "", pass_next_page=0)


# --- messages ---------------------------------------------------------------------------


def messages_frame(*specs: tuple[str, datetime, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [s[0] for s in specs],
            "slug": [f"slug-{s[0]}" for s in specs],
            "parent_slug": [None] + [f"slug-{specs[0][0]}"] * (len(specs) - 1),
            "question": [f"q{s[0]}" for s in specs],
            "user_question": [f"uq{s[0]}" for s in specs],
            "date_created": pd.to_datetime([s[1] for s in specs], utc=True),
            "date_updated": pd.to_datetime([s[1] for s in specs], utc=True),
            "source": [s[2] for s in specs],
            "trust_score": [80 + i for i in range(len(specs))],
            "user_vote": [None] * len(specs),
            "answer": ["**md**"] * len(specs),
            "n_references": [i for i in range(len(specs))],
            "extra": [None] * len(specs),
        }
    )


def test_messages_write_replace_and_pending(store: Store) -> None:
    store.write_page(G, listing(("a", at(10)), ("b", at(30)), ("c", at(20))), at(40))
    pending = store.pending_message_fetches(G)
    assert list(pending["id"]) == ["b", "c", "a"]  # newest last_used first
    assert pending["fetched_last_used"].isna().all()
    assert list(store.pending_message_fetches(G, limit=2)["id"]) == ["b", "c"]
    assert store.count_pending(G) == 3

    stored = store.write_messages(
        G, "b", messages_frame(("1", at(25), "USER"), ("2", at(30), "WIDGET QUESTION")),
        fetched_last_used=at(30), fetched_at=at(41), date_created=at(24),
    )  # fmt: skip
    assert stored == 2
    assert list(store.pending_message_fetches(G)["id"]) == ["c", "a"]
    assert row(sessions_table(store), "b")["date_created"] == at(24)
    with store.reader() as conn:
        got = conn.execute(
            "SELECT id, source, trust_score, n_references, parent_slug FROM messages "
            "WHERE session_id = 'b' ORDER BY id"
        ).fetchall()
    assert got == [("1", "USER", 80, 0, None), ("2", "WIDGET QUESTION", 81, 1, "slug-1")]

    # A follow-up question moves b forward: pending again, and the refetch replaces messages.
    store.write_page(G, listing(("b", at(50))), at(51))
    assert list(store.pending_message_fetches(G)["id"]) == ["b", "c", "a"]
    assert store.pending_message_fetches(G).iloc[0]["fetched_last_used"] == at(30)
    store.write_messages(
        G, "b", messages_frame(("1", at(25), "USER"), ("3", at(50), "API")),
        fetched_last_used=at(50), fetched_at=at(52),
    )  # fmt: skip
    with store.reader() as conn:
        ids = conn.execute("SELECT id FROM messages WHERE session_id = 'b' ORDER BY id").fetchall()
    assert ids == [("1",), ("3",)]
    assert row(sessions_table(store), "b")["date_created"] == at(25)  # first message's
    assert store.count_pending(G) == 2

    # 404: the session is gone upstream: deleted, not pending, stored messages kept.
    store.write_messages(
        G, "c", messages_frame(("9", at(20), "USER")), fetched_last_used=at(20), fetched_at=at(53)
    )
    store.write_messages(
        G, "c", None, fetched_last_used=None, fetched_at=at(60), status="not_found"
    )
    c = row(sessions_table(store), "c")
    assert c["deleted"] and c["deleted_at"] == at(60)
    assert list(store.pending_message_fetches(G)["id"]) == ["a"]
    assert store.summary(G)["messages"] == 3
    with store.reader() as conn:
        fetch = conn.execute(
            "SELECT status, fetched_at FROM message_fetches WHERE session_id = 'c'"
        ).fetchall()
    assert fetch == [("not_found", at(60))]

    with pytest.raises(ConfigError, match="repeat id"):
        store.write_messages(
            G, "a", messages_frame(("1", at(1), "USER"), ("1", at(2), "USER")),
            fetched_last_used=at(10), fetched_at=at(61),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="status"):
        store.write_messages(G, "a", None, fetched_last_used=None, fetched_at=at(1), status="gone")
    assert store.count_pending(G) == 1


# --- schema versions and migrations -----------------------------------------------------


def _v1_cache(path: Path) -> None:
    """A cache exactly as schema version 1 wrote it, with data in every main table."""
    store = Store(path, migrations=MIGRATIONS[:1])
    with store.writer() as conn:
        conn.execute(
            "INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name, "
            "root_question_slug, root_question_link, extra, first_seen, last_seen) VALUES "
            "(?, 'a', ?, 'Demo', 'Old question?', 'old-question', 'https://x/a', NULL, ?, ?)",
            [G, at(1), at(2), at(2)],
        )
        conn.execute("INSERT INTO observations VALUES (?, 'a', ?, ?)", [G, at(1), at(2)])
        conn.execute("INSERT INTO session_users VALUES (?, 'a', 'alice', ?)", [G, at(2)])
        conn.execute(
            "INSERT INTO sync_runs (guru, mode, started_at, outcome) VALUES (?, 'full', ?, 'running')",
            [G, at(0)],
        )
        assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]
    store.close()


def test_v1_cache_is_upgraded_in_place_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    _v1_cache(path)
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION == 5
    with store.reader() as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            ("5",)
        ]
        md5 = conn.execute("SELECT listing_md5 FROM sessions").fetchall()[0][0]
    assert md5 is not None  # backfilled
    assert observations(store) == [("a", at(1), at(2))]
    assert store.summary(G)["users"] == 1
    # A v1 run has no PID: nothing can still own it.
    assert list(store.runs(G)["outcome"]) == ["interrupted"]
    # The backfilled fingerprint matches what a page write computes: re-reading the same
    # listing is 'unchanged' and keeps the values; a newer read moves it forward.
    same = listing(("a", at(1), "Old question?"))
    same["root_question_slug"] = "old-question"
    same["root_question_link"] = "https://x/a"
    assert store.write_page(G, same, at(3)) == PageWrite(0, 0, 1)
    assert store.write_page(G, listing(("a", at(4))), at(5)).changed_ids == ("a",)
    assert [lu for _, lu, _ in observations(store)] == [at(1), at(4)]
    store.close()


def test_injected_future_migration_runs_once_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    with Store(path) as store:
        store.write_page(G, listing(("a", at(1)), ("b", at(2))), at(3))

    def backfill(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute("UPDATE sessions SET note = 'seen ' || id")

    v4 = (SCHEMA_VERSION + 1, "ALTER TABLE sessions ADD COLUMN note VARCHAR")
    v5 = (SCHEMA_VERSION + 2, backfill)
    with Store(path, migrations=[*MIGRATIONS, v4, v5]) as store:
        assert store.schema_version == SCHEMA_VERSION + 2
        with store.reader() as conn:
            notes = conn.execute("SELECT id, note FROM sessions ORDER BY id").fetchall()
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchall()
        assert notes == [("a", "seen a"), ("b", "seen b")]
        assert version == [(str(SCHEMA_VERSION + 2),)]
        assert store.write_page(G, listing(("c", at(5))), at(6)).new == 1
    # Opening again with the same steps does not re-run them (the column exists already).
    with Store(path, migrations=[*MIGRATIONS, v4, v5]) as store:
        assert len(sessions_table(store)) == 3


def test_newer_cache_is_refused_and_failed_upgrade_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    with Store(path, migrations=[*MIGRATIONS, (SCHEMA_VERSION + 1, "SELECT 1")]) as store:
        store.write_page(G, listing(("a", at(1))), at(2))
    with pytest.raises(CacheSchemaError, match="newer guru_analytics.*upgrade the package"):
        Store(path)

    other = tmp_path / "d.duckdb"
    with Store(other) as store:
        store.write_page(G, listing(("a", at(1))), at(2))
    broken = (
        SCHEMA_VERSION + 1,
        "ALTER TABLE sessions ADD COLUMN note VARCHAR; SELECT * FROM no_such_table",
    )
    with pytest.raises(CacheSchemaError, match=f"rolled back to version {SCHEMA_VERSION}"):
        Store(other, migrations=[*MIGRATIONS, broken])
    with Store(other) as store:
        assert "note" not in sessions_table(store).columns
        with store.reader() as conn:
            cols = [r[0] for r in conn.execute("DESCRIBE sessions").fetchall()]
        assert "note" not in cols
        assert list(sessions_table(store)["id"]) == ["a"]
    with pytest.raises(ConfigError, match="strictly increasing"):
        Store(other, migrations=[(2, SCHEMA_V1), (1, SCHEMA_V1)])


# --- paths ------------------------------------------------------------------------------


def test_bad_paths_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="is a directory: pass a file path"):
        Store(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match="cannot create the cache directory"):
        Store(blocker / "sub" / "cache.duckdb")
    with pytest.raises(CacheSchemaError, match="not a DuckDB file"):
        Store(blocker)
    foreign = tmp_path / "foreign.duckdb"
    conn = duckdb.connect(str(foreign))
    conn.execute("CREATE TABLE invoices (n INTEGER)")
    conn.close()
    with pytest.raises(CacheSchemaError, match="DuckDB database but not a guru_analytics cache"):
        Store(foreign)
    with pytest.raises(ConfigError, match="empty"):
        Store("  ")
    assert blocker.read_text() == "not a directory"  # never overwritten


def test_unwritable_location_raises_cache_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        target = Path("/sys/guru-analytics-test.duckdb")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "cache.duckdb"
    with pytest.raises(CacheError, match="cannot open cache .*writable file or pass a different"):
        Store(target)
    assert not target.exists()


def test_directory_is_created_and_default_path_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = tmp_path / "a" / "b" / "cache.duckdb"
    Store(nested).close()
    assert nested.is_file()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "guru-analytics" / "cache.duckdb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "guru-analytics" / "cache.duckdb"
    monkeypatch.setenv("GURU_ANALYTICS_DB", str(tmp_path / "env.duckdb"))
    assert default_cache_path() == tmp_path / "env.duckdb"
    with Store() as store:
        assert store.path == str(tmp_path / "env.duckdb")
        store.write_page(G, listing(("a", at(1))), at(2))
    assert (tmp_path / "env.duckdb").is_file()


# --- failures roll back -----------------------------------------------------------------


def test_bad_row_type_is_rejected_and_nothing_is_stored(store: Store) -> None:
    store.write_page(G, listing(("a", at(1)), ("b", at(2))), at(3))
    before = sessions_table(store)
    bad = listing(("a", at(9)), ("c", at(9)))
    bad["id"] = pd.Series(["a", 7], dtype=object)
    with pytest.raises(ConfigError, match="column 'id' has integer|mixed"):
        store.write_page(G, bad, at(10))
    bad = listing(("a", at(9)), ("c", at(9)))
    bad["last_used"] = pd.Series([at(9), "yesterday"], dtype=object)
    with pytest.raises(ConfigError, match="last_used"):
        store.write_page(G, bad, at(10))
    pd.testing.assert_frame_equal(sessions_table(store), before)


def test_failure_mid_write_rolls_back_the_whole_page(store: Store) -> None:
    store.write_page(G, listing(("a", at(1)), ("b", at(2))), at(3), external_user_id="alice")
    # Make the observations insert (after the sessions upsert) fail for a value before 2020:
    # a real DuckDB constraint, so the failure happens inside the page's transaction.
    with store.writer(keep_open=True) as conn:
        conn.execute("ALTER TABLE observations RENAME TO observations_ok")
        conn.execute(
            "CREATE TABLE observations (guru VARCHAR NOT NULL, id VARCHAR NOT NULL, "
            "last_used TIMESTAMPTZ NOT NULL CHECK (last_used > TIMESTAMPTZ '2020-01-01 00:00:00+00'), "
            "observed_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (guru, id, last_used))"
        )
        conn.execute("INSERT INTO observations SELECT * FROM observations_ok")
    before_sessions = sessions_table(store)
    before_obs = observations(store)
    page = listing(("a", at(50)), ("new", datetime(2019, 5, 1, tzinfo=UTC)))
    with pytest.raises(CacheError, match="rolled back, nothing of it was stored") as info:
        store.write_page(G, page, at(60), external_user_id="bob")
    assert "CHECK constraint" in str(info.value) and "\n" not in str(info.value)
    pd.testing.assert_frame_equal(sessions_table(store), before_sessions)
    assert observations(store) == before_obs
    with store.reader() as conn:
        assert conn.execute("SELECT count(*) FROM session_users").fetchall() == [(2,)]
    # The connection is still usable and the next good page goes through.
    assert store.write_page(G, listing(("a", at(50))), at(61)).changed_ids == ("a",)


def test_invalid_json_extra_fails_inside_the_transaction(store: Store) -> None:
    store.write_page(G, listing(("a", at(1))), at(2))
    with pytest.raises(CacheError, match="rolled back"):
        store.write_page(G, listing(("b", at(3), "Q?", "{not json")), at(4))
    assert list(sessions_table(store)["id"]) == ["a"]


CHILD_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
import pandas as pd
from guru_analytics.store import Store
store = Store(sys.argv[1])
t0 = datetime(2025, 1, 1, tzinfo=UTC)
page = 0
while True:
    ids = [f"p{page}-{i}" for i in range(30)]
    frame = pd.DataFrame({
        "id": ids,
        "last_used": [t0 + timedelta(seconds=page * 30 + i) for i in range(30)],
        "guru_type_name": "Demo", "root_question_name": "q", "root_question_slug": "q",
        "root_question_link": "l", "extra": None,
    })
    store.write_page("demo-guru", frame, t0 + timedelta(hours=1), external_user_id="u")
    page += 1
    if page == 3:
        print("writing", flush=True)
"""


def test_killed_writer_leaves_whole_pages_only(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    Store(path).close()
    child = _child(CHILD_WRITER, str(path))
    try:
        _wait_line(child, "writing")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with Store(path) as store, store.reader() as conn:
        n_sessions, n_obs, n_users = conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM observations), "
            "(SELECT count(*) FROM session_users)"
        ).fetchall()[0]
        assert n_sessions >= 90
        assert n_sessions % 30 == 0  # only whole pages
        assert n_obs == n_users == n_sessions
        pages = conn.execute(
            "SELECT count(DISTINCT split_part(id, '-', 1)) FROM sessions"
        ).fetchall()[0][0]
        assert pages * 30 == n_sessions


# --- locking across processes -----------------------------------------------------------

# A second process driven over stdin, one command a line, so one child serves a whole test.
AGENT = """
import sys, time
from guru_analytics.errors import GuruAnalyticsError
from guru_analytics.store import Store
path = sys.argv[1]
store = None
for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "hold":  # take the write lock; with a duration, give it back after it
            store = store or Store(path)
            store.connection()
            print("holding", flush=True)
            if args:
                time.sleep(float(args[0]))
                store.release()
        elif cmd == "release":
            store.release()
            print("released", flush=True)
        elif cmd == "read":
            reader = Store(path, lock_timeout=float(args[0]))
            print(reader.summary("demo-guru")["sessions"], flush=True)
            reader.close()
    except GuruAnalyticsError as exc:
        print(f"error: {exc}", flush=True)
"""


def _tell(proc: subprocess.Popen[str], command: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_lock_errors_name_the_holder_and_release_frees_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    store = Store(path, lock_timeout=0.3)
    store.write_page(G, listing(("a", at(1))), at(2))  # this process now holds the file
    agent = _child(AGENT, str(path))
    try:
        answer = _tell(agent, "read 0.3")
        # a writer holds the file, so its sync_runs cannot be read to say whether it syncs
        assert answer.startswith(
            f"error: cache {path} is held by PID {os.getpid()} (a sync or another program "
            "writing it) "
        )
        assert answer.endswith("wait for it to finish or pass a different --db")
        store.release()
        assert _tell(agent, "read 0.3") == "1"

        assert _tell(agent, "hold") == "holding"
        held = rf"held by PID {agent.pid} \(a sync or another program writing it\)"
        with pytest.raises(CacheLockedError, match=held + r" \(waited 0.3 s\)"):
            store.summary(G)
        with pytest.raises(CacheLockedError, match=rf"held by PID {agent.pid}"):
            store.write_page(G, listing(("b", at(3))), at(4))
        with pytest.raises(CacheLockedError, match=rf"held by PID {agent.pid}"):
            Store(path, lock_timeout=0.3)
        assert _tell(agent, "release") == "released"
        assert store.summary(G)["sessions"] == 1
        assert store.write_page(G, listing(("b", at(3))), at(4)).new == 1
    finally:
        agent.kill()
        agent.wait()
    store.close()


def test_reader_and_writer_wait_for_a_lock_released_in_time(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    store = Store(path, lock_timeout=30.0)
    store.write_page(G, listing(("a", at(1))), at(2))
    store.release()
    agent = _child(AGENT, str(path))
    try:
        assert _tell(agent, "hold 1.0") == "holding"
        with store.reader() as conn:  # blocks until the agent releases, then reads
            assert conn.execute("SELECT count(*) FROM sessions").fetchall() == [(1,)]
        assert _tell(agent, "hold 1.0") == "holding"
        assert store.write_page(G, listing(("b", at(3))), at(4)).new == 1  # waits, then writes
    finally:
        agent.kill()
        agent.wait()
    assert store.summary(G)["sessions"] == 2
    store.close()


def test_two_stores_of_one_process_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    first = Store(path)
    first.write_page(G, listing(("a", at(1))), at(2))  # first now holds the file read-write
    second = Store(path, lock_timeout=0.5)
    assert second.summary(G)["sessions"] == 1
    assert second.write_page(G, listing(("b", at(3))), at(4)).new == 1
    assert first.summary(G)["sessions"] == 2
    first.close()
    second.close()


def test_writing_inside_an_own_reader_block_is_refused(store: Store) -> None:
    store.write_page(G, listing(("a", at(1))), at(2))
    store.release()
    with store.reader() as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchall() == [(1,)]
        with pytest.raises(CacheError, match="finish the with-block"):
            store.write_page(G, listing(("b", at(3))), at(4))
    assert store.write_page(G, listing(("b", at(3))), at(4)).new == 1


# --- connections ------------------------------------------------------------------------


def test_every_connection_is_utc_and_comes_from_the_injected_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # DuckDB would default to the machine zone
    opened: list[tuple[str, bool]] = []

    def connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
        opened.append((Path(path).name, read_only))
        return duckdb.connect(path, read_only=read_only)

    store = Store(tmp_path / "c.duckdb", connect=connect)
    assert opened == [("c.duckdb", False)]  # created (and released) at construction
    store.write_page(G, listing(("a", at(1))), at(2))
    store.release()
    with store.reader() as conn:
        assert conn.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
        value = conn.execute("SELECT last_used FROM sessions").fetchall()[0][0]
    assert value.utcoffset() == timedelta(0) and value.hour == 12
    assert opened == [("c.duckdb", False), ("c.duckdb", False), ("c.duckdb", True)]
    Store(tmp_path / "c.duckdb", connect=connect).close()
    assert opened[-1] == ("c.duckdb", True)  # an existing current cache is only read
    store.close()
    with pytest.raises(CacheError, match="closed"):
        store.summary(G)


def test_memory_store_keeps_its_data_for_its_life() -> None:
    store = Store(":memory:")
    store.write_page(G, listing(("a", at(1)), ("b", at(2))), at(3))
    store.release()  # no-op: closing would lose the data
    assert store.summary(G)["sessions"] == 2
    with store.reader() as conn:
        assert conn.execute("SELECT current_setting('TimeZone')").fetchall() == [("UTC",)]
    other = Store(":memory:")  # a separate database
    assert other.gurus() == []
    assert store.gurus() == [G]
    assert repr(store) == "Store(':memory:', open)"
    store.close()
    other.close()


def test_summary_and_gurus(store: Store) -> None:
    store.write_page(G, listing(("a", at(1)), ("b", at(5))), at(6), external_user_id="u1")
    store.write_page("zeta", listing(("z", at(2))), at(6))
    store.save_state("alpha", "", watermark=at(0))
    store.mark_deleted(G, ["b"], at(7))
    assert store.gurus() == ["alpha", G, "zeta"]
    assert store.summary(G) == {
        "guru": G,
        "sessions": 1,
        "deleted": 1,
        "users": 1,
        "messages": 0,
        "pending_messages": 1,
        "first_last_used": at(1),
        "last_last_used": at(1),
        "last_run": None,
    }
    empty = store.summary("nobody")
    assert (empty["sessions"], empty["first_last_used"], empty["last_run"]) == (0, None, None)


# --- bulk load --------------------------------------------------------------------------


def _random_pages(seed: int, n_ids: int, n_pages: int) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n_pages):
        ids = rng.choice(n_ids, 30)
        rows = [(f"s{i}", at(int(rng.integers(0, 500))), f"Q{i}?") for i in ids]
        pages.append(listing(*rows))
    return pages


def test_load_frame_matches_page_writes(tmp_path: Path) -> None:
    pages = _random_pages(seed=3, n_ids=200, n_pages=12)
    seen = at(1000)
    by_pages = Store(tmp_path / "pages.duckdb")
    totals = np.zeros(3, dtype=int)
    for page in pages:
        result = by_pages.write_page(G, page, seen, external_user_id="u")
        totals += (result.new, result.changed, result.unchanged)
    by_load = Store(tmp_path / "load.duckdb")
    everything = pd.concat(pages, ignore_index=True)
    users = pd.DataFrame({"id": everything["id"], "external_user_id": "u"})
    loaded = by_load.load_frame(G, everything, users_df=users, seen_at=seen)
    distinct = everything["id"].nunique()
    assert (loaded.sessions_new, loaded.sessions_changed, loaded.sessions_unchanged) == (
        distinct,
        0,
        0,
    )
    assert totals[0] == distinct  # every id was new exactly once across the pages
    assert loaded.observations_added == len(everything[["id", "last_used"]].drop_duplicates())
    assert loaded.users_added == distinct

    queries = {
        "sessions": "SELECT * FROM sessions ORDER BY id",
        "observations": "SELECT * FROM observations ORDER BY id, last_used",
        "session_users": "SELECT * FROM session_users ORDER BY id",
    }
    for name, sql in queries.items():
        with by_pages.reader() as a, by_load.reader() as b:
            left, right = a.execute(sql).df(), b.execute(sql).df()
        assert len(left) > 0
        pd.testing.assert_frame_equal(left, right, obj=name)
    by_pages.close()
    by_load.close()


def test_load_frame_with_events_users_and_dates(store: Store) -> None:
    sessions = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "last_used": pd.to_datetime([at(10), at(20), at(30)], utc=True),
            "date_created": pd.to_datetime([at(0), at(5), None], utc=True),
            "root_question_name": ["A?", "B?", "C?"],
        }
    )
    events = pd.DataFrame(
        {"id": ["a", "a", "b", "b"], "ts": pd.to_datetime([at(0), at(10), at(5), at(7)], utc=True)}
    )
    users = pd.DataFrame({"id": ["a", "b", "c"], "external_user_id": ["u1", None, ""]})
    result = store.load_frame(G, sessions, events, users, seen_at=at(40))
    assert (result.sessions_new, result.observations_added, result.users_added) == (3, 6, 1)
    table = sessions_table(store)
    assert list(table["date_created"].isna()) == [False, False, True]
    assert row(table, "b")["date_created"] == at(5)
    assert [(i, lu) for i, lu, _ in observations(store)] == [
        ("a", at(0)), ("a", at(10)), ("b", at(5)), ("b", at(7)), ("b", at(20)), ("c", at(30)),
    ]  # fmt: skip

    again = store.load_frame(G, sessions.assign(last_used=[at(10), at(25), at(30)]), seen_at=at(50))
    assert (again.sessions_new, again.sessions_changed, again.sessions_unchanged) == (0, 1, 2)
    assert again.observations_added == 1
    assert row(sessions_table(store), "b")["last_seen"] == at(50)
    with pytest.raises(ConfigError, match="time column"):
        store.load_frame(G, sessions, pd.DataFrame({"id": ["a"]}))


def test_every_value_of_a_repeated_id_is_observed_in_both_paths(tmp_path: Path) -> None:
    # The winning row of 'a' equals the stored value; its older repeat is still history.
    for write in ("page", "load"):
        with Store(tmp_path / f"{write}.duckdb") as store:
            store.write_page(G, listing(("a", at(9))), at(10))
            again = listing(("a", at(4)), ("a", at(9)))
            if write == "page":
                assert store.write_page(G, again, at(20)) == PageWrite(0, 0, 1)
            else:
                assert store.load_frame(G, again, seen_at=at(20)).observations_added == 1
            assert observations(store) == [("a", at(4), at(20)), ("a", at(9), at(10))]


# --- page writes: index lookups, fingerprints, agreement with the bulk path -------------------

FINGERPRINT_CASES = [
    ("Demo", "How do I?", "how-do-i", "https://gurubase.io/g/demo/a", None),
    (None, "", "é 🎉", "a|b:c", '{"b": 1,   "a":2}'),
    ("tab\there", "nl\nx\x00zero", None, "", "[]"),
    ("ab", "c", None, None, None),
    ("a", "bc", None, None, None),  # no field runs into the next
    ("", None, None, None, None),
    (None, "", None, None, None),  # NULL stays apart from ''
    ("S3:abc", "N", "|", ":", '  {"s":  "\\u00e9"}  '),  # JSON text is kept verbatim
]


def test_listing_fingerprint_is_the_same_in_python_and_sql() -> None:
    frame = pd.DataFrame(FINGERPRINT_CASES, columns=list(LISTING_COLUMNS[2:])).astype(object)
    frame["n"] = range(len(frame))
    con = duckdb.connect()
    con.register("cases", frame)
    got = con.execute(
        f"SELECT {LISTING_FINGERPRINT_SQL} FROM (SELECT * REPLACE (extra::JSON AS extra) "
        "FROM cases) ORDER BY n"
    ).fetchall()
    con.close()
    expected = [listing_fingerprint(case) for case in FINGERPRINT_CASES]
    assert [v for (v,) in got] == expected
    assert len(set(expected)) == len(FINGERPRINT_CASES)
    assert all(0 <= v < 2**64 for v in expected)


def test_page_lookups_use_the_id_indexes_in_a_shared_cache(store: Store) -> None:
    # DuckDB 2.0.1 never index-scans the (guru, id) primary key, and a guru condition next to
    # the id one makes it scan the whole table: with two gurus in the file (so statistics
    # cannot drop the guru condition), the page read must still be two index scans.
    others = pd.DataFrame(
        {
            "id": [f"o{i}" for i in range(3000)],
            "last_used": pd.to_datetime([at(1)] * 3000, utc=True),
        }
    )
    store.load_frame("other", others, seen_at=at(2))
    store.write_page(G, listing(("a", at(1)), ("o7", at(2))), at(3), external_user_id="alice")
    touch = _PAGE_TOUCH_SQL.format(forward="", undelete="", key="id", key_type="VARCHAR")
    with store.writer() as conn:
        read_plan = conn.execute(
            "EXPLAIN ANALYZE " + _PAGE_READ_SQL + _PAGE_READ_USERS_SQL, {"ids": ["a", "o7", "zz"]}
        ).fetchall()[0][1]
        conn.execute("BEGIN TRANSACTION")
        touch_plan = conn.execute(
            "EXPLAIN ANALYZE " + touch, {"seen": at(9), "key": ["a"], "last_used": [at(1)]}
        ).fetchall()[0][1]
        conn.execute("ROLLBACK")
    assert read_plan.count("Index Scan") == 2 and "Sequential Scan" not in read_plan
    assert touch_plan.count("Index Scan") == 1 and "Sequential Scan" not in touch_plan
    # o7 of the other guru is a different session: G's o7 is new, the other one untouched
    table = sessions_table(store, "other")
    assert row(table, "o7")["last_seen"] == at(2)
    assert list(sessions_table(store)["id"]) == ["a", "o7"]


def _messy_history(seed: int) -> list[tuple[str, pd.DataFrame, datetime, str | None]]:
    """Pages as a sync meets them over time: ids repeating within a page, values moving
    forward and (stale reads) back, titles edited, JSON extras, two gurus sharing ids."""
    rng = np.random.default_rng(seed)
    steps = []
    for step in range(36):
        rows = []
        for i in rng.choice(40, 30):
            extra = [None, '{"pinned": true}', '{"pinned": false}'][int(rng.integers(0, 3))]
            title = f"Question {i} v{int(rng.integers(0, 2))}?"
            rows.append((f"s{i}", at(int(rng.integers(0, 200))), title, extra))
        guru = "zeta" if step % 5 == 4 else G
        user = f"u{step % 4}" if step % 3 == 0 else None
        steps.append((guru, listing(*rows), at(1000 + step), user))
    return steps


def test_page_writes_and_bulk_loads_agree_on_a_messy_history(tmp_path: Path) -> None:
    by_page = Store(tmp_path / "pages.duckdb")
    by_load = Store(tmp_path / "load.duckdb")
    totals = np.zeros(3, dtype=int)
    for step, (guru, page, seen, user) in enumerate(_messy_history(5)):
        paged = by_page.write_page(guru, page, seen, external_user_id=user)
        users = None if user is None else pd.DataFrame({"id": page["id"], "external_user_id": user})
        loaded = by_load.load_frame(guru, page, users_df=users, seen_at=seen)
        counts = (paged.new, paged.changed, paged.unchanged)
        assert counts == (loaded.sessions_new, loaded.sessions_changed, loaded.sessions_unchanged)
        totals += counts
        if step % 7 == 6:  # some sessions disappear and come back later
            for target in (by_page, by_load):
                target.mark_deleted(guru, ["s1", "s2", "s3", "s4"], seen)
    assert totals[0] > 40 and totals[1] > 20 and totals[2] > 100  # every kind happened
    queries = {
        "sessions": "SELECT *, listing_md5 FROM sessions ORDER BY guru, id",
        "observations": "SELECT * FROM observations ORDER BY guru, id, last_used",
        "session_users": "SELECT * FROM session_users ORDER BY guru, id, external_user_id",
    }
    for name, sql in queries.items():
        with by_page.reader() as a, by_load.reader() as b:
            left, right = a.execute(sql).df(), b.execute(sql).df()
        assert len(left) > 0
        pd.testing.assert_frame_equal(left, right, obj=name)
    with by_page.reader() as conn:
        stale = conn.execute(
            "SELECT count(*) FROM observations o JOIN sessions s USING (guru, id) "
            "WHERE o.last_used < s.last_used"
        ).fetchall()[0][0]
        edited = conn.execute(
            "SELECT count(*) FROM sessions WHERE root_question_name LIKE '%v1?'"
        ).fetchall()[0][0]
    assert stale > 0 and edited > 0
    by_page.close()
    by_load.close()


def test_page_write_copes_with_observations_a_bulk_load_put_ahead(store: Store) -> None:
    # Events past a session's last_used, and for a session not loaded at all: the page's
    # plain observations insert meets them and the page is written again, checked.
    sessions = pd.DataFrame({"id": ["a"], "last_used": pd.to_datetime([at(10)], utc=True)})
    events = pd.DataFrame(
        {"id": ["a", "a", "b"], "ts": pd.to_datetime([at(10), at(20), at(5)], utc=True)}
    )
    store.load_frame(G, sessions, events, seen_at=at(30))
    result = store.write_page(
        G, listing(("a", at(20)), ("b", at(5)), ("c", at(7))), at(40), external_user_id="u"
    )
    assert result == PageWrite(2, 1, 0, ("c", "b"), ("a",))
    assert observations(store) == [
        ("a", at(10), at(30)),
        ("a", at(20), at(30)),  # kept as the load observed it
        ("b", at(5), at(30)),
        ("c", at(7), at(40)),
    ]
    table = sessions_table(store)
    assert list(table["id"]) == ["a", "b", "c"] and row(table, "a")["last_used"] == at(20)
    assert store.summary(G)["users"] == 1
    with store.reader() as conn:
        assert conn.execute("SELECT count(*) FROM session_users").fetchall() == [(3,)]


def test_schema_3_indexes_and_refingerprints_a_schema_2_cache(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    with Store(path, migrations=MIGRATIONS[:2]) as old:
        old.write_page(G, listing(("a", at(1), "Q?", '{"x": 1}'), ("b", at(2))), at(3))
    with Store(path) as store:
        with store.reader() as conn:
            indexes = conn.execute(
                "SELECT table_name, expressions FROM duckdb_indexes() ORDER BY table_name"
            ).fetchall()
            stored = conn.execute(
                "SELECT guru_type_name, root_question_name, root_question_slug, "
                "root_question_link, extra::VARCHAR, listing_md5 FROM sessions ORDER BY id"
            ).fetchall()
        assert indexes == [("session_users", "[id]"), ("sessions", "[id]")]
        assert [r[5] for r in stored] == [listing_fingerprint(r[:5]) for r in stored]
        again = listing(("a", at(1), "Q?", '{"x": 1}'), ("b", at(2)))
        assert store.write_page(G, again, at(4)) == PageWrite(0, 0, 2)


# --- Get Session answers in batches -------------------------------------------------------------


def _fetches(*rows: tuple[str, str, datetime | None, datetime | None]) -> pd.DataFrame:
    """(session_id, status, fetched_last_used, date_created) rows, all fetched at at(100)."""
    return pd.DataFrame(
        {
            "session_id": [r[0] for r in rows],
            "status": [r[1] for r in rows],
            "fetched_last_used": pd.to_datetime([r[2] for r in rows], utc=True),
            "fetched_at": pd.to_datetime([at(100)] * len(rows), utc=True),
            "date_created": pd.to_datetime([r[3] for r in rows], utc=True),
        }
    )


def _batch_messages(**by_session: pd.DataFrame) -> pd.DataFrame:
    frames = [frame.assign(session_id=sid) for sid, frame in by_session.items()]
    return pd.concat(frames, ignore_index=True) if frames else _no_messages().assign(session_id="")


def _no_messages() -> pd.DataFrame:
    return messages_frame(("0", at(0), "USER")).iloc[:0]


def _message_tables(store: Store) -> dict[str, pd.DataFrame]:
    with store.reader() as conn:
        return {
            "messages": conn.execute("SELECT * FROM messages ORDER BY session_id, id").df(),
            "message_fetches": conn.execute(
                "SELECT * FROM message_fetches ORDER BY session_id"
            ).df(),
            "sessions": conn.execute(
                "SELECT id, deleted, deleted_at, date_created FROM sessions ORDER BY id"
            ).df(),
        }


def test_write_conversations_matches_one_write_messages_per_session(tmp_path: Path) -> None:
    page = listing(("a", at(10)), ("b", at(20)), ("c", at(30)), ("d", at(40)))
    a_msgs = messages_frame(("1", at(5), "USER"), ("2", at(9), "API"))
    c_msgs = messages_frame(("1", at(25), "SLACK"))
    one, many = Store(tmp_path / "one.duckdb"), Store(tmp_path / "many.duckdb")
    for store in (one, many):
        store.write_page(G, page, at(50))
        store.write_messages(  # stored earlier: replaced below (a), kept on a 404 (d)
            G, "a", messages_frame(("9", at(1), "USER")), fetched_last_used=at(1), fetched_at=at(2)
        )
        store.write_messages(
            G,
            "d",
            messages_frame(("7", at(33), "USER")),
            fetched_last_used=at(33),
            fetched_at=at(2),
        )
    stored = 0
    stored += one.write_messages(G, "a", a_msgs, fetched_last_used=at(10), fetched_at=at(100))
    stored += one.write_messages(
        G, "b", _no_messages(), fetched_last_used=at(20), fetched_at=at(100)
    )
    stored += one.write_messages(
        G, "c", c_msgs, fetched_last_used=at(30), fetched_at=at(100), date_created=at(27)
    )
    stored += one.write_messages(
        G, "d", None, fetched_last_used=at(40), fetched_at=at(100), status="not_found"
    )
    fetches = _fetches(
        ("a", "ok", at(10), None),
        ("b", "ok", at(20), None),
        ("c", "ok", at(30), at(27)),
        ("d", "not_found", at(40), None),
    )
    assert many.write_conversations(G, fetches, _batch_messages(a=a_msgs, c=c_msgs)) == stored == 3
    left, right = _message_tables(one), _message_tables(many)
    for name in left:
        pd.testing.assert_frame_equal(left[name], right[name], obj=name)
    sessions = right["sessions"].set_index("id")
    assert sessions.loc["a", "date_created"] == at(5)  # first message's
    assert sessions.loc["c", "date_created"] == at(27)  # given wins, even after a message
    assert pd.isna(sessions.loc["b", "date_created"])  # no messages, none given
    assert bool(sessions.loc["d", "deleted"]) and sessions.loc["d", "deleted_at"] == at(100)
    assert sorted(right["messages"]["session_id"] + "/" + right["messages"]["id"]) == [
        "a/1", "a/2", "c/1", "d/7",
    ]  # fmt: skip
    assert list(many.pending_message_fetches(G)["id"]) == []
    one.close()
    many.close()


def test_write_conversations_refuses_bad_batches_and_rolls_back_whole(store: Store) -> None:
    store.write_page(G, listing(("a", at(10)), ("b", at(20))), at(30))
    before = _message_tables(store)
    a_msgs = messages_frame(("1", at(5), "USER"))
    cases = [
        (_fetches(("a", "ok", at(10), None), ("a", "ok", at(10), None)), a_msgs, "repeat session"),
        (_fetches(("a", "ok", at(10), None)), None, "messages is None"),
        (_fetches(("a", "gone", at(10), None)), None, "fetch status gone"),
        (_fetches(("a", "not_found", at(10), None)), _batch_messages(a=a_msgs), "not_found"),
        (_fetches(("b", "ok", at(20), None)), _batch_messages(a=a_msgs), "no fetches row"),
        (
            _fetches(("a", "ok", at(10), None)),
            _batch_messages(a=messages_frame(("1", at(1), "USER"), ("1", at(2), "USER"))),
            "repeat id",
        ),
        (_fetches(("", "ok", at(10), None)), _batch_messages(), "empty id"),
    ]
    for fetches, msgs, error in cases:
        with pytest.raises(ConfigError, match=error):
            store.write_conversations(G, fetches, msgs)
    bad = messages_frame(("2", at(6), "USER"))
    bad["extra"] = ["{not json"]
    with pytest.raises(CacheError, match="rolled back"):
        store.write_conversations(
            G,
            _fetches(("a", "ok", at(10), None), ("b", "not_found", at(20), None)),
            _batch_messages(a=pd.concat([a_msgs, bad], ignore_index=True)),
        )
    after = _message_tables(store)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name], obj=name)
    assert store.write_conversations(G, _fetches(), None) == 0


# --- the sync's messages phase, as the store sees it --------------------------------------------


class _BatchRecorder(Store):
    """A real Store that records the size of every write_conversations call (a spy: the
    writes themselves go through unchanged)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def write_conversations(
        self, guru: str, fetches: pd.DataFrame, messages: pd.DataFrame | None
    ) -> int:
        self.batches.append(len(fetches))
        return super().write_conversations(guru, fetches, messages)


def test_sync_writes_answers_in_batches(tmp_path: Path) -> None:
    with demo_server(120, users=3) as srv:
        store = _BatchRecorder(tmp_path / "c.duckdb")
        summary = run(srv, store, messages=True)
        assert store.batches == [50, 50, 20]
        assert summary.messages_fetched == 120 and summary.messages_remaining == 0
        slug = srv.guru_slug
        with store.reader() as conn:
            n_messages, undated = conn.execute(
                "SELECT (SELECT count(*) FROM messages WHERE guru = ?), "
                "(SELECT count(*) FROM sessions WHERE guru = ? AND date_created IS NULL)",
                [slug, slug],
            ).fetchall()[0]
        assert n_messages == int(srv.truth(slug)["n_messages"].sum()) and undated == 0
        store.close()


class _FakeTime:
    """Injected monotonic clock + sleep (rate-limit waits take no real time); at each wait it
    records whether the cache file was released and every fetched answer already stored."""

    def __init__(self, srv: LocalGurubase, store: Store) -> None:
        self.now = 1000.0
        self.srv, self.store = srv, store
        self.waits: list[tuple[float, bool, bool]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        released = "released" in repr(self.store)
        with self.store.reader() as conn:
            stored = conn.execute("SELECT count(*) FROM message_fetches").fetchall()[0][0]
        self.waits.append((seconds, released, stored == get_requests(self.srv)))
        self.now += seconds


def test_sync_writes_buffered_answers_before_a_long_wait(tmp_path: Path) -> None:
    with demo_server(15, users=2) as srv:
        store = _BatchRecorder(tmp_path / "c.duckdb")
        run(srv, store)
        fake = _FakeTime(srv, store)
        client = client_for(
            srv, rate_limit=10, rate_window=60.0, monotonic=fake.monotonic, sleep=fake.sleep
        )
        run(srv, store, client=client, messages=True)  # 1 listing request + 15 Get Session
        # 10 requests go at once (no time passes); the 11th waits for the window, and before
        # that the 9 answers fetched so far are written and the file released
        assert fake.waits == [(60.0, True, True)]
        assert store.batches == [9, 6]
        client.close()
        store.close()


class _InterruptingSession(requests.Session):
    """The client's HTTP seam: a real session that raises KeyboardInterrupt (a Ctrl-C) just
    before the n-th Get Session request leaves."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if "/conversation/" in str(url):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt
        return super().request(method, url, *args, **kwargs)


def test_an_interrupted_messages_phase_keeps_the_answers_it_fetched(tmp_path: Path) -> None:
    with demo_server(40, users=2) as srv:
        store = _BatchRecorder(tmp_path / "c.duckdb")
        run(srv, store)
        client = client_for(srv, session=_InterruptingSession(23))
        with pytest.raises(KeyboardInterrupt):
            run(srv, store, client=client, messages=True)
        assert store.batches == [22]  # written on the way out, not lost with the buffer
        assert store.count_pending(srv.guru_slug) == 40 - 22
        assert list(store.runs(srv.guru_slug)["outcome"]) == ["ok", "interrupted"]
        client.close()
        store.close()
