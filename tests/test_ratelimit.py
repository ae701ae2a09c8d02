"""SlidingWindowLimiter on a fake clock: the window invariant, no bursts, deferrals."""

from __future__ import annotations

import random

import pytest

from guru_analytics.errors import ConfigError
from guru_analytics.ratelimit import SlidingWindowLimiter


class FakeClock:
    """A monotonic clock that only moves when slept on (or advanced by the test)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter must not sleep for zero or negative time"
        self.sleeps.append(seconds)
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make(r: int | None, window: float, clock: FakeClock) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(r, window, monotonic=clock.monotonic, sleep=clock.sleep)


def max_in_any_window(starts: list[float], window: float) -> int:
    """The most starts inside any half-open window [t, t + window).

    The busiest window can always be slid to begin at a start, so checking the window
    beginning at every recorded start covers every window.
    """
    starts = sorted(starts)
    best = 0
    j = 0
    for i, t in enumerate(starts):
        j = max(j, i)
        while j < len(starts) and starts[j] < t + window - 1e-9:
            j += 1
        best = max(best, j - i)
    return best


def test_back_to_back_starts_fill_each_window_exactly() -> None:
    clock = FakeClock()
    lim = make(3, 10.0, clock)
    starts = []
    for _ in range(9):
        lim.acquire()
        starts.append(clock.t)
    assert starts == [0, 0, 0, 10, 10, 10, 20, 20, 20]
    assert clock.sleeps == [10.0, 10.0]
    assert max_in_any_window(starts, 10.0) == 3


def test_never_more_than_r_in_any_window_over_random_workloads() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        r = rng.randint(1, 12)
        window = rng.choice([1.0, 2.0, 60.0])
        clock = FakeClock(start=rng.uniform(0, 1000))
        lim = make(r, window, clock)
        starts = []
        for _ in range(200):
            # Work between requests: usually none, sometimes a response time, sometimes idle.
            clock.advance(
                rng.choice([0.0, 0.0, rng.uniform(0, window / r), rng.uniform(0, 3 * window)])
            )
            if rng.random() < 0.05:
                lim.defer_until(clock.t + rng.uniform(0, window))
            waited = lim.acquire()
            assert waited >= 0
            starts.append(clock.t)
            if rng.random() < 0.5:
                clock.advance(rng.uniform(0, 0.2))
                lim.finish()
        assert max_in_any_window(starts, window) <= r, (seed, r, window)
        # Pairwise form of the same invariant: start i and start i+R are a window apart.
        assert all(b - a >= window - 1e-9 for a, b in zip(starts, starts[r:], strict=False))


def test_no_burst_after_a_partly_used_window() -> None:
    """A token bucket refilled at R/W would allow a 4th start at t=3.33 here; we must not."""
    clock = FakeClock()
    lim = make(3, 10.0, clock)
    for _ in range(3):
        lim.acquire()
    clock.advance(5.0)
    assert lim.next_delay() == pytest.approx(5.0)
    lim.acquire()
    assert clock.t == pytest.approx(10.0)
    # After a long idle spell, R starts may go at once, but never R+1.
    clock.advance(100.0)
    starts = []
    for _ in range(4):
        lim.acquire()
        starts.append(clock.t)
    assert starts[:3] == [110.0, 110.0, 110.0]
    assert starts[3] == pytest.approx(120.0)


def test_defer_until_pushes_the_next_start_and_never_pulls_it_earlier() -> None:
    clock = FakeClock(start=100.0)
    lim = make(5, 60.0, clock)
    lim.defer_until(107.0)
    lim.defer_until(103.0)  # earlier: ignored
    assert lim.next_delay() == pytest.approx(7.0)
    assert lim.window_delay() == 0.0
    assert lim.acquire() == pytest.approx(7.0)
    assert clock.t == pytest.approx(107.0)
    assert lim.next_delay() == 0.0


def test_defer_until_combines_with_the_window_taking_the_later() -> None:
    clock = FakeClock()
    lim = make(2, 10.0, clock)
    lim.acquire()
    lim.acquire()
    lim.defer_until(4.0)  # the window (t=10) is later: it wins
    assert lim.next_delay() == pytest.approx(10.0)
    lim.acquire()
    assert clock.t == pytest.approx(10.0)
    lim.defer_until(25.0)  # now the deferral is later than the window (t=10 + ...)
    assert lim.window_delay() == 0.0
    assert lim.next_delay() == pytest.approx(15.0)
    lim.acquire()
    assert clock.t == pytest.approx(25.0)


def test_disabled_limiter_never_waits_but_honours_defer() -> None:
    clock = FakeClock()
    lim = make(None, 60.0, clock)
    for _ in range(1000):
        assert lim.acquire() == 0.0
    assert clock.sleeps == []
    assert clock.t == 0.0
    assert lim.next_delay() == 0.0  # nothing booked
    lim.defer_until(3.0)
    assert lim.acquire() == pytest.approx(3.0)
    assert clock.sleeps == [3.0]
    assert repr(lim) == "SlidingWindowLimiter(disabled)"


def test_finish_spaces_the_window_from_the_answer() -> None:
    clock = FakeClock()
    lim = make(1, 10.0, clock)
    lim.acquire()
    clock.advance(2.0)  # the answer took 2 s; the server stamped it somewhere in [0, 2]
    lim.finish()
    assert lim.next_delay() == pytest.approx(10.0)
    lim.acquire()
    assert clock.t == pytest.approx(12.0)


def test_fake_sleep_that_does_not_advance_keeps_the_schedule() -> None:
    """With a recording sleep on a frozen clock, starts are booked at their planned instants."""
    slept: list[float] = []
    lim = SlidingWindowLimiter(2, 5.0, monotonic=lambda: 0.0, sleep=slept.append)
    for _ in range(6):
        lim.acquire()
    assert slept == [5.0, 5.0, 10.0, 10.0]
    assert lim.next_delay() == pytest.approx(15.0)  # both starts booked at 10: free at 15


def test_wait_observer_sees_each_delay_before_the_sleep() -> None:
    clock = FakeClock()
    lim = make(2, 10.0, clock)
    seen: list[tuple[float, float]] = []  # (delay announced, clock when announced)
    with lim.observe(on_wait=lambda d: seen.append((d, clock.t))):
        for _ in range(5):
            lim.acquire()
    assert seen == [(10.0, 0.0), (10.0, 10.0)]  # announced before sleeping, once per wait
    assert clock.sleeps == [10.0, 10.0]
    lim.acquire()  # the observer is gone after the block
    assert len(seen) == 2


def test_tick_observer_counts_a_wait_down_in_slices_of_at_most_a_second() -> None:
    clock = FakeClock()
    lim = make(1, 2.5, clock)
    ticks: list[float] = []
    with lim.observe(on_tick=ticks.append):
        lim.acquire()
        lim.acquire()
    assert ticks == pytest.approx([2.5, 1.5, 0.5])
    assert clock.sleeps == pytest.approx([1.0, 1.0, 0.5])
    assert lim.seconds_per_request == pytest.approx(2.5)
    assert make(None, 60.0, clock).seconds_per_request is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_rate_limits_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="rate limit"):
        SlidingWindowLimiter(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2.0, True])
def test_bad_windows_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="rate window"):
        SlidingWindowLimiter(10, bad)  # type: ignore[arg-type]
