"""Unit tests of the pure paging state machine, with scripted pages (no HTTP, no DB)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from guru_analytics.errors import ConfigError, EndlessListingError
from guru_analytics.paging import STALL_SLACK, PageView, Pass, Row, is_suspect

T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


def ts(i: int) -> datetime:
    """Distinct instants, newest for the smallest i (matching list order)."""
    return T0 - timedelta(seconds=i)


def rows(*pairs: tuple[str, int]) -> list[Row]:
    return [Row(sid, ts(i)) for sid, i in pairs]


def drive(p: Pass, answer: Callable[[int], PageView], limit: int = 500) -> list[int]:
    """Run a pass against ``answer(page) -> PageView``; return the pages requested."""
    asked: list[int] = []
    while (n := p.next_page()) is not None:
        asked.append(n)
        p.feed(answer(n))
        assert len(asked) < limit, "pass did not terminate"
    assert p.complete
    return asked


class Listing:
    """A tiny in-memory List Sessions: offset pages over last_used desc, ties reshuffled per
    request (seeded), rootless rows dropped after the cut, and scripted changes per request.
    A test double of the *server's* behaviour, written independently of paging.py."""

    def __init__(
        self,
        sessions: dict[str, datetime],
        page_size: int = 5,
        seed: int = 0,
        rootless: set[str] | None = None,
        shuffle: bool = True,
    ) -> None:
        self.sessions = dict(sessions)
        self.page_size = page_size
        self.rng = random.Random(seed)
        self.rootless = rootless or set()
        self.shuffle = shuffle
        self.requests = 0
        self.before: dict[int, Callable[[Listing], None]] = {}

    def order(self) -> list[str]:
        ids = list(self.sessions)
        if self.shuffle:
            self.rng.shuffle(ids)
        # sort is stable: equal last_used keep the shuffled order
        return sorted(ids, key=lambda i: self.sessions[i], reverse=True)

    def page(self, n: int) -> PageView:
        self.requests += 1
        if self.requests in self.before:
            self.before[self.requests](self)
        order = self.order()
        lo = (n - 1) * self.page_size
        cut = order[lo : lo + self.page_size]
        shown = [Row(i, self.sessions[i]) for i in cut if i not in self.rootless]
        return PageView(n, len(order) > n * self.page_size, shown)

    def listable(self) -> dict[str, datetime]:
        return {i: t for i, t in self.sessions.items() if i not in self.rootless}


# --- ending ------------------------------------------------------------------------------


def test_only_has_more_false_ends_empty_and_short_pages_continue() -> None:
    script = {
        1: PageView(1, True, rows(("a", 1), ("b", 2))),  # short page, more to come
        2: PageView(2, True, []),  # every row rootless: empty but not the end
        3: PageView(3, True, rows(("c", 10))),
        4: PageView(4, False, rows(("d", 11), ("e", 12))),
    }
    p = Pass()
    assert drive(p, script.__getitem__) == [1, 2, 3, 4]
    assert p.stats.requests == 4 and p.stats.pages == 4 and p.stats.empty_pages == 1
    assert set(p.seen) == {"a", "b", "c", "d", "e"}
    assert p.top == ts(1) and p.max_seen == ts(1)
    assert p.next_page() is None


def test_single_empty_page_is_a_complete_listing() -> None:
    p = Pass()
    assert drive(p, lambda n: PageView(n, False, [])) == [1]
    assert p.top is None and p.max_seen is None and p.gaps == []


def test_stop_below_is_strict() -> None:
    watermark = ts(5)
    script = {
        1: PageView(1, True, rows(("a", 1), ("b", 3), ("w", 5))),  # w is AT the watermark
        2: PageView(2, True, rows(("x", 5), ("y", 6))),  # y is older: stop here
        3: PageView(3, False, rows(("z", 7))),
    }
    p = Pass(stop_below=watermark)
    assert drive(p, script.__getitem__) == [1, 2]
    assert set(p.seen) == {"a", "b", "w", "x", "y"}


def test_stop_below_on_first_page_is_one_request() -> None:
    p = Pass(stop_below=ts(1))
    assert drive(p, lambda n: PageView(n, True, rows(("a", 1), ("b", 2)))) == [1]
    assert p.stats.requests == 1


def test_top_comes_from_first_non_empty_page_or_is_kept_on_resume() -> None:
    script = {
        3: PageView(3, True, []),
        4: PageView(4, True, rows(("a", 40), ("b", 41))),
        5: PageView(5, False, rows(("c", 42))),
    }
    p = Pass(start_page=3)
    assert drive(p, script.__getitem__) == [3, 4, 5]
    assert p.top == ts(40)
    resumed = Pass(start_page=4, top=ts(0))
    assert drive(resumed, script.__getitem__) == [4, 5]
    assert resumed.top == ts(0) and resumed.max_seen == ts(40)


# --- duplicates and gaps -----------------------------------------------------------------


def test_duplicates_are_counted_once_and_newest_last_used_wins() -> None:
    script = {
        1: PageView(1, True, rows(("a", 1), ("b", 2), ("c", 3))),
        # two new sessions on top shifted b and c down onto page 2; and a lagging replica
        # answers a with an older last_used: the newest value must win
        2: PageView(2, False, [Row("b", ts(2)), Row("c", ts(3)), Row("d", ts(4)), Row("a", ts(9))]),
    }
    p = Pass()
    drive(p, script.__getitem__)
    assert p.stats.rows == 7 and p.stats.duplicates == 3
    assert p.seen == {"a": ts(1), "b": ts(2), "c": ts(3), "d": ts(4)}
    # overlapping pages (page 2 holds something newer than page 1's oldest): no gap, and
    # c showing twice is explained by the shift, so it costs no tie re-read
    assert p.gaps == [] and p.stats.tie_rereads == 0 and p.stats.requests == 2


def test_remember_ids_off_keeps_no_ids_but_counts() -> None:
    p = Pass(remember_ids=False)
    drive(p, lambda n: PageView(n, n < 3, rows((f"s{n}", n))))
    assert p.seen == {} and p.stats.rows == 3 and p.max_seen == ts(1)


def test_gaps_cover_each_boundary_and_answer_in_gap() -> None:
    script = {
        1: PageView(1, True, rows(("a", 1), ("b", 2))),
        2: PageView(2, True, []),
        3: PageView(3, True, rows(("c", 5), ("d", 6))),
        4: PageView(4, False, rows(("e", 10))),
    }
    p = Pass()
    drive(p, script.__getitem__)
    assert [(g.upper_page, g.lower_page, g.low, g.high) for g in p.gaps] == [
        (1, 3, ts(5), ts(2)),
        (3, 4, ts(10), ts(6)),
    ]
    assert p.in_gap(ts(3)) and p.in_gap(ts(2)) and p.in_gap(ts(5)) and p.in_gap(ts(8))
    assert not p.in_gap(ts(1)) and not p.in_gap(ts(11)) and not p.in_gap(ts(0))


def test_deletion_above_offset_skips_a_row_that_lies_in_the_gap() -> None:
    sessions = {f"s{i:02d}": ts(i) for i in range(12)}
    lst = Listing(sessions, page_size=5, shuffle=False)
    lst.before[2] = lambda listing: listing.sessions.pop("s01")  # before page 2 is read
    p = Pass()
    drive(p, lst.page)
    missed = set(lst.listable()) - set(p.seen)
    assert missed == {"s05"}  # the first row of page 2 moved up onto page 1 unseen
    assert p.in_gap(sessions["s05"])
    assert [(g.low, g.high) for g in p.gaps] == [(ts(6), ts(4)), (ts(11), ts(10))]


# --- ties --------------------------------------------------------------------------------


def test_tie_inside_one_page_needs_no_reread() -> None:
    script = {
        1: PageView(1, True, rows(("a", 1), ("b", 2), ("c", 2), ("d", 3))),
        2: PageView(2, False, rows(("e", 4))),
    }
    p = Pass()
    assert drive(p, script.__getitem__) == [1, 2]
    assert p.stats.tie_rereads == 0 and p.stats.tie_spans == 0


def test_tie_at_boundary_rereads_until_hidden_member_appears() -> None:
    # group {x, y, z} at ts(3) holds the last 2 slots of page 1 and the first slot of page 2.
    # Page 2's read showed x again (reshuffled), hiding z.
    answers = {
        1: [
            PageView(1, True, rows(("a", 1), ("b", 2), ("x", 3), ("y", 3))),
            PageView(1, True, rows(("a", 1), ("b", 2), ("y", 3), ("x", 3))),
            PageView(1, True, rows(("a", 1), ("b", 2), ("z", 3), ("x", 3))),
        ],
        2: [
            PageView(2, True, rows(("x", 3), ("c", 4))),
            PageView(2, True, rows(("y", 3), ("c", 4))),
        ],
        3: [PageView(3, False, rows(("d", 5)))],
    }
    calls: dict[int, int] = {}

    def answer(n: int) -> PageView:
        k = calls.get(n, 0)
        calls[n] = k + 1
        return answers[n][min(k, len(answers[n]) - 1)]

    p = Pass()
    asked = drive(p, answer)
    # forward 1, 2, then re-reads of page 1 (2 group slots) until z shows, then page 3
    assert asked == [1, 2, 1, 1, 3]
    assert p.stats.tie_rereads == 2 and p.stats.tie_spans == 1 and p.stats.ties_unresolved == 0
    assert {"x", "y", "z"} <= set(p.seen)


def test_tie_rereads_stop_at_budget_and_report_missing() -> None:
    # the page answers never reveal the third member
    script = {
        1: PageView(1, True, rows(("a", 1), ("x", 3), ("y", 3))),
        2: PageView(2, False, rows(("x", 3), ("c", 4))),
    }
    p = Pass(tie_reread_budget=3)
    asked = drive(p, script.__getitem__)
    assert asked == [1, 2, 1, 1, 1]  # page 1 shows most group slots; counts never change
    assert p.stats.tie_rereads == 3
    assert p.stats.ties_unresolved == 1 and p.stats.tie_members_missing == 1


def test_shift_duplicate_in_tie_free_listing_costs_no_reread() -> None:
    # A new session shifted x from page 1's last slot to page 2's first. In a listing with no
    # ties so far that is the ordinary drift of a crawl: no request is spent on it, and the
    # boundary stays a gap (a cached session hiding there is verified before any deletion).
    answers = {
        1: PageView(1, True, rows(("a", 1), ("b", 2), ("x", 3))),
        2: PageView(2, True, rows(("x", 3), ("c", 4), ("d", 5))),
        3: PageView(3, False, rows(("e", 6))),
    }
    p = Pass()
    assert drive(p, answers.__getitem__) == [1, 2, 3]
    assert p.stats.tie_rereads == 0 and p.stats.shift_duplicates == 1
    assert p.stats.duplicates == 1 and p.in_gap(ts(3))


def test_lone_repeat_is_reread_once_the_listing_has_shown_ties() -> None:
    # Page 1 holds a tie (y, z share ts(1)): from then on a lone repeated row at a boundary
    # may be a two-member tie whose other member was hidden by the reshuffle, so it is
    # re-read until the second member shows.
    answers = {
        1: [
            PageView(1, True, rows(("y", 1), ("z", 1), ("x", 3))),
            PageView(1, True, rows(("z", 1), ("y", 1), ("w", 3))),
        ],
        2: [PageView(2, True, rows(("x", 3), ("c", 4), ("d", 5)))],
        3: [PageView(3, False, rows(("e", 6)))],
    }
    calls: dict[int, int] = {}

    def answer(n: int) -> PageView:
        k = calls.get(n, 0)
        calls[n] = k + 1
        return answers[n][min(k, len(answers[n]) - 1)]

    p = Pass()
    assert drive(p, answer) == [1, 2, 1, 3]
    assert p.stats.tie_rereads == 1 and p.stats.shift_duplicates == 0
    assert {"w", "x"} <= set(p.seen) and p.stats.ties_unresolved == 0


def test_tie_group_older_than_stop_below_is_ignored() -> None:
    script = {
        1: PageView(1, True, rows(("a", 1), ("x", 9), ("y", 9))),
        2: PageView(2, True, rows(("x", 9), ("c", 10))),
    }
    p = Pass(stop_below=ts(5))
    assert drive(p, script.__getitem__) == [1]  # page 1 already holds rows older than stop
    assert p.stats.tie_rereads == 0


def test_resume_page_points_at_an_open_tie_group() -> None:
    p = Pass()
    assert p.next_page() == 1
    p.feed(PageView(1, True, rows(("a", 1), ("x", 3))))
    assert p.resume_page == 2
    assert p.next_page() == 2
    p.feed(PageView(2, True, rows(("y", 3), ("z", 3))))  # whole page in the group: still open
    assert p.resume_page == 1
    assert p.next_page() == 3
    p.feed(PageView(3, False, rows(("w", 3), ("c", 4))))
    assert p.resume_page == 4  # closed with 4 slots and 4 members: nothing to re-read
    assert p.next_page() is None and p.complete and p.stats.tie_spans == 1


@pytest.mark.parametrize("seed", range(12))
def test_big_tie_group_over_three_pages_is_fully_seen(seed: int) -> None:
    # 45 sessions share one instant and cover slots 20..64 with page size 30: three pages,
    # reshuffled on every request. Everything listable must be seen.
    sessions = {f"h{i:02d}": ts(i) for i in range(20)}
    sessions |= {f"g{i:02d}": ts(50) for i in range(45)}
    sessions |= {f"l{i:02d}": ts(100 + i) for i in range(25)}
    lst = Listing(sessions, page_size=30, seed=seed)
    p = Pass()
    asked = drive(p, lst.page)
    assert set(p.seen) == set(sessions)
    assert p.stats.ties_unresolved == 0
    assert p.stats.tie_rereads == len(asked) - 3
    assert p.stats.tie_rereads <= 2 * p.tie_reread_budget


@pytest.mark.parametrize("seed", range(6))
def test_random_drift_with_ties_sees_every_unchanged_session(seed: int) -> None:
    # Touches and creations shift rows down while paging; ties reshuffle. Every session that
    # was never touched must be seen (touched/new ones are the top-up pass's business).
    rng = random.Random(seed)
    sessions = {f"s{i:03d}": ts(rng.randrange(60) + 10) for i in range(120)}
    lst = Listing(sessions, page_size=10, seed=seed)
    touched: set[str] = set()
    clock = iter(range(9, 0, -1))

    def touch(listing: Listing) -> None:
        sid = rng.choice(sorted(listing.sessions))
        listing.sessions[sid] = ts(next(clock))
        touched.add(sid)

    for k in (3, 5, 8, 11):
        lst.before[k] = touch
    p = Pass(tie_reread_budget=20)
    drive(p, lst.page)
    assert set(sessions) - touched <= set(p.seen)


# --- misuse ------------------------------------------------------------------------------


def test_feeding_a_page_that_was_not_asked_for_is_an_error() -> None:
    p = Pass()
    with pytest.raises(ConfigError, match="asked for"):
        p.feed(PageView(1, False, []))
    assert p.next_page() == 1
    with pytest.raises(ConfigError, match="page 2 was fed"):
        p.feed(PageView(2, False, []))


@pytest.mark.parametrize("bad", [0, -1, True, "1"])
def test_start_page_must_be_a_page_number(bad: object) -> None:
    with pytest.raises(ConfigError):
        Pass(start_page=bad)  # type: ignore[arg-type]


# --- endless listings (issue 14 item 2) ------------------------------------------------


def _feed_until_error(p: Pass, answer: Callable[[int], PageView], limit: int) -> list[int]:
    asked: list[int] = []
    with pytest.raises(EndlessListingError, match="has_more=true") as err:
        while (n := p.next_page()) is not None:
            asked.append(n)
            assert len(asked) <= limit, "the pass followed the listing past the bound"
            p.feed(answer(n))
    assert "\n" not in str(err.value)
    return asked


def test_endless_empty_pages_stop_with_a_typed_error() -> None:
    p = Pass()
    asked = _feed_until_error(p, lambda n: PageView(n, True, []), limit=100)
    assert len(asked) == STALL_SLACK + 1
    assert p.resume_page == 1  # a restart does not carry on from page 18


def test_the_same_page_over_and_over_stops() -> None:
    same = rows(*((f"s{i}", i) for i in range(30)))
    p = Pass()
    asked = _feed_until_error(p, lambda n: PageView(n, True, same), limit=100)
    assert len(asked) == 1 + STALL_SLACK + 1  # page 1 was progress, then the repeats
    assert p.resume_page == 2


def test_two_pages_in_alternation_stop() -> None:
    a, b = rows(("a", 1), ("b", 2)), rows(("c", 3), ("d", 4))
    p = Pass()
    asked = _feed_until_error(p, lambda n: PageView(n, True, a if n % 2 else b), limit=100)
    assert len(asked) == 2 + (STALL_SLACK + 2 // 2) + 1


def test_the_bound_grows_with_what_the_listing_has_shown() -> None:
    # 200 real pages, then the server repeats the last one: a large guru is not cut off,
    # and the repeats are followed a while longer in proportion (never for ever)
    def answer(n: int) -> PageView:
        k = min(n, 200)
        return PageView(n, True, rows(*((f"s{k}-{j}", k * 10 + j) for j in range(10))))

    asked = _feed_until_error(Pass(remember_ids=False), answer, limit=1000)
    assert len(asked) == 200 + STALL_SLACK + 100 + 1


def test_a_real_listing_with_empty_stretches_still_completes() -> None:
    # 5 consecutive pages whose rows are all rootless, twice, in a 400-row listing
    sessions = {f"s{i:03d}": ts(i) for i in range(400)}
    rootless = {f"s{i:03d}" for i in [*range(100, 125), *range(300, 325)]}
    listing = Listing(sessions, page_size=5, rootless=rootless)
    p = Pass()
    drive(p, listing.page, limit=200)
    assert set(p.seen) == set(listing.listable())
    assert p.stats.empty_pages == 10 and p.stats.stale_pages == 10


def test_a_long_tie_group_is_progress_not_a_stall() -> None:
    # 120 sessions sharing one last_used span 24 pages of 5: every page shows new members
    sessions = {f"t{i:03d}": ts(1) for i in range(120)}
    sessions |= {f"z{i}": ts(10 + i) for i in range(3)}
    listing = Listing(sessions, page_size=5, shuffle=False)
    p = Pass(stall_slack=2)
    drive(p, listing.page, limit=200)
    assert set(p.seen) == set(sessions) and p.stats.stale_pages == 0


def test_stall_slack_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="stall_slack"):
        Pass(stall_slack=-1)


# --- suspect instants (issue 14 item 5) -------------------------------------------------------


def test_is_suspect_bounds() -> None:
    now = T0
    assert not is_suspect(now + timedelta(hours=23), now)
    assert is_suspect(now + timedelta(days=2), now)
    assert is_suspect(datetime(2022, 12, 31, tzinfo=UTC), now)
    assert not is_suspect(datetime(2023, 1, 1, tzinfo=UTC), now)


def test_a_suspect_row_sets_no_top_max_seen_or_stop() -> None:
    future = Row("f", datetime(9999, 12, 31, tzinfo=UTC), suspect=True)
    ancient = Row("a", datetime(1, 1, 1, tzinfo=UTC), suspect=True)
    pages = {
        1: PageView(1, True, [future, *rows(("x", 1), ("y", 2))]),
        2: PageView(2, False, [*rows(("z", 3)), ancient]),
    }
    # an incremental pass whose watermark lies below every true row: it must not stop at the
    # year-1 row's page early, nor take 9999 as its top or newest instant
    p = Pass(stop_below=ts(10))
    assert drive(p, lambda n: pages[n]) == [1, 2]
    assert p.top == ts(1) and p.max_seen == ts(1)
    assert p.stats.suspect == 2 and p.stats.rows == 5
    assert not p.in_gap(datetime(5000, 1, 1, tzinfo=UTC))
    # the year-1 row alone on a page with has_more does not end the pass either
    q = Pass(stop_below=ts(10))
    more = {1: PageView(1, True, [ancient]), 2: PageView(2, False, rows(("x", 1)))}
    assert drive(q, lambda n: more[n]) == [1, 2] and q.max_seen == ts(1)


def test_a_year_1_row_out_of_order_does_not_look_like_an_endless_listing() -> None:
    ancient = Row("a", datetime(1, 1, 1, tzinfo=UTC), suspect=True)
    n = STALL_SLACK + 5

    def answer(page: int) -> PageView:
        body = rows(*((f"r{page}-{i}", page * 30 + i) for i in range(30)))
        return PageView(page, page < n, [ancient, *body] if page == 1 else body)

    p = Pass()
    assert drive(p, answer) == list(range(1, n + 1))
