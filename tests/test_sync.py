"""sync(): real HTTP to LocalGurubase on loopback, real DuckDB files; cache == server truth.

Request budgets are read from the server's request log, never from the client's own count.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sync_fixtures import (
    assert_exact,
    at_request,
    attribution,
    cache,
    client_for,
    demo_server,
    diff,
    full_budget,
    get_requests,
    incremental_budget,
    list_requests,
    live,
    new_store,
    pages_for,
    run,
    top_ids,
    truth,
)

import guru_analytics.sync as sync_module
from guru_analytics.errors import ConfigError
from guru_analytics.server import LocalGurubase
from guru_analytics.sync import listings_for, read_users_file


def _fetched_ids(srv: LocalGurubase) -> list[str]:
    return [
        r.path.split("/sessions/")[1].split("/")[0] for r in srv.log if "/conversation/" in r.path
    ]


# --- budgets without drift -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 30, 31, 61])
def test_full_sync_without_drift_is_exact_within_budget(tmp_path: Path, n: int) -> None:
    with demo_server(n) as srv:
        store = new_store(tmp_path)
        summary = run(srv, store)
        assert list_requests(srv) == full_budget(n)  # 1, 1, 3, 4
        assert summary.requests == full_budget(n) and summary.mode == "full"
        assert summary.sessions_new == n and summary.sessions_changed == 0
        assert_exact(store, srv, srv.guru_slug)
        state = store.get_state(srv.guru_slug, "")
        assert state is not None and state.pass_next_page is None
        assert state.watermark == max(truth(srv, srv.guru_slug).values())
        runs = store.runs(srv.guru_slug)
        assert list(runs["outcome"]) == ["ok"]
        assert int(runs["requests"].iloc[0]) == summary.requests
        assert int(runs["sessions_new"].iloc[0]) == n


def test_empty_guru_costs_one_request_and_then_one_per_sync(tmp_path: Path) -> None:
    with demo_server(0) as srv:
        store = new_store(tmp_path)
        run(srv, store)
        run(srv, store)
        assert list_requests(srv) == 2
        assert live(store, srv.guru_slug) == {}


@pytest.mark.parametrize("k", [0, 10, 100, 29, 30])
def test_incremental_after_k_new_sessions(tmp_path: Path, k: int) -> None:
    with demo_server(61) as srv:
        store = new_store(tmp_path)
        run(srv, store)
        srv.create(srv.guru_slug, k)
        srv.clear_log()
        summary = run(srv, store)
        # k=0 -> 1, 10 -> 1, 100 -> 4+1, 29 -> 2+1, 30 -> 2+1
        assert list_requests(srv) == incremental_budget(k)
        assert summary.mode == "incremental" and summary.sessions_new == k
        assert_exact(store, srv, srv.guru_slug)


def test_incremental_after_touches_counts_changes(tmp_path: Path) -> None:
    with demo_server(61) as srv:
        store = new_store(tmp_path)
        run(srv, store)
        slug = srv.guru_slug
        srv.touch(slug, top_ids(srv, slug, 40, 52))  # 12 sessions get follow-ups
        srv.clear_log()
        summary = run(srv, store)
        assert list_requests(srv) == incremental_budget(12) == 1
        assert summary.sessions_changed == 12 and summary.sessions_new == 0
        assert_exact(store, srv, slug)


# --- drift while paging ---------------------------------------------------------------------


def _touch_read(srv: LocalGurubase) -> None:
    s = srv.guru_slug
    srv.touch(s, [top_ids(srv, s, i, i + 1)[0] for i in (5, 40, 80)])


def _touch_unread(srv: LocalGurubase) -> None:
    s = srv.guru_slug
    srv.touch(s, [top_ids(srv, s, i, i + 1)[0] for i in (100, 125, 140)])


def _create(srv: LocalGurubase) -> None:
    srv.create(srv.guru_slug, 5)


def _delete_unread(srv: LocalGurubase) -> None:
    s = srv.guru_slug
    srv.delete(s, [top_ids(srv, s, i, i + 1)[0] for i in (100, 120, 135)])


DRIFTS = {
    "touch-read": _touch_read,
    "touch-unread": _touch_unread,
    "create": _create,
    "delete-unread": _delete_unread,
}


@pytest.mark.parametrize("name", sorted(DRIFTS))
@pytest.mark.parametrize("existing", [False, True], ids=["first", "resync"])
def test_full_sync_with_drift_is_exact(tmp_path: Path, name: str, existing: bool) -> None:
    with demo_server(150) as srv:
        store = new_store(tmp_path)
        if existing:
            run(srv, store)
        at_request(srv, 3, DRIFTS[name])  # pages 1-2 are read, then the list moves
        at_request(srv, 4, DRIFTS[name])  # and again after page 3
        summary = run(srv, store, full=True)
        assert_exact(store, srv, srv.guru_slug)
        assert summary.top_ups >= 1
        if existing and name == "delete-unread":
            assert summary.sessions_deleted == 6
            assert cache(store, srv.guru_slug)["deleted"].sum() == 6


def test_random_drift_and_faults_then_incremental_is_exact(tmp_path: Path) -> None:
    from guru_analytics.server import DriftConfig

    drift = DriftConfig(touch_per_request=0.6, new_per_request=0.4, seed=7)
    with demo_server(200, drift=drift) as srv:
        store = new_store(tmp_path)
        first = run(srv, store)
        assert_exact(store, srv, srv.guru_slug)
        # besides the random drift, three old sessions get a follow-up before the next pass
        slug = srv.guru_slug
        at_request(srv, 1, lambda s: s.touch(slug, top_ids(s, slug, 50, 53)))
        second = run(srv, store)
        assert_exact(store, srv, srv.guru_slug)
        # the data really moved under both passes
        assert first.top_ups >= 1 and second.sessions_new + second.sessions_changed >= 3


def test_tie_group_straddling_boundaries_is_fully_read(tmp_path: Path) -> None:
    t0 = datetime(2025, 7, 1, tzinfo=UTC)
    # positions 0-19 distinct, 20-64 one instant (45 rows over pages 1-3), 65-84 distinct,
    # 85-96 another instant (12 rows over pages 3-4), 97-119 distinct
    times = [t0 - timedelta(minutes=i) for i in range(20)]
    times += [t0 - timedelta(hours=1)] * 45
    times += [t0 - timedelta(hours=2, minutes=i) for i in range(20)]
    times += [t0 - timedelta(hours=3)] * 12
    times += [t0 - timedelta(hours=4, minutes=i) for i in range(23)]
    frame = pd.DataFrame({"id": [f"s{i:03d}" for i in range(120)], "last_used": times})
    rereads = []
    for seed in range(2):
        srv = LocalGurubase(rate_limit=None, tie_shuffle=True, seed=seed)
        srv.add_guru("ties", frame)
        srv.add_key("k-ties-0001", "owner")
        srv.api_key = "k-ties-0001"
        with srv:
            store = new_store(tmp_path, f"ties{seed}.duckdb")
            summary = run(srv, store, guru="ties")
            assert_exact(store, srv, "ties")
            assert list_requests(srv, "ties") == full_budget(120) + summary.tie_rereads
            rereads.append(summary.tie_rereads)
    assert max(rereads) > 0  # the shuffle did hide members, and the re-reads found them
    stable = LocalGurubase(rate_limit=None, tie_shuffle=False)
    stable.add_guru("ties", frame)
    stable.add_key("k-ties-0001", "owner")
    stable.api_key = "k-ties-0001"
    with stable:
        store = new_store(tmp_path, "stable.duckdb")
        summary = run(stable, store, guru="ties")
        assert summary.tie_rereads == 0 and list_requests(stable, "ties") == full_budget(120)
        assert_exact(store, stable, "ties")


# --- deletions --------------------------------------------------------------------------------


def test_deletions_between_syncs_are_marked_by_full_only(tmp_path: Path) -> None:
    with demo_server(150) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        run(srv, store)
        gone = top_ids(srv, slug, 20, 25) + top_ids(srv, slug, 100, 102)
        srv.delete(slug, gone)
        run(srv, store)  # incremental: cannot see deletions
        assert diff(store, srv, slug)["extra"] == set(gone)
        summary = run(srv, store, full=True)
        assert summary.sessions_deleted == 7 and summary.verified == 0
        assert_exact(store, srv, slug)
        flags = cache(store, slug).set_index("id")["deleted"]
        assert set(flags[flags].index) == set(gone)
        srv.create(slug, 1)
        srv.clear_log()
        run(srv, store)
        # a deleted session that comes back (or a new one) is live again
        assert_exact(store, srv, slug)


def test_deletion_above_offset_during_full_of_existing_cache(tmp_path: Path) -> None:
    with demo_server(150) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        run(srv, store)
        victim = top_ids(srv, slug, 10, 11)[0]  # on page 1
        hidden = top_ids(srv, slug, 90, 91)[0]  # first row of page 4: shifts onto page 3
        at_request(srv, 4, lambda s: s.delete(slug, victim))
        srv.clear_log()
        summary = run(srv, store, full=True)
        # the hidden neighbour was verified with one Get Session and kept, not deleted
        assert get_requests(srv) == 1 and summary.verified == 1 and summary.unverified == 0
        assert _fetched_ids(srv) == [hidden]
        assert summary.sessions_deleted == 0
        # the victim was read before it was deleted: only the next full pass can know
        assert diff(store, srv, slug) == {"missing": set(), "extra": {victim}, "stale": set()}
        run(srv, store, full=True)
        assert_exact(store, srv, slug)


def test_deletion_above_offset_during_first_sync_is_recovered_by_next_full(
    tmp_path: Path,
) -> None:
    # Documented limit: on a first sync the row a deletion-shift hides is not in the cache,
    # so nothing can flag it; the next full sync reads it.
    with demo_server(150) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        victim = top_ids(srv, slug, 10, 11)[0]
        hidden = top_ids(srv, slug, 90, 91)[0]
        at_request(srv, 4, lambda s: s.delete(slug, victim))
        run(srv, store)
        assert diff(store, srv, slug) == {"missing": {hidden}, "extra": {victim}, "stale": set()}
        run(srv, store, full=True)
        assert_exact(store, srv, slug)


def test_verify_budget_leaves_over_budget_suspects_unmarked(tmp_path: Path) -> None:
    with demo_server(150) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        run(srv, store)
        victims = top_ids(srv, slug, 10, 12)
        at_request(srv, 4, lambda s: s.delete(slug, victims))  # hides 2 rows at page 3|4
        srv.clear_log()
        summary = run(srv, store, full=True, verify_budget=1)
        assert get_requests(srv) == 1 and summary.verified == 1 and summary.unverified == 1
        assert summary.sessions_deleted == 0  # the unverified one is not marked either
        assert any("unverified" in n or "verify budget" in n for n in summary.notes)
        assert diff(store, srv, slug)["missing"] == set()


# --- users and search ------------------------------------------------------------------------


def test_per_user_listings_attribute_and_budget(tmp_path: Path) -> None:
    # guru_wide=False: the explicit per-user-only opt-in (the default reads guru-wide too)
    with demo_server(250, users=5) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)
        assert len(users) == 5
        store = new_store(tmp_path)
        summary = run(srv, store, users=users, guru_wide=False)
        sizes = {u: len(srv.truth(slug, external_user_id=u)) for u in users}
        assert list_requests(srv) == sum(full_budget(n) for n in sizes.values())
        assert summary.listings == [f"user:{u}" for u in users]
        assert any("partial" in n for n in summary.notes)
        with store.reader() as con:
            attributed = con.execute(
                "SELECT external_user_id, id FROM session_users WHERE guru = ?", [slug]
            ).df()
        for u in users:
            got = set(attributed.loc[attributed["external_user_id"] == u, "id"])
            assert got == set(truth(srv, slug, u)), u
        # each user has its own watermark: nothing changed -> one request per user
        srv.clear_log()
        run(srv, store, users=users, guru_wide=False)
        assert list_requests(srv) == len(users)
        srv.create(slug, 3, external_user_id=users[0])
        srv.clear_log()
        summary = run(srv, store, users=users, guru_wide=False)
        assert list_requests(srv) == len(users) and summary.sessions_new == 3
        assert set(truth(srv, slug, users[0])) <= set(live(store, slug))


def test_users_sync_reads_guru_wide_plus_each_user_in_one_run(tmp_path: Path) -> None:
    with demo_server(250, users=3) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:2]
        store = new_store(tmp_path)
        summary = run(srv, store, users=users)
        sizes = [len(srv.truth(slug, external_user_id=u)) for u in users]
        # issue 13: one top-up for the whole run (was one per multi-page listing)
        assert list_requests(srv) == pages_for(250) + sum(pages_for(n) for n in sizes) + 1
        assert summary.listings == ["", *(f"user:{u}" for u in users)]
        assert summary.sessions_new == 250 and not summary.notes
        assert len(store.runs(slug)) == 1  # one run, one summary
        assert_exact(store, srv, slug)
        with store.reader() as con:
            attributed = con.execute(
                "SELECT external_user_id, id FROM session_users WHERE guru = ?", [slug]
            ).df()
        assert set(attributed["external_user_id"]) == set(users)
        for u in users:
            got = set(attributed.loc[attributed["external_user_id"] == u, "id"])
            assert got == set(truth(srv, slug, u)), u


def test_search_listing_syncs_the_matching_subset(tmp_path: Path) -> None:
    with demo_server(300) as srv:
        slug = srv.guru_slug
        frame = srv.truth(slug)
        word = str(frame["root_question_name"].iloc[7]).split()[0]
        q = word.lower()
        mask = (
            frame["root_question_name"].str.lower().str.contains(q, regex=False)
            | frame["user_question"].str.lower().str.contains(q, regex=False)
            | frame["root_question_slug"].str.lower().str.contains(q, regex=False)
        )
        expected = set(frame.loc[mask, "id"])
        assert 0 < len(expected) < len(frame)
        store = new_store(tmp_path)
        summary = run(srv, store, search=f"  {word} ")
        assert set(live(store, slug)) == expected
        assert summary.listings == [f"search:{word}"]
        assert list_requests(srv) == full_budget(len(expected))
        assert store.get_state(slug, f"search:{word}").watermark is not None
        runs = store.runs(slug)
        assert runs["search_query"].iloc[-1] == word
        assert runs["listings"].iloc[-1] == [f"search:{word}"]
        assert summary.sessions_deleted == 0  # a subset never marks deletions


# --- messages ---------------------------------------------------------------------------------


def test_messages_fetch_only_new_or_changed_and_respect_max_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "MESSAGE_CHUNK", 4)  # pending rows are read in chunks
    with demo_server(25) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        summary = run(srv, store, messages=True)
        assert get_requests(srv) == 25 and summary.messages_fetched == 25
        assert summary.messages_remaining == 0
        with store.reader() as con:
            n_msgs = con.execute("SELECT count(*) FROM messages WHERE guru = ?", [slug]).fetchone()
            created = con.execute(
                "SELECT count(*) FROM sessions WHERE guru = ? AND date_created IS NULL", [slug]
            ).fetchone()
        assert n_msgs is not None and n_msgs[0] == int(srv.truth(slug)["n_messages"].sum())
        assert created == (0,)
        touched = top_ids(srv, slug, 10, 12)
        srv.touch(slug, touched)
        new = srv.create(slug, 3)
        srv.clear_log()
        summary = run(srv, store, messages=True, max_requests=2)
        # newest first: the 3 new ones were created after the touches
        assert _fetched_ids(srv) == list(reversed(new))[:2]
        assert summary.messages_fetched == 2 and summary.messages_remaining == 3
        srv.clear_log()
        summary = run(srv, store, messages=True)
        assert set(_fetched_ids(srv)) == {new[0], *touched}
        assert summary.messages_remaining == 0
        srv.clear_log()
        run(srv, store, messages=True)
        assert get_requests(srv) == 0


def test_messages_404_marks_the_session_deleted(tmp_path: Path) -> None:
    with demo_server(20) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        run(srv, store)
        gone = top_ids(srv, slug, 3, 4)[0]
        srv.delete(slug, gone)
        summary = run(srv, store, messages=True)
        assert summary.messages_fetched == 20
        flags = cache(store, slug).set_index("id")["deleted"]
        assert bool(flags[gone]) and int(flags.sum()) == 1
        assert_exact(store, srv, slug)
        with store.reader() as con:
            status = con.execute(
                "SELECT status FROM message_fetches WHERE guru = ? AND session_id = ?", [slug, gone]
            ).fetchone()
        assert status == ("not_found",)


# --- interruption and resume -----------------------------------------------------------------


class _Interrupt:
    """An injected ``sleep`` that raises KeyboardInterrupt: a Ctrl-C during a rate-limit wait."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, seconds: float) -> None:
        self.calls += 1
        raise KeyboardInterrupt


def test_interrupt_records_run_keeps_watermark_and_resume_is_exact(tmp_path: Path) -> None:
    with demo_server(150) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        # 3 requests per window on a frozen clock: the 4th start must wait -> interrupted
        client = client_for(
            srv, rate_limit=3, rate_window=60.0, monotonic=lambda: 0.0, sleep=_Interrupt()
        )
        with pytest.raises(KeyboardInterrupt):
            run(srv, store, client=client)
        assert list_requests(srv) == 3
        assert list(store.runs(slug)["outcome"]) == ["interrupted"]
        state = store.get_state(slug, "")
        assert state is not None and state.watermark is None and state.completed_at is None
        assert state.pass_next_page == 4 and state.pass_mode == "full"
        assert len(live(store, slug)) == 90
        srv.create(slug, 2)  # the list moved while we were away
        srv.clear_log()
        summary = run(srv, store)
        assert summary.mode == "resume"
        assert any("deletions are not marked" in n for n in summary.notes)
        # resumed at page 3 (one page of overlap) to the end, then one top-up
        assert list_requests(srv) == (pages_for(152) - 3 + 1) + 1
        assert_exact(store, srv, slug)
        state = store.get_state(slug, "")
        assert state is not None and state.pass_next_page is None
        assert state.watermark == max(truth(srv, slug).values())
        assert list(store.runs(slug)["outcome"]) == ["interrupted", "ok"]


def test_full_after_interrupted_incremental_starts_fresh(tmp_path: Path) -> None:
    with demo_server(90) as srv:
        slug = srv.guru_slug
        store = new_store(tmp_path)
        run(srv, store)
        store.save_state(slug, "", pass_mode="incremental", pass_next_page=2)
        assert run(srv, store).mode == "resume"
        store.save_state(slug, "", pass_mode="incremental", pass_next_page=2)
        assert run(srv, store, full=True).mode == "full"
        assert_exact(store, srv, slug)


# --- summary, arguments, helpers -------------------------------------------------------------


def test_summary_renders_a_readable_table(tmp_path: Path) -> None:
    with demo_server(90) as srv:
        store = new_store(tmp_path)
        summary = run(srv, store)
        text = str(summary)
        assert text.splitlines()[0].startswith(f"sync {srv.guru_slug}: full, ok (run 1,")
        assert "requests  4 (pages 4, tie re-reads 0, top-ups 1; 429s 0, retries 0)" in text
        assert "sessions  90 new, 0 changed, 0 deleted" in text


def test_listings_and_users_file(tmp_path: Path) -> None:
    assert [x.key for x in listings_for(None, None)] == [""]
    assert [x.key for x in listings_for(None, "  q ")] == ["search:q"]
    assert [x.key for x in listings_for(["a", "b", "a"], None)] == ["user:a", "user:b"]
    assert [x.key for x in listings_for(["a"], "q")] == ["user:a|search:q"]
    for bad in ([], [""], "alice", [3]):
        with pytest.raises(ConfigError):
            listings_for(bad, None)  # type: ignore[arg-type]
    f = tmp_path / "users.txt"
    f.write_text("# users\nalice\n\n  bob  # the second\n#carol\n", encoding="utf-8")
    assert read_users_file(f) == ["alice", "bob"]
    with pytest.raises(ConfigError, match="not found"):
        read_users_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nobody\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no user ids"):
        read_users_file(tmp_path / "empty.txt")


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with demo_server(1) as srv:
        store = new_store(tmp_path)
        for kwargs in ({"max_requests": -1}, {"verify_budget": -2}, {"guru": " "}):
            with pytest.raises(ConfigError):
                run(srv, store, **kwargs)
        assert list_requests(srv) == 0


def test_progress_bar_shows_pages_and_rate_limit_pace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with demo_server(61) as srv:
        store = new_store(tmp_path)
        client = client_for(srv, rate_limit=600, rate_window=60.0)
        run(srv, store, client=client, progress=True, messages=True, max_requests=3)
        err = capsys.readouterr().err
        # the bar is a SyncProgress consumer (issue 12): listing, pace from the limit (60/600)
        assert "guru-wide" in err and "≈0.1 s/request" in err and "messages" in err
        assert "total unknown (first sync)" in err and "100%" in err
        assert srv.api_key is not None and srv.api_key not in err
        run(srv, store, progress=None)  # stderr is not a terminal here: no bar
        assert capsys.readouterr().err == ""


# --- the guru-wide listing as the change feed (issue 13, first part) ---------------------------


def _assert_attributed(store: Any, srv: LocalGurubase, slug: str, users: list[str]) -> None:
    got = attribution(store, slug)
    for u in users:
        assert got.get(u, set()) == set(truth(srv, slug, u)), u


def test_idle_and_touch_only_syncs_skip_user_listings_at_no_request(tmp_path: Path) -> None:
    with demo_server(300, users=6) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:5]
        store = new_store(tmp_path)
        run(srv, store, users=users)
        srv.clear_log()
        summary = run(srv, store, users=users)  # idle: one guru-wide request, users skipped
        assert list_requests(srv) == 1
        assert any("skipped 5 user listing(s)" in n for n in summary.notes)
        touched = list(srv.truth(slug)["id"].iloc[50:90])  # cached, some of them attributed
        srv.touch(slug, touched)
        srv.clear_log()
        summary = run(srv, store, users=users)
        assert list_requests(srv) == incremental_budget(40) and summary.sessions_changed == 40
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)
        # a user listing's watermark followed the feed: the next new session costs one page,
        # and (issue 13) only the users up to its owner, most recently active first, are read
        newest = {u: max(truth(srv, slug, u).values()) for u in users}
        rank = sorted(users, key=lambda u: newest[u], reverse=True).index(users[3]) + 1
        srv.create(slug, 2, external_user_id=users[3])
        srv.clear_log()
        summary = run(srv, store, users=users)
        assert list_requests(srv) == 1 + rank and summary.sessions_new == 2
        assert summary.listings_skipped == len(users) - rank
        _assert_attributed(store, srv, slug, users)


def test_new_sessions_after_an_unfinished_attribution_still_get_attributed(
    tmp_path: Path,
) -> None:
    with demo_server(200, users=4) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:3]
        store = new_store(tmp_path)
        run(srv, store, users=users)
        srv.create(slug, 3, external_user_id=users[1])
        srv.create(slug, 2)  # nobody's
        run(srv, store)  # the guru-wide listing took them in; no user listing was read
        srv.clear_log()
        summary = run(srv, store, users=users)  # nothing new guru-wide, but users must be read
        assert list_requests(srv) == 1 + len(users) and not summary.notes
        _assert_attributed(store, srv, slug, users)
        srv.clear_log()
        run(srv, store, users=users)  # now settled: idle again
        assert list_requests(srv) == 1


def test_a_user_added_later_and_full_read_their_listings(tmp_path: Path) -> None:
    with demo_server(200, users=4) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:3]
        store = new_store(tmp_path)
        run(srv, store, users=users[:2])
        srv.clear_log()
        run(srv, store, users=users)  # users[2] is new: its whole listing is read once
        sizes = len(srv.truth(slug, external_user_id=users[2]))
        assert list_requests(srv) == 1 + full_budget(sizes)
        _assert_attributed(store, srv, slug, users)
        srv.clear_log()
        run(srv, store, users=users, full=True)
        assert list_requests(srv) > 1 + len(users)


def test_a_session_created_after_the_feed_is_attributed_by_the_next_run(tmp_path: Path) -> None:
    with demo_server(150, users=3) as srv:
        slug = srv.guru_slug
        users = srv.users(slug)[:2]
        store = new_store(tmp_path)
        run(srv, store, users=users)
        # created right after the idle run's only request (before the next one): the run that
        # skipped the user listings cannot have seen it; the next run attributes it
        at_request(srv, 2, lambda s: s.create(slug, 1, external_user_id=users[0]))
        srv.clear_log()
        run(srv, store, users=users)
        assert list_requests(srv) == 1
        run(srv, store, users=users)
        assert_exact(store, srv, slug)
        _assert_attributed(store, srv, slug, users)
