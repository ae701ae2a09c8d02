"""Sync progress as plain data: what the sync reports, and what every progress bar reads.

The sync emits ``SyncProgress`` through one callback; the CLI's tqdm bar, the notebook bar and
the dashboard are consumers of that callback, so none of them computes its own pace or ETA.
This module imports nothing from the client, the store or the sync.
"""

from __future__ import annotations

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
        parts.append(f"ETA {_duration(progress.eta_seconds)}")
    elif progress.total_requests is None and progress.phase != "done":
        parts.append("total unknown (first sync)")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
