"""The run ledger and the sync state: one row per ``sync()`` call, one per listing's progress.

``sync_runs`` records each run with its counts and the PID and host that ran it, so a run a
killed process left ``running`` reads as ``interrupted``. ``sync_state`` holds, per listing
(guru-wide, per user, per search), the committed watermark and the pass in progress, so an
interrupted sync resumes; the sync writes a pass's position inside the same transaction as
the pages it covers (``state_statement``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ._connection import Database, count, first_row
from ._validate import as_utc, check_guru, check_listing, opt_utc, py_utc

RUN_COUNTS = (
    "requests",
    "throttled",
    "retries",
    "pages",
    "sessions_new",
    "sessions_changed",
    "sessions_deleted",
    "messages_fetched",
    "messages_remaining",
    "listings_skipped",
)

STATE_FIELDS = (
    "watermark",
    "completed_at",
    "pass_mode",
    "pass_started_at",
    "pass_top",
    "pass_next_page",
)
_STATE_TIMES = ("watermark", "completed_at", "pass_started_at", "pass_top")


# Runs begun by this process and not yet ended, keyed by (database identity, run_id): a
# 'running' row of our own PID that is not in here was left behind by an earlier failure.
_LIVE_RUNS: set[tuple[str, int]] = set()
_LIVE_RUNS_LOCK = threading.Lock()


class _Unset(Enum):
    """Sentinel type for ``save_state``: "leave this field as stored" (None clears it)."""

    UNSET = 0


UNSET = _Unset.UNSET


@dataclass(frozen=True)
class SyncState:
    """The stored progress of one listing: the committed watermark and the pass in flight."""

    guru: str
    listing: str
    watermark: datetime | None = None
    completed_at: datetime | None = None
    pass_mode: str | None = None
    pass_started_at: datetime | None = None
    pass_top: datetime | None = None
    pass_next_page: int | None = None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (signal 0 probes, never kills)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


RUN_COLUMNS = (
    "run_id, guru, mode, listings, search_query, started_at, ended_at, "
    + ", ".join(RUN_COUNTS)
    + ", outcome, error, pid, host"
)


# --- runs and sync state --------------------------------------------------------------


class RunLedger:
    """Runs begun and ended through one Store, and every listing's sync state."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._clock = clock
        self._my_runs: set[int] = set()  # begun here, not ended: live until forget()

    def forget(self) -> None:
        """The Store is closing: runs begun here and never ended read as interrupted now."""
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS.difference_update((self._db.identity, r) for r in self._my_runs)
        self._my_runs.clear()

    def begin_run(
        self, guru: str, mode: str, listings: Sequence[str], search_query: str | None = None
    ) -> int:
        """Record a sync run as ``running``; returns its id. Runs that a dead process left
        ``running`` are marked ``interrupted`` first."""
        check_guru(guru)
        if not isinstance(mode, str) or not mode:
            raise ConfigError(f"run mode {mode!r} is not valid: pass e.g. 'incremental' or 'full'")
        if isinstance(listings, str):
            raise ConfigError("listings must be a list of listing keys, not one string")
        keys = [check_listing(key) for key in listings]
        if search_query is not None and not isinstance(search_query, str):
            raise ConfigError(f"search_query {search_query!r} is not valid: pass text or None")
        now = as_utc(self._clock(), "clock()")
        with self._db.transaction(f"starting a sync run for guru {guru!r}") as conn:
            self._mark_orphans(conn, now)
            row = first_row(
                conn.execute(
                    "INSERT INTO sync_runs (guru, mode, listings, search_query, started_at, outcome, "
                    "pid, host) VALUES (?, ?, ?, ?, ?, 'running', ?, ?) RETURNING run_id",
                    [
                        guru,
                        mode,
                        json.dumps(keys),
                        search_query,
                        now,
                        os.getpid(),
                        socket.gethostname(),
                    ],
                )
            )
            assert row is not None
            run_id = int(row[0])
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS.add((self._db.identity, run_id))
        self._my_runs.add(run_id)
        return run_id

    def end_run(self, run_id: int, outcome: str, error: str | None = None, **counts: int) -> None:
        """Close a run with its outcome (e.g. 'ok', 'partial', 'failed'), error text and counts."""
        unknown = sorted(set(counts) - set(RUN_COUNTS))
        if unknown:
            raise ConfigError(
                f"unknown run count(s) {', '.join(unknown)}: use {', '.join(RUN_COUNTS)}"
            )
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(f"run count {name}={value!r} is not valid: pass an integer >= 0")
        if not isinstance(outcome, str) or not outcome or outcome == "running":
            raise ConfigError(
                f"run outcome {outcome!r} is not valid: pass e.g. 'ok', 'partial' or 'failed'"
            )
        if error is not None and not isinstance(error, str):
            raise ConfigError("run error must be text or None")
        now = as_utc(self._clock(), "clock()")
        sets = "".join(f", {name} = ?" for name in counts)
        params = [outcome, error, now, *(int(v) for v in counts.values()), int(run_id)]
        with self._db.transaction(f"ending sync run {run_id}") as conn:
            updated = count(
                conn.execute(
                    f"UPDATE sync_runs SET outcome = ?, error = ?, ended_at = ?{sets} WHERE run_id = ?",
                    params,
                )
            )
            if not updated:
                raise ConfigError(
                    f"sync run {run_id} is not in cache {self._db.path}: pass the id begin_run returned"
                )
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS.discard((self._db.identity, int(run_id)))
        self._my_runs.discard(int(run_id))

    def is_orphan(self, run_id: int, pid: Any, host: Any) -> bool:
        """Whether a 'running' row has no live process behind it (checked on this host only)."""
        if pid is None or pd.isna(pid):
            return True
        if host and host != socket.gethostname():
            return False
        if int(pid) == os.getpid():
            with _LIVE_RUNS_LOCK:
                return (self._db.identity, int(run_id)) not in _LIVE_RUNS
        return not pid_alive(int(pid))

    def _mark_orphans(self, conn: duckdb.DuckDBPyConnection, now: datetime) -> None:
        running = conn.execute(
            "SELECT run_id, pid, host FROM sync_runs WHERE outcome = 'running'"
        ).fetchall()
        orphans = [run_id for run_id, pid, host in running if self.is_orphan(run_id, pid, host)]
        if orphans:
            conn.execute(
                "UPDATE sync_runs SET outcome = 'interrupted', ended_at = ?, "
                "error = coalesce(error, 'the process running this sync stopped before recording an outcome') "
                "WHERE run_id IN (SELECT unnest(?::BIGINT[]))",
                [now, orphans],
            )

    def runs(self, guru: str | None = None) -> pd.DataFrame:
        """All sync runs (oldest first); a run whose process is gone reads as 'interrupted'."""
        where, params = ("WHERE guru = ?", [guru]) if guru is not None else ("", [])
        with self._db.reader() as conn:
            frame = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM sync_runs {where} ORDER BY run_id", params
            ).df()
        if len(frame):
            orphan = [
                outcome == "running" and self.is_orphan(run_id, pid, host)
                for run_id, outcome, pid, host in zip(
                    frame["run_id"], frame["outcome"], frame["pid"], frame["host"], strict=True
                )
            ]
            frame.loc[np.array(orphan, dtype=bool), "outcome"] = "interrupted"
        frame["listings"] = [json.loads(v) if isinstance(v, str) else [] for v in frame["listings"]]
        return frame

    def get_state(self, guru: str, listing: str) -> SyncState | None:
        """The stored progress of one listing ('' guru-wide, 'user:<id>', 'search:<q>')."""
        check_guru(guru)
        check_listing(listing)
        with self._db.reader() as conn:
            return read_state(conn, guru, listing)

    def save_state(
        self,
        guru: str,
        listing: str,
        *,
        watermark: datetime | None | _Unset = UNSET,
        completed_at: datetime | None | _Unset = UNSET,
        pass_mode: str | None | _Unset = UNSET,
        pass_started_at: datetime | None | _Unset = UNSET,
        pass_top: datetime | None | _Unset = UNSET,
        pass_next_page: int | None | _Unset = UNSET,
    ) -> SyncState:
        """Upsert a listing's state: only the fields given change; ``None`` clears one."""
        check_guru(guru)
        check_listing(listing)
        given: dict[str, Any] = {
            name: value
            for name, value in zip(
                STATE_FIELDS,
                (watermark, completed_at, pass_mode, pass_started_at, pass_top, pass_next_page),
                strict=True,
            )
            if value is not UNSET
        }
        sql, params = state_statement(guru, listing, given)
        with self._db.transaction(f"saving sync state of {guru!r} listing {listing!r}") as conn:
            conn.execute(sql, params)
            state = read_state(conn, guru, listing)
        assert state is not None
        return state


def read_state(conn: duckdb.DuckDBPyConnection, guru: str, listing: str) -> SyncState | None:
    row = first_row(
        conn.execute(
            f"SELECT {', '.join(STATE_FIELDS)} FROM sync_state WHERE guru = ? AND listing = ?",
            [guru, listing],
        )
    )
    if row is None:
        return None
    watermark, completed, mode, started, top, next_page = row
    return SyncState(
        guru=guru,
        listing=listing,
        watermark=py_utc(watermark),
        completed_at=py_utc(completed),
        pass_mode=mode,
        pass_started_at=py_utc(started),
        pass_top=py_utc(top),
        pass_next_page=None if next_page is None else int(next_page),
    )


def state_statement(guru: str, listing: str, given: dict[str, Any]) -> tuple[str, list[Any]]:
    """The upsert of a listing's state for the fields in ``given`` (checked; None clears one):
    ``save_state`` runs it alone, a page batch inside its own transaction."""
    unknown = sorted(set(given) - set(STATE_FIELDS))
    if unknown:
        raise ConfigError(f"unknown sync state field(s) {', '.join(unknown)}: use {STATE_FIELDS}")
    given = dict(given)
    for name in _STATE_TIMES:
        if name in given:
            given[name] = opt_utc(given[name], name)
    if given.get("pass_mode") is not None and not isinstance(given["pass_mode"], str):
        raise ConfigError(f"pass_mode {given['pass_mode']!r} is not valid: pass text or None")
    page = given.get("pass_next_page")
    if page is not None and (
        isinstance(page, bool) or not isinstance(page, int | np.integer) or page < 1
    ):
        raise ConfigError(f"pass_next_page {page!r} is not valid: pass a page number >= 1 or None")
    columns = list(given)
    action = (
        "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in columns) if columns else "NOTHING"
    )
    sql = (
        f"INSERT INTO sync_state (guru, listing{''.join(', ' + c for c in columns)}) "
        f"VALUES (?, ?{', ?' * len(columns)}) ON CONFLICT (guru, listing) DO {action}"
    )
    return sql, [guru, listing, *given.values()]
