"""Client-side pacing: never more than R request starts in any sliding window.

Gurubase throttles per user with a sliding window (10 requests / 60 s by default) and even
counts rejected calls, so a 429 costs a request *and* a wait. A token bucket would burst R
requests after an idle spell and then trip the server's window; instead this keeps the
timestamps of the last R starts and lets a new start go only once the oldest of them has
left the window. Time is read from an injected ``monotonic`` and waited on with an injected
``sleep``, so tests run on a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import ConfigError

# With a tick observer, waits are slept in slices of at most this many seconds, each slice
# announced with the seconds left (a progress bar counts down).
TICK_SECONDS = 1.0


class SlidingWindowLimiter:
    """At most ``max_requests`` starts in any ``window`` seconds; ``None`` disables pacing.

    ``defer_until(t)`` is honoured even when pacing is disabled: it carries a server-given
    wait (Retry-After) or a retry backoff to the next start, so every wait goes through
    ``acquire()`` in one place.

    Observers (``observe``) hear of every wait: ``on_wait(seconds)`` once before it starts
    (the sync commits its buffered pages and releases the cache file there), ``on_tick(left)``
    before each slice of at most ``TICK_SECONDS`` (a countdown for progress bars).
    """

    def __init__(
        self,
        max_requests: int | None = 10,
        window: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests is not None and (
            isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1
        ):
            raise ConfigError(
                f"rate limit {max_requests!r} is not valid: use a positive whole number of "
                "requests per window, or None to disable"
            )
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ConfigError(
                f"rate window {window!r} is not valid: use a positive number of seconds"
            )
        self.max_requests = max_requests
        self.window = float(window)
        self._monotonic = monotonic
        self._sleep = sleep
        self._starts: deque[float] = deque(maxlen=max_requests or 1)
        self._not_before = float("-inf")
        self._lock = threading.Lock()
        self._on_wait: list[Callable[[float], None]] = []
        self._on_tick: list[Callable[[float], None]] = []

    def __repr__(self) -> str:
        if self.max_requests is None:
            return "SlidingWindowLimiter(disabled)"
        return f"SlidingWindowLimiter({self.max_requests} per {self.window:g} s)"

    @property
    def seconds_per_request(self) -> float | None:
        """The pace the window allows on average (``window / max_requests``: 10 per 60 s is
        6.0), None when pacing is off."""
        return None if self.max_requests is None else self.window / self.max_requests

    @contextmanager
    def observe(
        self,
        on_wait: Callable[[float], None] | None = None,
        on_tick: Callable[[float], None] | None = None,
    ) -> Iterator[None]:
        """Call ``on_wait(seconds)`` before each wait and ``on_tick(left)`` before each slice
        of it, for the length of the block. An observer that raises aborts the wait."""
        with self._lock:
            if on_wait is not None:
                self._on_wait.append(on_wait)
            if on_tick is not None:
                self._on_tick.append(on_tick)
        try:
            yield
        finally:
            with self._lock:
                if on_wait is not None:
                    self._on_wait.remove(on_wait)
                if on_tick is not None:
                    self._on_tick.remove(on_tick)

    def _earliest(self) -> float:
        """The first instant a new start is allowed (may lie in the past)."""
        earliest = self._not_before
        if self.max_requests is not None and len(self._starts) == self.max_requests:
            earliest = max(earliest, self._starts[0] + self.window)
        return earliest

    def next_delay(self) -> float:
        """Seconds until the next start is allowed (0.0 if now); for ETAs and progress."""
        with self._lock:
            return max(0.0, self._earliest() - self._monotonic())

    def window_delay(self) -> float:
        """The part of ``next_delay()`` owed to the window alone (not to ``defer_until``)."""
        with self._lock:
            if self.max_requests is None or len(self._starts) < self.max_requests:
                return 0.0
            return max(0.0, self._starts[0] + self.window - self._monotonic())

    def defer_until(self, t: float) -> None:
        """Let no start happen before monotonic time ``t`` (a later call may only push it later)."""
        with self._lock:
            self._not_before = max(self._not_before, t)

    def acquire(self) -> float:
        """Wait until a start is allowed, record it, and return the seconds waited.

        The slot is reserved at the allowed instant before sleeping (outside the lock, so
        ``next_delay()`` stays answerable from a progress thread). Recording the planned
        instant rather than re-reading the clock keeps the schedule exact with a fake
        ``sleep``; a real ``sleep`` never returns early, so the true start is never sooner.
        """
        with self._lock:
            now = self._monotonic()
            start = max(now, self._earliest())
            if self.max_requests is not None:
                self._starts.append(start)
            on_wait, on_tick = list(self._on_wait), list(self._on_tick)
        delay = start - now
        if delay > 0:
            for observer in on_wait:
                observer(delay)
            if not on_tick:
                self._sleep(delay)
                return delay
            left = delay
            while left > 0:  # planned slices, not clock reads: exact with a fake sleep
                for observer in on_tick:
                    observer(left)
                step = min(TICK_SECONDS, left)
                self._sleep(step)
                left -= step
        return delay

    def finish(self) -> None:
        """Move the latest start to now, when its answer has arrived.

        The server stamps a request somewhere between our start and its answer, so spacing
        the next window from the *answer* of the oldest start can never undercut the
        server's window, whatever the latency jitter (spacing from starts could, by a few ms).
        """
        with self._lock:
            if self._starts:
                self._starts[-1] = max(self._starts[-1], self._monotonic())
