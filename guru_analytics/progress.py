"""Sync progress as plain data: what the sync reports, and what every progress bar reads.

The sync emits ``SyncProgress`` through one callback; the CLI's tqdm bar, the notebook bar and
the dashboard are consumers of that callback, so none of them computes its own pace or ETA.
``ProgressEstimator`` is the sync's side: it keeps the counts and the estimated total and
emits the reports. This module imports nothing from the client, the store or the sync.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Phase = Literal["listing", "messages", "questions", "wait", "done"]


@dataclass(frozen=True)
class SyncProgress:
    """One report of a running sync (see the field notes for the promises each field keeps)."""

    phase: Phase
    listing: str = ""  # "guru-wide", "user:alice"; "" outside listings
    requests: int = 0  # HTTP requests so far in this run
    pages: int = 0  # listing pages read so far (all listings)
    sessions: int = 0  # session rows read so far (all listings)
    total_requests: int | None = None  # estimate; None when unknown; never below ``requests``
    total_sessions: int | None = None  # cached sessions when known (incremental, --full)
    seconds_per_request: float | None = None  # the real pace (W/R under a rate limit)
    eta_seconds: float | None = None  # None when the total is unknown
    wait_seconds: float = 0.0  # left in the current wait (phase "wait"), else 0
    fraction: float | None = None  # 0..1, never decreasing within a run; None when unknown


class ProgressCallback(Protocol):
    """What ``sync(on_progress=...)`` calls; raising from it aborts the sync like any error."""

    def __call__(self, progress: SyncProgress, /) -> None: ...


class TqdmProgress:
    """The CLI's and notebooks' bar (``tqdm.auto``): one consumer of ``SyncProgress``.

    It shows what the report says (requests of the estimated total, the pace, the ETA, a
    wait's countdown) and computes nothing of its own; tqdm is imported only when a bar is made.
    """

    _KNOWN = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} req [{elapsed}{postfix}]"
    _UNKNOWN = "{desc}: {n_fmt} req [{elapsed}{postfix}]"

    def __init__(self) -> None:
        from tqdm.auto import tqdm  # heavy-ish: only when a bar is wanted

        self._bar = tqdm(total=None, bar_format=self._UNKNOWN, dynamic_ncols=True, leave=True)
        self._closed = False

    def __call__(self, progress: SyncProgress, /) -> None:
        if self._closed:
            return
        bar = self._bar
        if progress.total_requests is not None:
            bar.total = progress.total_requests
            bar.bar_format = self._KNOWN
        bar.n = progress.requests
        bar.set_description_str(progress.listing or progress.phase, refresh=False)
        bar.set_postfix_str(describe(progress), refresh=True)
        if progress.phase == "done":
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bar.close()


def describe(progress: SyncProgress) -> str:
    """The report as a short line: sessions, pace, ETA or the wait's countdown."""
    parts = [f"{progress.sessions:,} sessions", f"{progress.pages:,} pages"]
    if progress.seconds_per_request is not None:
        parts.append(f"≈{progress.seconds_per_request:.1f} s/request")
    if progress.phase == "wait":
        parts.append(f"waiting {progress.wait_seconds:.0f} s")
    if progress.eta_seconds is not None and progress.phase != "done":
        parts.append(f"ETA {duration_text(progress.eta_seconds)}")
    elif progress.total_requests is None and progress.phase != "done":
        parts.append("total unknown (first sync)")
    return ", ".join(parts)


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min 05 s``, ``1 h 40 min``: how every bar writes an ETA."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressEstimator:
    """The sync's side of the contract: counts, pace and the run's estimated total, reported
    to every callback as ``SyncProgress``.

    The total is known when the cache already holds the guru (incremental or ``--full``):
    a full listing costs its cached size in pages plus a top-up, an incremental one at least
    one request, messages one request per pending session. The fraction never goes back.
    """

    def __init__(
        self,
        callbacks: Sequence[ProgressCallback],
        requests: Callable[[], int],
        seconds_per_request: float | None,
        monotonic: Callable[[], float],
    ) -> None:
        self.callbacks = list(callbacks)
        self.requests = requests  # HTTP requests so far in this run
        self.limit_pace = seconds_per_request  # under an active rate limit, W/R
        self.monotonic = monotonic
        self.t0 = monotonic()
        self.listing = ""
        self.pages = 0
        self.sessions = 0
        self.total_sessions: int | None = None
        self.plan: list[int] = []  # estimated requests of each listing not finished yet
        self.current_start = 0  # requests when the current listing started
        self.messages_planned = 0
        self.questions_planned = 0  # the one export request, while it is still to come
        self.known = False
        self.fraction = 0.0

    def pace(self) -> float | None:
        """The rate limit's average pace, else the run's measured one."""
        if self.limit_pace:
            return float(self.limit_pace)
        done = self.requests()
        return (self.monotonic() - self.t0) / done if done else None

    def total(self) -> int | None:
        if not self.known:
            return None
        done = self.requests()
        remaining = sum(self.plan[1:]) + self.questions_planned + self.messages_planned
        if self.plan:
            remaining += max(1, self.plan[0] - (done - self.current_start))
        return done + remaining

    def emit(self, phase: Phase, wait: float = 0.0) -> None:
        if not self.callbacks:
            return
        done = self.requests()
        total = self.total() if phase != "done" else done
        pace = self.pace()
        if total is not None and total > 0:
            self.fraction = max(self.fraction, min(1.0, done / total))
        if phase == "done":
            self.fraction = 1.0
        eta = None
        if total is not None and pace is not None:
            eta = max(0.0, (total - done) * pace) + wait
        report = SyncProgress(
            phase=phase,
            listing=self.listing if phase in ("listing", "wait") else "",
            requests=done,
            pages=self.pages,
            sessions=self.sessions,
            total_requests=total,
            total_sessions=self.total_sessions,
            seconds_per_request=pace,
            eta_seconds=eta,
            wait_seconds=max(0.0, wait) if phase == "wait" else 0.0,
            fraction=self.fraction if total is not None or phase == "done" else None,
        )
        for callback in self.callbacks:
            callback(report)

    def start_listing(self, label: str) -> None:
        self.listing = label
        self.current_start = self.requests()

    def end_listing(self) -> None:
        if self.plan:
            self.plan.pop(0)


def bar_wanted(progress: bool | None) -> bool:
    """``None``: a bar when a person is watching (stderr is a terminal, or a Jupyter kernel)."""
    if progress is not None:
        return bool(progress)
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return _in_jupyter_kernel()


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (not merely when ipykernel was imported somewhere)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ == "ZMQInteractiveShell"
