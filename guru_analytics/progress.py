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
